"""2.5D: a 2D network that sees each slice's neighbours as extra channels (``network.context_slices``).

Plans checks naming the field, the network's training output without the context slices and its eval output
on every slice (zero slices beyond the edges, as a training patch is padded), the rule prior read on the centre slice, in-plane augmentation shared by
a sample's slices (CPU and device paths, skipped channels included), and a tiny end-to-end run that trains on
three-slice samples and predicts a one-slice case and a thin-sliced one in native geometry.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from hiennu.networks.unet import build_network
from hiennu.plans import (AugmentationPlan, Configuration, NetworkPlan, PlansError, configuration_from_dict,
                          configuration_problems)
from hiennu.training.augmentation import augment_sample, build_transforms
from hiennu.training.gpu_augmentation import GPUAugmenter
from test_2d_configuration import SLICE_NET, _slice_config, _write_case, _write_raw, sitk_array

NET = dict(SLICE_NET, context_slices=1)


def _config(**changes) -> Configuration:
    """test_2d_configuration's slice configuration with one context slice either side and a three-slice patch."""
    return _slice_config(**{"patch_size_zyx": [3, 16, 16], "network": NetworkPlan(**NET), **changes})


# ------------------------------------------------------------------------------------------- plans

def test_a_context_network_with_a_three_slice_patch_is_valid():
    assert configuration_problems(_config()) == []
    assert _config().inference_window_zyx((7, 30, 20)) == (7, 16, 16)


@pytest.mark.parametrize("changes, words", [
    (dict(patch_size_zyx=[1, 16, 16]), ["has 1 slice", "context_slices 1 needs 3", "patch_size_zyx[0] to 3"]),
    (dict(patch_size_zyx=[8, 16, 16], network=NetworkPlan(**{**NET, "spatial_dims": 3,
                                                               "pool_kernel_sizes": [[2, 2, 2], [2, 2, 2]]})),
     ["context_slices is 1", "spatial_dims is 3", "context_slices to 0"]),
])
def test_context_slices_without_room_or_on_a_3d_network_is_refused_naming_the_field(changes, words):
    problems = " ".join(configuration_problems(_config(**changes)))
    for word in words:
        assert word in problems, problems


def test_negative_context_slices_is_refused_at_load():
    d = dataclasses.asdict(_config())
    d["network"]["context_slices"] = -1
    with pytest.raises(PlansError, match="context_slices"):
        configuration_from_dict(d, "plans.json")


def test_the_network_refuses_context_on_3d_and_a_training_input_without_room():
    with pytest.raises(ValueError, match="context_slices 1 needs a 2D network"):
        build_network(NetworkPlan(**{**NET, "spatial_dims": 3, "pool_kernel_sizes": [[2, 2, 2], [2, 2, 2]]}))
    net = build_network(NetworkPlan(**NET)).train()
    with pytest.raises(ValueError, match="patch_size_zyx"):
        net(torch.randn(1, 2, 2, 16, 16))


# ----------------------------------------------------------------------------------------- network

def _trained_looking(plan: NetworkPlan) -> torch.nn.Module:
    """A context network with random heads (an untrained one outputs zeros and shows nothing)."""
    torch.manual_seed(0)
    net = build_network(plan)
    for head in net.heads:
        torch.nn.init.normal_(head.weight, std=0.5)
    return net


def test_training_output_leaves_out_the_context_slices_and_eval_output_keeps_every_slice():
    net = _trained_looking(NetworkPlan(**NET))
    x = torch.randn(2, 2, 6, 16, 12)
    with torch.no_grad():
        train_out = net.train()(x)
        eval_out = net.eval()(x)
    assert train_out.shape == (2, 1, 4, 16, 12) and eval_out.shape == (2, 1, 6, 16, 12)
    # no dropout, instance norm without running statistics: the two modes agree where both have the neighbours
    torch.testing.assert_close(train_out, eval_out[:, :, 1:5], rtol=1e-5, atol=1e-5)
    # the edge slices' missing neighbours are zeros, as in a training patch padded beyond its case
    padded = torch.cat([torch.zeros_like(x[:, :, :1]), x, torch.zeros_like(x[:, :, :1])], dim=2)
    with torch.no_grad():
        edges = net.train()(padded)
    torch.testing.assert_close(edges, eval_out, rtol=1e-5, atol=1e-5)


def test_an_edge_slice_sees_in_prediction_what_a_training_patch_padded_beyond_its_case_holds():
    from hiennu.training.data import patch_bbox
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
    net = _trained_looking(NetworkPlan(**NET))
    case = np.random.default_rng(1).normal(size=(2, 4, 16, 12)).astype(np.float32)
    # a foreground patch centred on a lesion voxel of the first slice reaches one slice beyond the case
    box = patch_bbox(case.shape[1:], (3, 16, 12), np.random.default_rng(0), centre_on=np.array([[0, 8, 6]]))
    patch = torch.from_numpy(crop_and_pad_nd(case, box, pad_value=0)[None])
    with torch.no_grad():
        trained_on = net.train()(patch)
        predicted = net.eval()(torch.from_numpy(case[None]))
    torch.testing.assert_close(trained_on, predicted[:, :, :1], rtol=1e-5, atol=1e-5)


def test_a_slice_sees_its_neighbours_and_nothing_further():
    net = _trained_looking(NetworkPlan(**NET)).eval()
    x = torch.randn(1, 2, 5, 16, 12)
    changed = x.clone()
    changed[:, :, 3] += 3.0
    with torch.no_grad():
        a, b = net(x), net(changed)
    moved = [(a[:, :, k] - b[:, :, k]).abs().max().item() > 1e-4 for k in range(5)]
    assert moved == [False, False, True, True, True]


def test_an_untrained_context_network_is_the_rule_on_each_slice_and_predicts_one_slice():
    net = build_network(NetworkPlan(**NET, rule_prior=True, rule_prior_mode="veto", rule_prior_scale=10.0)).eval()
    x = torch.randn(1, 2, 4, 16, 12)
    with torch.no_grad():
        out = net(x)
        one = net(x[:, :, :1])
    torch.testing.assert_close(out, 10.0 * (-2.0 - x[:, 1:2]), rtol=1e-5, atol=1e-5)
    assert one.shape == (1, 1, 1, 16, 12)
    assert net.encoder[0][0].in_channels == 6


# ------------------------------------------------------------------------------------ augmentation

def test_cpu_augmentation_keeps_the_skipped_channel_of_every_slice():
    plan = AugmentationPlan(p_noise=1.0, noise_std=0.5, p_lowres=0, p_blur=0, p_gamma=0, p_elastic=0, p_mirror=0,
                            intensity_skip_channels=[1])
    data = np.random.default_rng(0).normal(size=(2, 3, 16, 12)).astype(np.float32)
    d, _ = augment_sample(build_transforms(plan, (16, 12)), data, np.zeros((1, 3, 16, 12), np.float32), seed=1)
    np.testing.assert_array_equal(d[1], data[1])
    assert not np.allclose(d[0], data[0])


def test_device_augmentation_in_plane_deforms_every_slice_alike_and_keeps_skipped_channels():
    plan = AugmentationPlan(p_noise=1.0, noise_std=0.5, p_lowres=0, p_blur=0, p_gamma=0, p_elastic=1.0,
                            p_mirror=0.5, intensity_skip_channels=[1])
    rng = np.random.default_rng(0)
    one = torch.from_numpy(rng.normal(size=(4, 2, 1, 16, 12)).astype(np.float32))
    data = one.repeat(1, 1, 3, 1, 1)
    target = (torch.from_numpy(rng.uniform(size=(4, 1, 1, 16, 12))) > 0.6).float().repeat(1, 1, 3, 1, 1)
    g = torch.Generator().manual_seed(4)
    d, t = GPUAugmenter(plan)(data, target, g, in_plane=True)
    assert d.shape == data.shape and t.shape == target.shape
    torch.testing.assert_close(t[:, :, 0], t[:, :, 2])
    # the skipped channel is only deformed, so its three slices stay equal; the noisy channel's do not
    torch.testing.assert_close(d[:, 1, 0], d[:, 1, 2])
    assert not torch.allclose(d[:, 0, 0], d[:, 0, 2])
    assert not torch.allclose(d[:, 1, 0], one[:, 1, 0])


# ------------------------------------------------------------------------------------- end to end

def test_a_context_2d_trains_on_three_slice_samples_and_predicts_in_native_geometry(hiennu_roots, tmp_path):
    from hiennu.inference.predictor import Predictor
    from hiennu.io.image import Geometry
    from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    from hiennu.training.launch import train
    from hiennu.training.options import TrainingOptions
    raw = hiennu_roots["hiennu_raw"] / "Dataset001_Tiny2d"
    _write_raw(raw)
    out = plan_and_preprocess("Tiny2d", PlanAndPreprocessOptions(configurations=["2d"], plan_for="cpu",
                                                                   num_processes=1))
    plans = json.loads((out / "plans.json").read_text())
    config = plans["configurations"]["2d"]
    config["network"]["context_slices"] = 1
    config["patch_size_zyx"][0] = 3
    (out / "plans.json").write_text(json.dumps(plans))
    fold = train(TrainingOptions(dataset="Tiny2d", configuration="2d", fold=0, epochs=1, iterations_per_epoch=2,
                                 batch_size=4, device="cpu", num_workers=0, final_validation=True, seed=3),
                 "TrainerDiceFocal")
    assert (fold / "validation" / "summary.json").is_file()
    predictor = Predictor.from_model_dir(fold.parent, folds=[0], device="cpu")
    assert predictor.configuration.network.context_slices == 1
    rng = np.random.default_rng(5)
    test_dir = tmp_path / "test"
    for case, size_z, spacing_z in (("single", 1, 4.0), ("thin", 24, 1.5)):
        geometry = Geometry((36, 40, size_z), (1.2, 1.2, spacing_z), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        _write_case(test_dir, None, case, geometry, rng)
        mask = sitk_array(predictor.predict_files(test_dir / f"{case}_0000.mha", test_dir / f"{case}_0001.mha"))
        assert np.shape(mask) == geometry.size_zyx and set(np.unique(mask)) <= {0, 1}


def test_a_2d_configuration_mirrors_in_plane_only_at_test_time():
    from hiennu.inference.predictor import tta_mirror_axes
    config = _config()
    config.augmentation.p_mirror, config.augmentation.mirror_axes = 0.5, [0, 2]
    assert tta_mirror_axes(config) == (2,)  # training mirrors (y, x) only, so z is left out here too
    config.augmentation.p_mirror = 0.0
    assert tta_mirror_axes(config) == (1, 2)  # trained without mirroring: every in-plane axis
