"""``augmentation.intensity_skip_channels``: the intensity transforms leave the channel a rule prior
thresholds as it is, the spatial ones still move it, and the other channels are augmented exactly as
without the option (CPU pipeline and its torch mirror)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hiennu.errors import HiennuError
from hiennu.plans import AugmentationPlan
from tests.test_augmentation import blob_mask, run_cpu, run_torch, smooth_image
from tests.test_plans_validation import CFG, _edit, _load

INTENSITY = dict(p_noise=1.0, p_blur=1.0, p_lowres=1.0, p_gamma=1.0, noise_std=0.5)
OFF = dict(p_noise=0.0, p_lowres=0.0, p_blur=0.0, p_gamma=0.0, p_elastic=0.0, p_mirror=0.0)


def plan(**kw) -> AugmentationPlan:
    return dataclasses.replace(AugmentationPlan(), **{**OFF, **kw})


@pytest.mark.parametrize("run", [run_cpu, run_torch], ids=["batchgenerators", "torch"])
def test_skipped_channel_is_untouched_by_intensity_and_the_other_is_augmented_as_before(run):
    data, seg = smooth_image(channels=2), blob_mask()
    skipped = run(plan(**INTENSITY, intensity_skip_channels=[1]), data, seg, 4)
    plain = run(plan(**INTENSITY), data, seg, 4)
    for (d, _), (p, _) in zip(skipped, plain):
        np.testing.assert_array_equal(d[1], data[1])
        np.testing.assert_array_equal(d[0], p[0])
        assert not np.allclose(d[0], data[0])


@pytest.mark.parametrize("run", [run_cpu, run_torch], ids=["batchgenerators", "torch"])
def test_skipped_channel_still_moves_with_the_elastic_deformation_and_mirroring(run):
    data, seg = smooth_image(channels=2), blob_mask()
    spatial = dict(p_elastic=1.0, p_mirror=1.0, mirror_axes=[2])
    skipped = run(plan(**spatial, **INTENSITY, intensity_skip_channels=[1]), data, seg, 3)
    moved_only = run(plan(**spatial), data, seg, 3)
    for (d, s), (m, ms) in zip(skipped, moved_only):
        assert not np.allclose(d[1], data[1])  # it was deformed and flipped
        # the elastic field is drawn first and p_mirror 1 always flips, so the skipped channel and the
        # target are those of the spatial-only pipeline with the same seeds
        np.testing.assert_allclose(d[1], m[1], atol=1e-5)
        np.testing.assert_array_equal(s, ms)


def test_cpu_skipped_channel_equals_the_spatial_only_pipeline():
    # batchgenerators draws the elastic field first and mirroring last; with the intensity transforms off
    # in between the draws line up, so the skipped channel must equal the spatial-only result
    data, seg = smooth_image(channels=2), blob_mask()
    spatial = dict(p_elastic=1.0)
    skipped = run_cpu(plan(**spatial, intensity_skip_channels=[1]), data, seg, 3)
    moved_only = run_cpu(plan(**spatial), data, seg, 3)
    for (d, s), (m, ms) in zip(skipped, moved_only):
        np.testing.assert_array_equal(d, m)
        np.testing.assert_array_equal(s, ms)


def test_plans_refuse_a_channel_the_network_does_not_have(tmp_path):
    with pytest.raises(HiennuError, match=r"intensity_skip_channels \[2\] must be channel indices 0-1"):
        _load(tmp_path, _edit(f"{CFG}.augmentation.intensity_skip_channels", [2]))


def test_plans_without_the_field_read_as_every_channel_augmented(tmp_path):
    from tests.test_plans_validation import _plans_dict
    d = _plans_dict()
    d["configurations"]["3d_fullres"]["augmentation"].pop("intensity_skip_channels", None)
    plans = _load(tmp_path, d)
    assert plans.configurations["3d_fullres"].augmentation.intensity_skip_channels == []
    assert "intensity_skip_channels" in json.dumps(plans.to_dict())
