"""nnU-Net's ``2d`` configuration: plans checks, the slice-wise network, 2D augmentation, in-plane-only
resampling, the planner's choices, and a tiny end-to-end run (plan, preprocess, train, predict in native
geometry, including a single-slice case and one with thinner slices than planned)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hiennu.io.dataset_json import BONBID_CHANNELS as DEFAULT_CHANNELS
from hiennu.geometry.cropping import crop_and_resample, resampled_size
from hiennu.inference.sliding_window import sliding_window_predict
from hiennu.windows import window_starts
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, write_image
from hiennu.networks.unet import build_network
from hiennu.plans import (ChannelNormalization, Configuration, NetworkPlan, PlansError, configuration_problems,
                          configuration_from_dict)
from hiennu.training.augmentation import SliceTransforms, augment_sample, build_transforms
from hiennu.plans import AugmentationPlan

SLICE_NET = dict(in_channels=2, features_per_stage=[4, 8, 16], pool_kernel_sizes=[[1, 2, 2], [1, 2, 2]],
                 dropout_per_stage=[0.0, 0.0, 0.0], norm="instance", spatial_dims=2)


def _slice_config(**changes) -> Configuration:
    base = Configuration(name="2d", target_size_xyz=None, grid_policy="spacing",
                         normalization=[ChannelNormalization("ADC", "zscore_image"),
                                        ChannelNormalization("ZADC", "atlas_zscore")],
                         target_spacing_zyx=[4.0, 1.0, 1.0], crop_to_brain=True, patch_size_zyx=[1, 16, 16],
                         network=NetworkPlan(**SLICE_NET))
    return dataclasses.replace(base, **changes)


# ------------------------------------------------------------------------------------------- plans

def test_a_valid_2d_configuration_has_no_problems_and_keeps_the_slices():
    config = _slice_config()
    assert configuration_problems(config) == []
    assert config.is_2d and config.resampling_spacing_zyx == (None, 1.0, 1.0)
    assert config.inference_window_zyx((7, 30, 20)) == (7, 16, 16)
    three_d = _slice_config(patch_size_zyx=[8, 16, 16], network=NetworkPlan(**{**SLICE_NET, "spatial_dims": 3}))
    assert three_d.resampling_spacing_zyx == (4.0, 1.0, 1.0) and three_d.inference_window_zyx((7, 30, 20)) == (8, 16, 16)


@pytest.mark.parametrize("changes, words", [
    (dict(network=NetworkPlan(**{**SLICE_NET, "pool_kernel_sizes": [[2, 2, 2], [1, 2, 2]]})),
     ["pool along z", "first entry to 1"]),
    (dict(patch_size_zyx=[1, 16, 16], network=NetworkPlan(**{**SLICE_NET, "spatial_dims": 3})),
     ["single slice", "spatial_dims is 3"]),
    (dict(target_size_xyz=[16, 16, 8], patch_size_zyx=None, target_spacing_zyx=None),
     ["needs a patch configuration"]),
])
def test_a_2d_patch_on_a_3d_network_or_the_reverse_is_refused_naming_the_field(changes, words):
    problems = " ".join(configuration_problems(_slice_config(**changes)))
    for word in words:
        assert word in problems, problems


def test_a_2d_network_may_train_on_slabs_of_slices():
    config = _slice_config(patch_size_zyx=[4, 16, 16])
    assert configuration_problems(config) == [] and config.inference_window_zyx((7, 30, 20)) == (7, 16, 16)


def test_unknown_spatial_dims_is_refused_at_load():
    d = dataclasses.asdict(_slice_config())
    d["network"]["spatial_dims"] = 4
    with pytest.raises(PlansError, match="spatial_dims"):
        configuration_from_dict(d, "plans.json")


# ----------------------------------------------------------------------------------------- network

def test_the_2d_network_runs_each_slice_alone_and_starts_at_the_rule():
    torch.manual_seed(0)
    net = build_network(NetworkPlan(**SLICE_NET, rule_prior=True, rule_prior_mode="veto", rule_prior_scale=10.0))
    net.eval()
    x = torch.randn(2, 2, 5, 16, 12)
    with torch.no_grad():
        whole = net(x)
        by_slice = torch.cat([net(x[:, :, k:k + 1]) for k in range(5)], dim=2)
    assert whole.shape == (2, 1, 5, 16, 12)
    torch.testing.assert_close(whole, by_slice, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((whole > 0), (x[:, 1:2] < -2.0))  # heads start at zero: the rule
    assert all(isinstance(m, torch.nn.Conv2d) for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
               and not isinstance(m, torch.nn.ConvTranspose2d))


def test_the_2d_network_with_deep_supervision_returns_5d_maps():
    net = build_network(NetworkPlan(**{**SLICE_NET, "deep_supervision": True}))
    out = net.train()(torch.randn(3, 2, 1, 16, 16))
    assert [tuple(o.shape) for o in out] == [(3, 1, 1, 16, 16), (3, 1, 1, 8, 8)]


def test_a_2d_network_refuses_z_pooling():
    with pytest.raises(ValueError, match="cannot pool along z"):
        build_network(NetworkPlan(**{**SLICE_NET, "pool_kernel_sizes": [[2, 2, 2], [1, 2, 2]]}))


# ------------------------------------------------------------------------------ sliding window, geometry

def test_one_voxel_windows_visit_each_slice_once():
    assert window_starts(5, 1) == [0, 1, 2, 3, 4]
    assert window_starts(1, 1) == [0]
    calls = []

    def predict(batch):
        calls.append(batch.shape)
        return batch[:, 0]
    data = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    out = sliding_window_predict(predict, data, (3, 4, 4))
    torch.testing.assert_close(out, data[0])
    assert len(calls) == 1


def test_a_none_target_spacing_keeps_that_axis():
    assert resampled_size((7, 40, 30), (5.0, 1.0, 1.0), (None, 2.0, 2.0)) == (7, 20, 15)
    images = np.ones((2, 7, 40, 30), np.float32)
    out, record = crop_and_resample(images, (5.0, 1.0, 1.0), (None, 2.0, 2.0))
    assert out.shape == (2, 7, 20, 15) and record.resampled_size_zyx == [7, 20, 15]


# ------------------------------------------------------------------------------------------ augmentation

def test_2d_augmentation_runs_in_plane_and_keeps_the_slice_axis():
    plan = AugmentationPlan(p_mirror=1.0, mirror_axes=[0, 2], p_elastic=1.0, p_lowres=1.0, p_blur=1.0)
    assert not isinstance(build_transforms(plan, (4, 16, 12)), SliceTransforms)
    transform = build_transforms(plan, (16, 12))
    assert isinstance(transform, SliceTransforms)
    flips = [t for t in transform.transforms if type(t).__name__ == "AxisFlipTransform"]
    assert flips[0].axes == (1,)  # x of (z, y, x) is axis 1 of (y, x); z dropped
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 1, 16, 12)).astype(np.float32)
    seg = (rng.uniform(size=(1, 1, 16, 12)) > 0.7).astype(np.float32)
    d, s = augment_sample(transform, data, seg, seed=3)
    assert d.shape == (2, 1, 16, 12) and s.shape == (1, 1, 16, 12) and set(np.unique(s)) <= {0.0, 1.0}
    d2, _ = augment_sample(transform, data, seg, seed=3)
    np.testing.assert_array_equal(d, d2)
    # a sample of three slices (a slab, or a 2.5D network's context) is deformed in-plane, the same way for every
    # slice: three identical slices stay identical, in the image and in the target
    same = np.repeat(data, 3, axis=1)
    d3, s3 = augment_sample(build_transforms(AugmentationPlan(p_noise=0, p_lowres=0, p_blur=0, p_gamma=0,
                                                              p_elastic=1.0, p_mirror=1.0), (16, 12)),
                            same, np.repeat(seg, 3, axis=1), seed=3)
    assert d3.shape == (2, 3, 16, 12) and s3.shape == (1, 3, 16, 12)
    assert not np.allclose(d3[:, 0], data[:, 0])
    np.testing.assert_array_equal(d3[:, 0], d3[:, 2])
    np.testing.assert_array_equal(s3[:, 0], s3[:, 1])


def test_2d_mirroring_without_noise_flips_x():
    plan = AugmentationPlan(p_noise=0, p_lowres=0, p_blur=0, p_gamma=0, p_elastic=0, p_mirror=1.0, mirror_axes=[2])
    data = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 1, 4, 3)
    d, _ = augment_sample(build_transforms(plan, (4, 3)), data, np.zeros((1, 1, 4, 3), np.float32), seed=0)
    np.testing.assert_array_equal(d, data[..., ::-1])


# --------------------------------------------------------------------------------------------- planner

def test_the_planner_writes_a_2d_configuration_beside_3d_fullres():
    from hiennu.planning.planner import plan_experiment
    fp = _fingerprint()
    plans = plan_experiment(fp, plan_for="cpu")
    slices, full = plans.configurations["2d"], plans.configurations["3d_fullres"]
    assert slices.is_2d and configuration_problems(slices) == []
    # nnU-Net's 2d: single slices, a third on lesions, batch Dice
    assert slices.patch_size_zyx[0] == 1 and slices.network.spatial_dims == 2
    assert slices.training.batch_dice and not full.training.batch_dice
    assert slices.target_spacing_zyx[1:] == full.target_spacing_zyx[1:]
    assert slices.target_spacing_zyx[0] == pytest.approx(float(np.median([c.spacing_zyx[0] for c in fp.cases])))
    assert slices.network.rule_prior == full.network.rule_prior
    assert all(k[0] == 1 for k in slices.network.pool_kernel_sizes)
    assert slices.network.features_per_stage == [12, 24, 48, 96, 192][:len(slices.network.features_per_stage)]
    assert slices.training.batch_size >= 2 and "each case keeps its own slices" in slices.notes
    assert slices.training.foreground_oversampling == pytest.approx(0.33)
    # the patch covers the largest brain box in-plane at the target spacing
    boxes = np.array([[b[1] * s[1] / full.target_spacing_zyx[1], b[2] * s[2] / full.target_spacing_zyx[2]]
                      for b, s in ((c.brain_box_zyx, c.spacing_zyx) for c in fp.cases)])
    assert slices.patch_size_zyx[1] >= boxes[:, 0].max() and slices.patch_size_zyx[2] >= boxes[:, 1].max()


def _flops_per_voxel(plan: NetworkPlan, patch_zyx) -> float:
    """Forward + backward FLOPs of ``plan``'s network on one patch, per voxel (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode
    net = build_network(plan)
    x = torch.zeros(1, plan.in_channels, *patch_zyx)
    with FlopCounterMode(display=False) as counter:
        out = net(x)
        (out[0] if isinstance(out, (list, tuple)) else out).sum().backward()
    return counter.get_total_flops() / float(np.prod(patch_zyx))


def test_the_cpu_2d_network_costs_about_half_the_flops_per_voxel_of_the_cpu_3d_network():
    # why the CPU 2d is narrower than nnU-Net's habit: at widths 16-256 a 2D step would cost about as much per
    # voxel as the 3D one (each 2D level costs as much as the one above it), and its throughput gain would vanish
    from hiennu.planning.topology import plan_patch, plan_slice_patch
    three = plan_patch([48, 88, 72], [48, 88, 72], [2.0, 1.375, 1.375], 2, "cpu", 0.0, 1e9)
    two = plan_slice_patch([48, 96, 80], [2.0, 1.375, 1.375], 2, "cpu", 0.0, 1e9)
    assert two.network.features_per_stage == [12, 24, 48, 96, 192]
    ratio = _flops_per_voxel(two.network, two.patch_size_zyx) / _flops_per_voxel(three.network, [16, 32, 32])
    assert 0.35 < ratio < 0.6
    wide = dataclasses.replace(two.network, features_per_stage=[16, 32, 64, 128, 256])
    assert _flops_per_voxel(wide, two.patch_size_zyx) / _flops_per_voxel(two.network, two.patch_size_zyx) > 1.6


def _fingerprint():
    """A fingerprint of four cases, three with 4-6 mm slices."""
    from hiennu.planning.fingerprint import CaseFingerprint, DatasetFingerprint, IntensityStats
    stats = IntensityStats(1400.0, 400.0, 1400.0, 0.0, 4000.0, 600.0, 3300.0, 1000)
    zstats = IntensityStats(0.0, 1.6, 0.0, -10.0, 10.0, -5.0, 8.0, 1000)
    cases = [CaseFingerprint(case_id=f"c{i}", geometry={"size_xyz": [128, 128, n], "spacing_xyz": [1.25, 1.25, s]},
                             brain_voxels=1000, lesion_voxels=10, lesion_fraction=0.01, lesion_components=1,
                             intensity=[stats, zstats], brain_bbox_zyx=[[0, n], [10, 100 + i], [20, 90 + i]])
             for i, (s, n) in enumerate([(4.0, 20), (5.0, 18), (6.0, 16), (2.0, 40)])]
    return DatasetFingerprint(dataset_name="Dataset001_T", channel_names=list(DEFAULT_CHANNELS), samples_per_case=10,
                              seed=0, intensity=[stats, zstats], cases=cases)


# ------------------------------------------------------------------------------------------- end to end

def _write_raw(root, n_cases=6):
    save_dataset_json(DatasetJson(name="Tiny2d", num_training=n_cases), root / "dataset.json")
    rng = np.random.default_rng(1)
    for i in range(n_cases):
        geometry = Geometry((36, 40, 9 + i), (1.2, 1.2, 4.0 + 0.4 * i), (-10.0, 5.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        _write_case(root / "imagesTr", root / "labelsTr", f"case_{i:03d}", geometry, rng, lesion=i < n_cases - 1)


def _write_case(images, labels, case, geometry, rng, lesion=True):
    z, y, x = geometry.size_zyx
    mask = np.zeros((z, y, x), np.uint8)
    if lesion:
        mask[z // 3: z // 3 + 2, 15:25, 12:20] = 1
    adc = np.zeros((z, y, x), np.float32)
    adc[:, 4:36, 4:32] = rng.normal(1400, 100, (z, 32, 28))
    adc[mask == 1] = 600
    zadc = rng.normal(0, 1, (z, y, x)).astype(np.float32)
    zadc[mask == 1] = -4
    write_image(adc, geometry, images / f"{case}_0000.mha")
    write_image(zadc, geometry, images / f"{case}_0001.mha")
    if labels is not None:
        write_image(mask, geometry, labels / f"{case}.mha")


def test_2d_end_to_end_plans_trains_and_predicts_in_native_geometry(hiennu_roots, tmp_path):
    from hiennu.inference.predictor import Predictor
    from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    from hiennu.plans import load_plans
    from hiennu.training.launch import train
    from hiennu.training.options import TrainingOptions
    raw = hiennu_roots["hiennu_raw"] / "Dataset001_Tiny2d"
    _write_raw(raw)
    out = plan_and_preprocess("Tiny2d", PlanAndPreprocessOptions(configurations=["2d"], plan_for="cpu",
                                                                   num_processes=1))
    config = load_plans(out / "plans.json").configuration("2d")
    assert config.roundtrip_dice_mean is not None and config.roundtrip_dice_mean > 0.99
    data = np.load(out / "2d" / "case_002.npy")
    assert data.shape[1] == 11  # each case keeps its slices
    fold = train(TrainingOptions(dataset="Tiny2d", configuration="2d", fold=0, epochs=1, iterations_per_epoch=2,
                                 batch_size=4, device="cpu", num_workers=0, final_validation=True, seed=3),
                 "TrainerDiceFocal")
    assert (fold / "validation" / "summary.json").is_file()
    predictor = Predictor.from_model_dir(fold.parent, folds=[0], device="cpu")
    rng = np.random.default_rng(5)
    test_dir = tmp_path / "test"
    for case, size_z, spacing_z in (("single", 1, 4.0), ("thin", 24, 1.5)):
        geometry = Geometry((36, 40, size_z), (1.2, 1.2, spacing_z), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        _write_case(test_dir, None, case, geometry, rng)
        mask = predictor.predict_files(test_dir / f"{case}_0000.mha", test_dir / f"{case}_0001.mha")
        mask = sitk_array(mask)
        assert np.shape(mask) == geometry.size_zyx and set(np.unique(mask)) <= {0, 1}


def sitk_array(image):
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(image)


def test_the_cuda_layout_of_a_2d_network_is_one_its_weights_can_take():
    """On CUDA a 3D network runs channels_last_3d; a 2D one cannot (rank-4 weights: `.to()` raises), which
    stopped every 2d training on the lent H200 of 2026-12-04 before its first step."""
    from hiennu.device import memory_format
    from hiennu.inference.ensemble import FoldEnsemble
    cuda = torch.device("cuda")
    net2d = build_network(NetworkPlan(**SLICE_NET))
    net3d = build_network(NetworkPlan(**{**SLICE_NET, "spatial_dims": 3,
                                         "pool_kernel_sizes": [[2, 2, 2], [2, 2, 2]]}))
    with pytest.raises(RuntimeError, match="rank 5"):
        net2d.to(memory_format=torch.channels_last_3d)
    assert memory_format(cuda, net2d) == torch.contiguous_format
    assert memory_format(cuda, net3d) == torch.channels_last_3d
    assert memory_format(torch.device("cpu"), net3d) == torch.contiguous_format
    net2d.to(memory_format=memory_format(cuda, net2d))  # what the trainer and the predictor do; no error
    # an ensemble of a 2D and a 3D network keeps one layout per network (on the CPU both are contiguous)
    ens = FoldEnsemble([net2d, net3d], device="cpu")
    probs = ens.predict_probabilities(torch.randn(1, 2, 4, 16, 16))
    assert probs.shape == (1, 4, 16, 16) and torch.isfinite(probs).all()
