"""Targets made of the rule's components (hiennu.training.rule_component_targets) and the loader that uses them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.training.rule_component_targets import (RuleComponentTargets, lesion_adc_quantile,
                                                    rule_component_target)
from hiennu.io.atomic import write_json, write_npy


def _case(shape=(3, 8, 8)):
    """(C=2, z, y, x): ADC-like channel 0 at 0.5 and ZADC channel 1 at 0 everywhere (no rule voxel)."""
    data = np.zeros((2, *shape), dtype=np.float32)
    data[0] = 0.5
    return data


def test_components_touching_the_reference_are_kept_whole_and_the_others_dropped():
    data = _case()
    data[1, 1, 1:4, 1:4] = -3.0          # component A: 9 voxels
    data[1, 1, 6, 6] = -2.5              # component B: 1 voxel, away from A
    seg = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    seg[0, 1, 2, 2] = 1                  # touches A in one voxel
    seg[0, 2, 0, 7] = 1                  # a lesion voxel the rule misses
    target = rule_component_target(data, seg, zadc_channel=1, threshold=-2.0)
    assert target.shape == (1, 3, 8, 8) and target.dtype == np.uint8
    expected = np.zeros((3, 8, 8), dtype=np.uint8)
    expected[1, 1:4, 1:4] = 1            # all of A, none of B, not the missed voxel
    np.testing.assert_array_equal(target[0], expected)


def test_diagonal_neighbours_across_slices_are_one_component():
    data = _case()
    data[1, 0, 0, 0] = -3.0
    data[1, 1, 1, 1] = -3.0              # 26-connected to (0, 0, 0), as the post-processing's components
    seg = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    seg[0, 1, 1, 1] = 1
    assert rule_component_target(data, seg, 1, -2.0)[0].sum() == 2


def test_the_adc_cap_drops_voxels_before_the_components_are_formed():
    data = _case()
    data[1, 1, 2, 1:6] = -3.0            # a bar of 5 voxels
    data[0, 1, 2, 3] = 2.0               # its middle voxel above the cap splits it in two
    seg = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    seg[0, 1, 2, 1] = 1                  # touches the left piece only
    target = rule_component_target(data, seg, 1, -2.0, adc_channel=0, adc_cap=1.0)
    assert sorted(map(tuple, np.argwhere(target[0]))) == [(1, 2, 1), (1, 2, 2)]
    # without the cap the whole bar is one component and kept
    assert rule_component_target(data, seg, 1, -2.0)[0].sum() == 5


def test_an_empty_reference_gives_an_empty_target_and_bad_shapes_are_named():
    data = _case()
    data[1, 1, 1:4, 1:4] = -3.0
    seg = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    assert not rule_component_target(data, seg, 1, -2.0).any()
    with pytest.raises(HiennuError, match="one grid"):
        rule_component_target(data, seg[:, :2], 1, -2.0)
    with pytest.raises(HiennuError, match="ADC channel"):
        rule_component_target(data, seg, 1, -2.0, adc_cap=0.0)


def _write_case(folder, case_id, data, seg):
    write_npy(data, folder / f"{case_id}.npy")
    write_npy(seg, folder / f"{case_id}_seg.npy")
    write_json({"case_id": case_id, "has_lesion": bool(seg.any())}, folder / f"{case_id}.json")


def test_the_cap_is_the_quantile_of_the_adc_inside_the_lesions_in_the_brain(tmp_path):
    seg = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    seg[0, 0, 0, :4] = 1
    a = _case()
    a[0, 0, 0, :4] = [-1.0, -0.5, 0.0, 0.0]     # the last voxel: outside the brain (every channel 0)
    a[1, 0, 0, 2] = -1.0                          # the third: in the brain with normalized ADC exactly 0
    b = _case()
    b[0, 0, 0, :4] = [1.0, 2.0, 3.0, 4.0]
    empty = _case()
    _write_case(tmp_path, "a", a, seg)
    _write_case(tmp_path, "b", b, seg)
    _write_case(tmp_path, "empty", empty, np.zeros_like(seg))
    values = [-1.0, -0.5, 0.0, 1.0, 2.0, 3.0, 4.0]  # a's outside-brain voxel left out
    assert lesion_adc_quantile(tmp_path, ["a", "b", "empty"], 0, 0.5) == pytest.approx(np.quantile(values, 0.5))
    assert lesion_adc_quantile(tmp_path, ["a", "b"], 0, 0.995) == pytest.approx(np.quantile(values, 0.995))
    assert lesion_adc_quantile(tmp_path, ["empty"], 0) is None


def test_the_callable_caches_per_case_and_survives_pickling():
    data = _case()
    data[1, 1, 1:4, 1:4] = -3.0
    seg = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    seg[0, 1, 2, 2] = 1
    targets = RuleComponentTargets(zadc_channel=1, threshold=-2.0, adc_channel=0, adc_cap=1.0)
    first = targets("c", data, seg)
    assert first.sum() == 9
    assert targets("c", data, np.zeros_like(seg)) is first  # labelled once per case
    copy = pickle.loads(pickle.dumps(targets))  # what a loader worker gets
    np.testing.assert_array_equal(copy("c", data, seg), first)


def test_the_loader_trains_on_the_targets_cut_from_the_whole_case(hiennu_roots):
    """In a patch configuration the target is made from the whole case, then cut with the patch: a
    component that crosses the patch's edge is kept even where the patch holds none of its lesion voxels.
    The component is the plane x = 15..16 of the 16 x 32 x 32 case, which every 8 x 16 x 16 patch crosses."""
    from helpers import make_tiny_dataset
    from hiennu.plans import load_plans
    from hiennu.training.data import TrainingBatches

    root = make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], n_cases=2, augment=False, patch=True)
    config = load_plans(root / "plans.json").configuration("3d_fullres")
    case_dir = root / "3d_fullres"
    data = np.load(case_dir / "case_000.npy")
    seg = np.zeros((1, *data.shape[1:]), dtype=np.uint8)
    data[1] = 0.0
    data[1, :, :, 15:17] = -3.0           # one rule component across the case
    seg[0, 0, 0, 15] = 1                  # whose only lesion voxel is in a corner
    np.save(case_dir / "case_000.npy", data)
    np.save(case_dir / "case_000_seg.npy", seg)

    targets = RuleComponentTargets(zadc_channel=1, threshold=-2.0)
    batches = TrainingBatches(case_dir, ["case_000"], config, batch_size=4, seed=0, num_workers=0,
                              device=torch.device("cpu"), augment=False, target_of=targets)
    plain = TrainingBatches(case_dir, ["case_000"], config, batch_size=4, seed=0, num_workers=0,
                            device=torch.device("cpu"), augment=False)
    try:
        seen = 0
        for (x, y), (x0, y0) in zip(batches.epoch(0, 3), plain.epoch(0, 3)):
            torch.testing.assert_close(x, x0)  # same patches, only the target differs
            rule = (x[:, 1:2] < -2.0).float()
            assert rule.sum(dim=(1, 2, 3, 4)).min() > 0  # every patch crosses the component
            torch.testing.assert_close(y, rule)  # and its target is all of the component's voxels in it
            assert y0.sum() <= 1
            seen += 1
        assert seen == 3
    finally:
        batches.close()
        plain.close()


def test_the_trainer_takes_its_cap_from_its_training_cases_only(hiennu_roots):
    """The fold's cap is the 99.5th percentile of the lesion ADC of the fold's training cases: raising the ADC
    inside a validation case's lesion changes nothing; the rule is the plans' prior channel and threshold."""
    from helpers import make_tiny_dataset, options
    from hiennu.training.trainers import TrainerDiceFocalRuleComponents

    root = make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], n_cases=6, patch=True)
    trainer = TrainerDiceFocalRuleComponents(options())
    targets = trainer.build_training_targets()
    network = trainer.config.network
    assert (targets.zadc_channel, targets.threshold, targets.adc_channel) == (network.rule_prior_channel,
                                                                           network.rule_prior_threshold, 0)
    assert targets.adc_cap == pytest.approx(lesion_adc_quantile(trainer.case_dir, trainer.train_cases, 0))
    # every training case is labelled once, before the workers start (they are started anew each epoch)
    assert set(targets._cache) == set(trainer.train_cases)
    data, seg = np.load(root / "3d_fullres" / f"{trainer.train_cases[0]}.npy"), np.load(
        root / "3d_fullres" / f"{trainer.train_cases[0]}_seg.npy")
    np.testing.assert_array_equal(targets._cache[trainer.train_cases[0]],
                                  rule_component_target(data, seg, 1, network.rule_prior_threshold, 0, targets.adc_cap))
    held_out = trainer.val_cases[0]
    path = root / "3d_fullres" / f"{held_out}.npy"
    data, seg = np.load(path), np.load(root / "3d_fullres" / f"{held_out}_seg.npy")
    data[0][seg[0] != 0] = 50.0
    np.save(path, data)
    assert TrainerDiceFocalRuleComponents(options()).build_training_targets().adc_cap == targets.adc_cap
    every = lesion_adc_quantile(trainer.case_dir, trainer.train_cases + trainer.val_cases, 0)
    assert every != pytest.approx(targets.adc_cap)


def test_a_rule_channel_the_dataset_lacks_is_named_before_training(hiennu_roots):
    from helpers import make_tiny_dataset, options
    from hiennu.plans import load_plans, save_plans
    from hiennu.training.trainers import TrainerDiceFocalRuleComponents

    root = make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], n_cases=6)
    plans = load_plans(root / "plans.json")
    plans.configurations["3d_fullres"].network.rule_prior_channel = 2
    save_plans(plans, root / "plans.json")
    with pytest.raises(HiennuError, match=r"configurations\.3d_fullres\.network\.rule_prior_channel = 2, but the "
                                          r"dataset has 2 channel\(s\) \(ADC, ZADC\)"):
        TrainerDiceFocalRuleComponents(options()).build_training_targets()
