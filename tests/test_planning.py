"""Planner: grid policies, memory estimate, normalization choice, fingerprint, splits."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.io.cases import CaseFiles
from hiennu.io.image import Geometry, write_image
from hiennu.masks import NO_LESION_BAND, volume_band
from hiennu.networks.unet import build_network
from hiennu.planning.fingerprint import (CaseFingerprint, DatasetFingerprint, IntensityStats, compute_fingerprint,
                                        load_fingerprint, save_fingerprint)
from hiennu.planning.grid import lossless_grid, memory_grid, paper_grid
from hiennu.planning.memory import count_parameters, estimate_training_memory, saved_activation_bytes
from hiennu.planning.planner import choose_normalization, plan_experiment
from hiennu.planning.roundtrip import label_roundtrip_dice
from hiennu.planning.splits import make_splits, write_splits_if_absent
from hiennu.plans import NetworkPlan, Plans, load_plans, save_plans

# sizes (x, y, z) of the 37 BONBID dev cases, grouped
BONBID_SIZES_XYZ = ([(128, 128, 23)] * 3 + [(128, 128, 54), (128, 128, 52), (128, 128, 50), (128, 128, 54),
                    (128, 128, 54), (128, 128, 60), (128, 128, 57), (128, 128, 59), (128, 128, 50), (128, 128, 52),
                    (128, 128, 50), (128, 128, 50), (128, 128, 53), (128, 128, 52), (128, 128, 52)]
                   + [(160, 160, z) for z in (18, 17, 16, 24, 21, 17, 28, 16, 28, 20, 18, 25, 19, 20, 20, 17,
                                              22, 17, 28)])


def _zyx(sizes_xyz):
    return [tuple(reversed(s)) for s in sizes_xyz]


def test_paper_grid_of_the_bonbid_sizes_is_144_144_32():
    assert len(BONBID_SIZES_XYZ) == 37
    assert paper_grid(_zyx(BONBID_SIZES_XYZ), (16, 16, 16)) == (32, 144, 144)


def test_paper_grid_rounds_to_nearest_and_never_below_factor():
    assert paper_grid([(5, 40, 23), (5, 40, 22)], (16, 16, 16)) == (16, 48, 16)
    assert paper_grid([(60, 200, 200)], (16, 16, 16)) == (64, 208, 208)


def test_lossless_grid_covers_every_case():
    assert lossless_grid(_zyx(BONBID_SIZES_XYZ), (16, 16, 16)) == (64, 160, 160)
    assert lossless_grid([(17, 16, 1)], (16, 16, 16)) == (32, 16, 16)


def measure_saved_activation_bytes(plan: NetworkPlan, size_zyx: Sequence[int], batch_size: int = 1) -> int:
    """Measure (CPU, fp32) the bytes of the distinct tensors autograd saves in one training forward pass
    (the check of :func:`hiennu.planning.memory.saved_activation_bytes`)."""
    net = build_network(plan).train()
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(batch_size, plan.in_channels, *size_zyx)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    return sum(seen.values())


@pytest.mark.parametrize("plan", [NetworkPlan(),
                                  NetworkPlan(features_per_stage=[8, 16, 32], dropout_per_stage=[0.0, 0.1, 0.2],
                                              pool_kernel_sizes=[[1, 2, 2], [2, 2, 2]])])
def test_memory_formula_matches_measured_saved_tensors(plan):
    assert count_parameters(plan) == sum(p.numel() for p in build_network(plan).parameters())
    size = (16, 32, 48)
    formula = saved_activation_bytes(plan, size, batch_size=2, activation_bytes=4)
    measured = measure_saved_activation_bytes(plan, size, batch_size=2)
    assert abs(formula - measured) / measured < 0.01


def test_memory_policy_picks_the_lossless_grid_on_16_gb():
    grid, est = memory_grid(_zyx(BONBID_SIZES_XYZ), NetworkPlan(), 4, 16)
    assert grid == (64, 160, 160) and est.total_gib <= 16


def test_memory_policy_shrinks_to_the_largest_fitting_grid():
    sizes, net = _zyx(BONBID_SIZES_XYZ), NetworkPlan()
    grid, est = memory_grid(sizes, net, 4, 6)
    assert est.total_gib <= 6 and grid != (64, 160, 160)
    assert all(g % 16 == 0 for g in grid)
    # one step larger on any shrunk axis no longer fits (or exceeds the lossless grid)
    lossless = lossless_grid(sizes, (16, 16, 16))
    for axis in range(3):
        bigger = list(grid)
        bigger[axis] += 16
        if bigger[axis] <= lossless[axis]:
            assert estimate_training_memory(net, bigger, 4).total_gib > 6 or grid[axis] == lossless[axis]
    with pytest.raises(HiennuError, match="does not fit"):
        memory_grid(sizes, net, 4, 0.5)


def _fingerprint(sizes_xyz, names=("ADC", "ZADC")) -> DatasetFingerprint:
    stats = [IntensityStats(1400.0, 400.0, 1350.0, 10.0, 4000.0, 600.0, 3300.0, 100),
             IntensityStats(0.0, 1.6, 0.0, -10.0, 10.0, -5.0, 8.0, 100)][:len(names)]
    cases = [CaseFingerprint(f"c{i}", Geometry(tuple(s), (1.0, 1.0, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)).to_dict(),
                             1000, 10 * i, 0.01 * i, 1, stats) for i, s in enumerate(sizes_xyz)]
    return DatasetFingerprint("Dataset001_X", list(names), 100, 0, stats, cases)


def test_plan_every_configuration_from_fingerprint(tmp_path):
    plans = plan_experiment(_fingerprint(BONBID_SIZES_XYZ), plan_for="cpu")
    assert list(plans.configurations) == ["3d_fullres", "2d", "3d_lossless", "3d_paper"]
    full, paper = plans.configuration("3d_lossless"), plans.configuration("3d_paper")
    assert full.target_size_xyz == [160, 160, 64] and full.grid_policy == "memory"
    assert paper.target_size_xyz == [144, 144, 32] and paper.grid_policy == "paper"
    assert [n.scheme for n in paper.normalization] == ["zscore_image", "zscore_image"]
    adc, zadc = full.normalization
    assert (adc.scheme, adc.clip_low, adc.clip_high, adc.mean, adc.std) == ("global_zscore", 600.0, 3300.0, 1400.0, 400.0)
    assert (zadc.scheme, zadc.clip_low, zadc.clip_high) == ("atlas_zscore", -10.0, 10.0)
    assert "global_zscore" in full.notes and "atlas_zscore" in full.notes
    assert paper.training.batch_size == 4 and paper.training.learning_rate == 1e-3
    patch = plans.configuration()
    assert patch.name == "3d_fullres" and patch.is_patch_based and patch.target_size_xyz is None
    assert patch.crop_to_brain and patch.planned_for == "cpu" and patch.network.norm == "instance"
    assert patch.normalization == full.normalization
    assert patch.training.iterations_per_epoch and patch.training.foreground_oversampling == pytest.approx(0.1)
    assert patch.network.rule_prior and patch.network.rule_prior_mode == "veto" and patch.network.rule_prior_channel == 1
    assert "target spacing" in patch.notes and "patch and network" in patch.notes
    save_plans(plans, tmp_path)
    assert load_plans(tmp_path) == plans


def test_paper_policy_and_forced_grid():
    fp = _fingerprint(BONBID_SIZES_XYZ)
    assert plan_experiment(fp, grid_policy="paper").configuration("3d_lossless").target_size_xyz == [144, 144, 32]
    forced = plan_experiment(fp, target_size_xyz=(192, 192, 32))
    for cfg in forced.configurations.values():
        if cfg.is_patch_based:
            continue  # the forced grid is for the whole-volume configurations
        assert cfg.target_size_xyz == [192, 192, 32] and cfg.grid_policy == "forced"
    with pytest.raises(HiennuError, match="multiple"):
        plan_experiment(fp, target_size_xyz=(190, 192, 32))
    with pytest.raises(HiennuError, match="grid policy"):
        plan_experiment(fp, grid_policy="biggest")


def test_normalization_choice_by_channel_name():
    fp = _fingerprint([(16, 16, 16)], names=("ADC", "ZADC"))
    assert choose_normalization(0, "ADC", fp)[0].scheme == "global_zscore"
    assert choose_normalization(1, "ZADC", fp)[0].scheme == "atlas_zscore"
    assert choose_normalization(1, "Z_ADC", fp)[0].scheme == "atlas_zscore"
    assert choose_normalization(1, "T2", fp)[0].scheme == "zscore_brain"


def test_fingerprint_statistics_and_components(tmp_path):
    geo = Geometry((6, 5, 4), (1.0, 1.0, 3.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    adc = np.zeros((4, 5, 6), np.float32)
    adc[1:3, 1:4, 1:5] = np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 1001  # 10^-6 mm^2/s
    zadc = np.where(adc > 0, -1.0, 0.0).astype(np.float32)
    label = np.zeros((4, 5, 6), np.uint8)
    label[1, 1, 1] = label[2, 2, 2] = 1  # diagonal neighbours: one 26-connected component
    label[1, 3, 4] = 1  # separate
    files = [tmp_path / "c_0000.mha", tmp_path / "c_0001.mha"]
    write_image(adc, geo, files[0])
    write_image(zadc, geo, files[1])
    write_image(label, geo, tmp_path / "c.mha")
    fp = compute_fingerprint([CaseFiles("c", files, tmp_path / "c.mha")], "D", ["ADC", "ZADC"], num_processes=1)
    case = fp.cases[0]
    assert (case.brain_voxels, case.lesion_voxels, case.lesion_components) == (24, 3, 2)
    assert case.lesion_fraction == pytest.approx(3 / 24)
    assert case.geometry["spacing_xyz"] == (1.0, 1.0, 3.0)
    assert fp.intensity[0].mean == pytest.approx(1012.5) and fp.intensity[0].min == 1001 and fp.intensity[0].max == 1024
    assert fp.intensity[1].std == pytest.approx(0.0)
    save_fingerprint(fp, tmp_path / "fp.json")
    back = load_fingerprint(tmp_path / "fp.json")
    assert back.cases[0].lesion_components == 2 and back.intensity[0].mean == pytest.approx(1012.5)


def test_roundtrip_dice_of_a_lost_lesion():
    label = np.zeros((4, 8, 8), np.uint8)
    label[0, 0, 0] = 1  # nearest-exact 8 -> 4 samples odd indices only: the lesion vanishes
    assert label_roundtrip_dice(label, (4, 4, 4), "nearest") == 0.0
    assert label_roundtrip_dice(label, (4, 8, 8), "nearest") == 1.0
    assert label_roundtrip_dice(np.zeros((3, 3, 3)), (16, 16, 16), "nearest") == 1.0


def test_splits_are_stratified_seeded_and_stable(tmp_path):
    fractions = {f"c{i:02d}": f for i, f in enumerate([0] * 5 + [0.005] * 10 + [0.03] * 5 + [0.2] * 5)}
    splits = make_splits(fractions)
    assert len(splits) == 5 and splits == make_splits(fractions)
    assert sorted(c for s in splits for c in s["val"]) == sorted(fractions)
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
        bands = [volume_band(fractions[c]) for c in s["val"]]
        assert bands.count(NO_LESION_BAND) == 1 and bands.count("<1%") == 2 and bands.count(">5%") == 1
    path = tmp_path / "splits_final.json"
    assert write_splits_if_absent(path, fractions)
    before = path.read_text()
    assert not write_splits_if_absent(path, {**fractions, "new": 0.0})
    assert path.read_text() == before
    with pytest.raises(HiennuError, match="cannot be split"):
        make_splits({"a": 0.0, "b": 0.1})


def test_split_bands_are_the_half_open_evaluation_bands():
    """One definition (hiennu.masks): a lesion of exactly 5% of the brain is in ">5%", as in evaluation."""
    fractions = {f"c{i}": f for i, f in enumerate([0.0, 0.0099, 0.01, 0.0499, 0.05, 0.5])}
    assert [volume_band(f) for f in fractions.values()] == [NO_LESION_BAND, "<1%", "1-5%", "1-5%", ">5%", ">5%"]
    splits = make_splits(fractions, num_folds=2)
    assert sorted(c for s in splits for c in s["val"]) == sorted(fractions)


# validation folds of the demo's synthetic dataset as main wrote them (commit 21effd2) before the bands
# became half-open; a fraction of exactly 5% would have moved a case
DEMO_VAL_FOLDS = [["SYN_002", "SYN_003", "SYN_004", "SYN_006"], ["SYN_013", "SYN_015", "SYN_017", "SYN_019"],
                  ["SYN_005", "SYN_007", "SYN_008", "SYN_018"], ["SYN_010", "SYN_011", "SYN_014", "SYN_016"],
                  ["SYN_000", "SYN_001", "SYN_009", "SYN_012"]]


def test_the_demo_dataset_keeps_its_folds(tmp_path):
    from hiennu.datasets.synthetic import make_synthetic_dataset
    from hiennu.io.cases import discover_cases
    from hiennu.study.demo import DEMO_DATASET_NAME, DemoOptions

    opts = DemoOptions()
    raw = make_synthetic_dataset(tmp_path / "raw", num_cases=opts.num_cases, seed=opts.seed, preset=opts.preset,
                                 name=DEMO_DATASET_NAME)
    cases = discover_cases(raw / "imagesTr", 2, raw / "labelsTr")
    fp = compute_fingerprint(cases, raw.name, ["ADC", "ZADC"], num_processes=1)
    fractions = {c.case_id: c.lesion_fraction for c in fp.cases}
    assert 0.05 not in fractions.values()
    assert [s["val"] for s in make_splits(fractions)] == DEMO_VAL_FOLDS


def test_edited_plans_with_unknown_key_are_rejected(tmp_path):
    plans = plan_experiment(_fingerprint(BONBID_SIZES_XYZ))
    d = plans.to_dict()
    d["configurations"]["3d_fullres"]["target_sise_xyz"] = [1, 2, 3]
    with pytest.raises(HiennuError, match="target_sise_xyz"):
        Plans.from_dict(d)


def test_patch_plan_starts_from_the_rule_only_with_a_zmap_channel():
    with_z = plan_experiment(_fingerprint(BONBID_SIZES_XYZ), plan_for="cpu").configuration()
    assert with_z.network.rule_prior and with_z.training.learning_rate == pytest.approx(1e-3)
    assert with_z.network.rule_prior_scale == 10.0 and with_z.training.lr_schedule == "poly"
    assert "10 logits per unit of z-score" in with_z.notes
    assert with_z.training.l1_lambda == 0.0 and with_z.image_interpolation == "nearest"
    without = plan_experiment(_fingerprint(BONBID_SIZES_XYZ, names=("ADC", "T2")), plan_for="cpu").configuration()
    assert not without.network.rule_prior
    assert without.training.foreground_oversampling == pytest.approx(0.33)
    assert "no z-map channel" in without.notes
    assert without.training.l1_lambda == pytest.approx(1e-4) and without.image_interpolation == "linear"


@pytest.mark.parametrize("native", [True, False])
def test_cpu_plans_train_in_bf16_only_on_a_cpu_that_runs_it_natively(monkeypatch, native):
    import hiennu.planning.planner as planner
    monkeypatch.setattr(planner, "cpu_has_native_bf16", lambda: native)
    cpu = plan_experiment(_fingerprint(BONBID_SIZES_XYZ), plan_for="cpu").configuration()
    assert cpu.training.cpu_bf16 is native
    assert ("bfloat16 autocast on this CPU" in cpu.notes) is native
    gpu = plan_experiment(_fingerprint(BONBID_SIZES_XYZ), plan_for="gpu").configuration()
    assert gpu.training.cpu_bf16 is False and "bfloat16 autocast on CUDA" in gpu.notes
