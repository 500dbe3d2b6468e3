"""The brain-cropped, spacing-planned, patch-trained ``3d_fullres``: planner, crop, windows, prediction."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hiennu.geometry.cropping import (brain_bbox, crop_and_resample, crop_and_resample_label,
                                      restore_to_native)
from hiennu.inference.predictor import Predictor
from hiennu.inference.sliding_window import gaussian_weight, sliding_window_predict
from hiennu.windows import window_starts
from hiennu.io.image import Geometry, read_image, write_image
from hiennu.networks.unet import build_network
from hiennu.planning.spacing import plan_target_spacing
from hiennu.planning.topology import CPU_PATCH_VOXELS, plan_patch, pool_kernels
from hiennu.plans import (AugmentationPlan, ChannelNormalization, Configuration, NetworkPlan, Plans,
                          TrainingPlan)
from hiennu.preprocessing.preprocessor import lesion_locations, preprocess_case
from hiennu.training.data import patch_bbox, sample_epoch

OBLIQUE = tuple(np.round(sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix(), 12))


# --- planner -------------------------------------------------------------------------------------

def test_target_spacing_isotropic_takes_the_median():
    spacing, reason = plan_target_spacing([(1.0, 1.0, 1.0), (1.2, 1.2, 1.2), (1.4, 1.1, 1.1)],
                                          [(100, 100, 100)] * 3)
    assert spacing == [1.2, 1.1, 1.1]
    assert "not strongly anisotropic" in reason


def test_target_spacing_thick_slices_take_the_10th_percentile_out_of_plane():
    # nine 6 mm cases and one 2 mm case: median 6 mm is more than 3x the in-plane 1.375 mm
    spacings = [(6.0, 1.375, 1.375)] * 9 + [(2.0, 1.375, 1.375)]
    boxes = [(16, 84, 67)] * 9 + [(46, 84, 67)]
    spacing, reason = plan_target_spacing(spacings, boxes)
    p10 = float(np.percentile([s[0] for s in spacings], 10))
    assert spacing[0] == pytest.approx(max(p10, 1.375)) and spacing[1:] == [1.375, 1.375]
    assert "anisotropic" in reason and "10th percentile" in reason


def test_pooling_waits_for_a_coarse_axis():
    # z at 4 mm is more than twice 1.5 mm: not pooled until the in-plane spacing has caught up
    kernels = pool_kernels((32, 128, 128), (4.0, 1.5, 1.5), 4)
    assert kernels[0] == [1, 2, 2] and kernels[1] == [2, 2, 2]
    # every axis similar: all pooled from the start
    assert pool_kernels((48, 96, 80), (2.0, 1.375, 1.375), 3) == [[2, 2, 2]] * 3


def _factor(kernels):
    return [math.prod(k[a] for k in kernels) for a in range(3)]


def test_cpu_plan_covers_a_small_brain_and_respects_the_budget():
    tiny = plan_patch((20, 30, 25), (24, 36, 30), (2.0, 1.375, 1.375), 2, "cpu", 16, 1e6)
    factor = _factor(tiny.network.pool_kernel_sizes)
    assert all(p % f == 0 for p, f in zip(tiny.patch_size_zyx, factor))
    assert all(p >= m for p, m in zip(tiny.patch_size_zyx, (20, 30, 25)))  # a small brain fits whole
    assert tiny.batch_size == 2 and tiny.network.norm == "instance"
    huge = plan_patch((120, 200, 200), (130, 220, 210), (1.0, 1.0, 1.0), 2, "cpu", 16, 1e8)
    assert math.prod(huge.patch_size_zyx) <= CPU_PATCH_VOXELS
    factor = _factor(huge.network.pool_kernel_sizes)
    assert all(p % f == 0 for p, f in zip(huge.patch_size_zyx, factor))
    assert "CPU" in huge.reason


def test_gpu_plan_covers_the_largest_box_and_fits_memory():
    gpu = plan_patch((46, 84, 67), (54, 90, 73), (2.0, 1.375, 1.375), 2, "gpu", 16, 37 * 290_000)
    assert all(p >= m for p, m in zip(gpu.patch_size_zyx, (54, 90, 73)))
    assert len(gpu.network.features_per_stage) >= 4 and gpu.batch_size >= 2
    assert "GiB" in gpu.reason


# --- crop and un-crop ----------------------------------------------------------------------------

def test_crop_then_uncrop_is_the_identity_at_native_spacing():
    rng = np.random.default_rng(3)
    for shape in [(7, 13, 11), (12, 9, 16)]:
        volume = np.zeros(shape, np.float32)
        box = tuple(slice(int(rng.integers(0, n // 3)), int(rng.integers(2 * n // 3, n + 1))) for n in shape)
        volume[box] = rng.uniform(0.5, 2.0, volume[box].shape)
        spacing = tuple(rng.uniform(0.7, 5.0, 3))
        cropped, record = crop_and_resample(volume[None], spacing, spacing)
        assert record.bbox_zyx == brain_bbox(volume) == [[s.start, s.stop] for s in box]
        back = restore_to_native(cropped[0], record, "linear")
        np.testing.assert_allclose(back, volume, rtol=1e-6, atol=1e-6)
        label = (volume > 1.5).astype(np.uint8)
        on_target = crop_and_resample_label(label, record)
        np.testing.assert_array_equal(restore_to_native(on_target.astype(np.float32), record, "nearest") >= 0.5,
                                      label > 0)


def test_the_plans_label_interpolation_reaches_a_patch_configurations_labels():
    """``label_interpolation: sdf`` in a patch configuration's plans changes its preprocessed labels, as it does a
    grid configuration's (it was read, hashed into the preprocessing signature and then ignored: always nearest);
    each equals the crop + resample of the label by that interpolation."""
    from hiennu.geometry.resampling import resample_label_to_grid
    rng = np.random.default_rng(0)
    adc = np.zeros((12, 40, 40), np.float32)
    adc[2:10, 5:35, 5:35] = 1200
    zadc = rng.normal(size=adc.shape).astype(np.float32) * (adc > 0)
    label = np.zeros(adc.shape, np.uint8)
    label[4:8, 12:19, 14:23] = 1
    label[5, 25, 25] = 1
    norm = [ChannelNormalization("ADC", "zscore_brain"), ChannelNormalization("ZADC", "atlas_zscore")]
    net = NetworkPlan(features_per_stage=[8, 16], pool_kernel_sizes=[[1, 2, 2]], dropout_per_stage=[0, 0])
    config = Configuration(name="3d_fullres", target_size_xyz=None, grid_policy="spacing", normalization=norm,
                           target_spacing_zyx=[1.3, 0.7, 0.7], crop_to_brain=True, patch_size_zyx=[4, 16, 16],
                           network=net)
    segs = {}
    for mode in ("nearest", "sdf"):
        _, seg, record = preprocess_case([adc, zadc], dataclasses.replace(config, label_interpolation=mode), label,
                                         (2.0, 1.0, 1.0))
        box = label[tuple(slice(a, b) for a, b in record.bbox_zyx)]
        np.testing.assert_array_equal(seg[0], resample_label_to_grid(box > 0, record.resampled_size_zyx, mode))
        segs[mode] = seg
    assert not np.array_equal(segs["nearest"], segs["sdf"])


def test_resampled_box_size_follows_the_spacing():
    volume = np.ones((10, 20, 20), np.float32)
    data, record = crop_and_resample(volume[None], (4.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert data.shape == (1, 20, 10, 10) and record.resampled_size_zyx == [20, 10, 10]
    back = restore_to_native(data[0], record)
    assert back.shape == (10, 20, 20)


# --- sliding window ------------------------------------------------------------------------------

@pytest.mark.parametrize("size,patch", [(10, 10), (11, 4), (37, 16), (64, 48)])
def test_window_starts_cover_every_voxel_with_half_overlap(size, patch):
    starts = window_starts(size, patch)
    covered = np.zeros(size, bool)
    for s in starts:
        assert 0 <= s <= size - patch
        covered[s:s + patch] = True
    assert covered.all() and starts[0] == 0 and starts[-1] == size - patch
    if len(starts) > 1:
        assert max(np.diff(starts)) <= patch // 2 + 1


def test_sliding_window_weights_normalise_and_padding_is_cropped_back():
    weight = gaussian_weight((8, 12, 10))
    assert float(weight.max()) == pytest.approx(1.0) and float(weight.min()) > 0
    data = torch.randn(2, 5, 30, 17)  # smaller than the patch along z, larger along y
    ones = sliding_window_predict(lambda b: torch.ones(b.shape[0], *b.shape[2:]), data, (8, 12, 10))
    assert ones.shape == (5, 30, 17)
    torch.testing.assert_close(ones, torch.ones(5, 30, 17))
    # a position-independent prediction (channel 0 itself) comes back exactly
    same = sliding_window_predict(lambda b: b[:, 0], data, (8, 12, 10))
    torch.testing.assert_close(same, data[0])


# --- patch sampling ------------------------------------------------------------------------------

def test_patch_boxes_stay_in_bounds_and_centre_on_lesions():
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = patch_bbox((20, 30, 25), (8, 16, 16), rng)
        assert all(0 <= s and e <= n for (s, e), n in zip(box, (20, 30, 25)))
        small = patch_bbox((4, 30, 25), (8, 16, 16), rng)  # along z the case is inside the patch
        assert small[0][0] <= 0 and small[0][1] >= 4
    centres = np.array([[5, 6, 7]])
    assert patch_bbox((20, 30, 25), (8, 16, 16), rng, centres) == [[1, 9], [-2, 14], [-1, 15]]


def test_small_batches_keep_the_foreground_fraction_on_average():
    _, _, fg = sample_epoch(10, [1, 2, 3], global_batch=2, iterations=3000, foreground_fraction=0.33, seed=1, epoch=0)
    assert abs(fg.mean() - 0.33) < 0.02


def test_lesion_locations_are_lesion_voxels():
    seg = np.zeros((1, 6, 7, 8), np.uint8)
    seg[0, 2:4, 3:5, 1:6] = 1
    locs = lesion_locations(seg)
    assert len(locs) == int(seg.sum()) and all(seg[0][tuple(p)] for p in locs)
    assert len(lesion_locations(seg, limit=5)) == 5


# --- prediction in each input's exact geometry ---------------------------------------------------

def _patch_config(in_channels: int = 2) -> Configuration:
    return Configuration(
        name="3d_fullres", target_size_xyz=None, grid_policy="spacing",
        normalization=[ChannelNormalization("ADC", "zscore_brain"), ChannelNormalization("ZADC", "atlas_zscore",
                                                                                          0, 1, -10, 10)],
        target_spacing_zyx=[2.0, 1.5, 1.5], crop_to_brain=True, patch_size_zyx=[8, 16, 16], planned_for="cpu",
        network=NetworkPlan(in_channels=in_channels, features_per_stage=[4, 8], pool_kernel_sizes=[[2, 2, 2]],
                            dropout_per_stage=[0.0, 0.0], norm="instance", rule_prior=True),
        training=TrainingPlan(batch_size=2, iterations_per_epoch=2, max_epochs=1, num_workers=0),
        augmentation=AugmentationPlan(p_mirror=0.5, mirror_axes=[2]), prediction_interpolation="linear")


def test_prediction_has_the_input_geometry_and_reproduces_the_rule_prior():
    config = _patch_config()
    plans = Plans(dataset_name="Dataset001_X", channel_names=["ADC", "ZADC"], configurations={config.name: config})
    weights = build_network(config.network).state_dict()
    predictor = Predictor(plans, config, None, {"0": weights}, device="cpu", use_mirroring=True)
    rng = np.random.default_rng(0)
    shape = (9, 23, 19)
    geometry = Geometry(tuple(reversed(shape)), (1.1, 1.3, 3.5), (-12.5, 40.25, 7.0), OBLIQUE)
    adc = np.zeros(shape, np.float32)
    adc[1:8, 3:20, 2:17] = rng.uniform(800, 1600, (7, 17, 15))
    zadc = np.where(adc > 0, rng.normal(0, 1.5, shape), 0).astype(np.float32)
    zadc[3:6, 8:14, 6:12] = -4.0  # a block the rule calls lesion
    mask, prob = predictor.predict_case([adc, zadc], geometry)
    assert mask.shape == shape and prob.shape == shape and mask.dtype == np.uint8
    # an untrained rule-prior network predicts the rule; inside the block it is certain
    assert mask[3:6, 9:13, 7:11].all()
    assert not mask[adc == 0].any()  # outside the brain box nothing survives the un-crop
    data, _, crop = preprocess_case([adc, zadc], config, spacing_zyx=geometry.spacing_zyx)
    assert crop is not None and data.shape[1:] == tuple(crop.resampled_size_zyx)


@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_nearest_interpolation_in_and_out_reproduces_the_native_rule_exactly(interpolation):
    # thick native slices (4 mm) on a 2 mm grid: with nearest in and out an untrained rule-prior model
    # is exactly ZADC < -2; trilinear values between the slices move the rule's borders
    config = dataclasses.replace(_patch_config(), image_interpolation=interpolation,
                                 prediction_interpolation=interpolation)
    plans = Plans(dataset_name="Dataset001_X", channel_names=["ADC", "ZADC"], configurations={config.name: config})
    predictor = Predictor(plans, config, None, {"0": build_network(config.network).state_dict()}, device="cpu",
                          use_mirroring=False)
    rng = np.random.default_rng(5)
    shape = (8, 20, 18)
    geometry = Geometry(tuple(reversed(shape)), (1.5, 1.5, 4.0), (0.0, 0.0, 0.0), OBLIQUE)
    adc = np.zeros(shape, np.float32)
    adc[1:7, 2:18, 2:16] = 1200
    zadc = np.where(adc > 0, rng.normal(-1.0, 1.5, shape), 0).astype(np.float32)
    mask, _ = predictor.predict_case([adc, zadc], geometry)
    rule = ((zadc < -2) & (adc > 0)).astype(np.uint8)
    if interpolation == "nearest":
        np.testing.assert_array_equal(mask, rule)
    else:
        assert (mask != rule).any()


def test_predicted_file_keeps_exact_geometry(tmp_path):
    config = _patch_config()
    plans = Plans(dataset_name="Dataset001_X", channel_names=["ADC", "ZADC"], configurations={config.name: config})
    predictor = Predictor(plans, config, None, {"0": build_network(config.network).state_dict()}, device="cpu")
    shape = (6, 20, 18)
    geometry = Geometry(tuple(reversed(shape)), (0.9, 1.25, 4.0), (3.0, -7.5, 11.0), OBLIQUE)
    adc = np.zeros(shape, np.float32)
    adc[1:5, 2:18, 3:15] = 1200
    zadc = np.where(adc > 0, -3.0, 0).astype(np.float32)
    inputs = tmp_path / "in"
    write_image(adc, geometry, inputs / "c1_0000.mha")
    write_image(zadc, geometry, inputs / "c1_0001.mha")
    report = predictor.predict_folder(inputs, tmp_path / "out")
    assert report.ok
    mask, out_geometry = read_image(tmp_path / "out" / "c1.mha", dtype=np.uint8)
    assert out_geometry.size_xyz == geometry.size_xyz
    np.testing.assert_allclose(out_geometry.spacing_xyz, geometry.spacing_xyz, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out_geometry.origin_xyz, geometry.origin_xyz, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out_geometry.direction, geometry.direction, rtol=0, atol=1e-9)
    assert mask[adc > 0].all() and not mask[adc == 0].any()


# --- the real dev cases --------------------------------------------------------------------------

def test_real_crop_roundtrip_reaches_the_goal(real_bonbid_dir):
    from hiennu.datasets.bonbid import find_bonbid_cases
    from hiennu.planning.roundtrip import crop_roundtrip_dice

    values = []
    for case in find_bonbid_cases(real_bonbid_dir):
        adc, geometry = read_image(case.adc)
        label, _ = read_image(case.label, dtype=np.uint8)
        values.append(crop_roundtrip_dice(adc, label, geometry.spacing_zyx, (2.0, 1.375, 1.375), "linear"))
    assert len(values) == 37
    assert np.mean(values) >= 0.99


def test_prediction_settings_may_change_after_training_but_the_network_may_not():
    import dataclasses

    from hiennu.inference.trained_configuration import TrainedConfigurationError, check_trained_configuration

    trained = _patch_config()
    state = {"configuration": dataclasses.asdict(trained)}
    edited = dataclasses.replace(trained, prediction_interpolation="nearest", min_component_voxels=10)
    check_trained_configuration(state, edited, "checkpoint_best.pth", "plans.json")  # accepted
    other_patch = dataclasses.replace(trained, patch_size_zyx=[16, 16, 16])
    with pytest.raises(TrainedConfigurationError, match="patch_size_zyx"):
        check_trained_configuration(state, other_patch, "checkpoint_best.pth", "plans.json")


@pytest.mark.parametrize("mode", ["add", "veto"])
def test_rule_prior_starts_at_the_rule_and_veto_can_raise_only_by_log2(mode):
    plan = NetworkPlan(in_channels=2, features_per_stage=[4, 8], pool_kernel_sizes=[[2, 2, 2]],
                       dropout_per_stage=[0.0, 0.0], norm="instance", rule_prior=True, rule_prior_mode=mode)
    net = build_network(plan).eval()
    x = torch.randn(1, 2, 4, 8, 8) * 3
    prior = net.rule_scale.detach() * (-2.0 - x[:, 1:2])
    with torch.no_grad():
        torch.testing.assert_close(net(x), prior)  # an untrained model is the rule
        net.heads[-1].bias.fill_(-50.0)  # veto: the largest raise there is; add: a plain shift down
        raised = net(x)
    if mode == "veto":
        torch.testing.assert_close(raised, prior + math.log(2.0), atol=1e-5, rtol=0)
    else:
        assert torch.all(raised < prior - 49)


@pytest.mark.parametrize("scale", [2.0, 10.0])
def test_rule_prior_scale_sets_the_initial_sharpness(scale):
    # k (t - z) with k = rule_prior_scale: at z = t - 0.5 the logit is k / 2, at z = t + 1 it is -k
    plan = NetworkPlan(in_channels=2, features_per_stage=[4, 8], pool_kernel_sizes=[[2, 2, 2]],
                       dropout_per_stage=[0.0, 0.0], norm="instance", rule_prior=True, rule_prior_mode="veto",
                       rule_prior_scale=scale)
    net = build_network(plan).eval()
    x = torch.zeros(1, 2, 4, 8, 8)
    x[:, 1, :2] = -2.5
    x[:, 1, 2:] = -1.0
    with torch.no_grad():
        out = net(x)
    assert float(net.rule_scale.detach()) == scale
    torch.testing.assert_close(out[0, 0, :2], torch.full((2, 8, 8), scale / 2))
    torch.testing.assert_close(out[0, 0, 2:], torch.full((2, 8, 8), -scale))



def test_rule_prior_cap_bounds_the_rule_logits_and_keeps_their_gradient():
    # min(k (t - z), cap) with k = 10, t = -2, cap = 3: z = -4 -> 3 (not 20), z = -2.1 -> 1, z = -1 -> -10
    def net_for(cap):
        plan = NetworkPlan(in_channels=2, features_per_stage=[4, 8], pool_kernel_sizes=[[2, 2, 2]],
                           dropout_per_stage=[0.0, 0.0], norm="instance", rule_prior=True, rule_prior_mode="veto",
                           rule_prior_scale=10.0, rule_prior_cap=cap)
        return build_network(plan).eval()

    x = torch.zeros(1, 2, 4, 8, 8)
    x[:, 1, 0], x[:, 1, 1], x[:, 1, 2:] = -4.0, -2.1, -1.0
    with torch.no_grad():
        out = net_for(3.0)(x)[0, 0]
    torch.testing.assert_close(out[0], torch.full((8, 8), 3.0))
    torch.testing.assert_close(out[1], torch.full((8, 8), 1.0))
    torch.testing.assert_close(out[2:], torch.full((2, 8, 8), -10.0))

    # the probability of a voxel deep inside the rule: without the cap its sigmoid is saturated and the
    # veto's gradient (through the head's bias) vanishes; with the cap it is the sigmoid's slope at 3
    grads = {}
    for cap in (None, 3.0):
        net = net_for(cap)
        torch.sigmoid(net(x)[0, 0, 0]).sum().backward()
        grads[cap] = abs(float(net.heads[-1].bias.grad))
    slope = float(torch.sigmoid(torch.tensor(3.0)) * (1 - torch.sigmoid(torch.tensor(3.0))))
    assert grads[3.0] == pytest.approx(64 * slope * 0.5, rel=1e-4)  # 64 voxels x sigmoid' x softplus'(0)
    assert grads[None] < grads[3.0] * 1e-6


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_the_veto_of_a_voxel_deep_in_the_rule_has_a_gradient_only_at_a_gentle_scale(scale):
    # What the prior's scale does to learning (results.md, session 22): a false positive of the rule at
    # ZADC -4 starts at the logit k (t - z) = 2k; the gradient of its probability through the head's bias is 64 voxels x sigmoid'(2k) x
    # softplus'(0) = 32 sigmoid'(2k): 3.4 at k = 1, 6.6e-8 at k = 10 (0 in float32): no loss on probabilities
    # (Dice, Tversky, the Hausdorff term) can teach that veto; the focal term, on logits, can (next test)
    plan = NetworkPlan(in_channels=2, features_per_stage=[4, 8], pool_kernel_sizes=[[2, 2, 2]],
                       dropout_per_stage=[0.0, 0.0], norm="instance", rule_prior=True, rule_prior_mode="veto",
                       rule_prior_scale=scale)
    net = build_network(plan).eval()
    x = torch.zeros(1, 2, 4, 8, 8)
    x[:, 1] = -4.0
    torch.sigmoid(net(x)[0, 0, 0]).sum().backward()
    grad = abs(float(net.heads[-1].bias.grad))
    if scale == 1.0:
        s = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
        assert grad == pytest.approx(32 * float(s * (1 - s)), rel=1e-3)
    else:
        assert grad < 1e-7  # 6.6e-8 in exact arithmetic; float32's sigmoid(20) rounds to 1, so it is 0


def test_the_focal_term_can_veto_a_voxel_deep_in_the_rule_at_k_10():
    # The focal loss is computed from logits, so a false positive of the rule at logit 20 keeps its gradient:
    # d/dL [sigmoid(L)^2 softplus(L)] = 1 at L = 20 (float32), the mean over the N voxels gives each 1/N, and the
    # veto's d(out)/dn = -sigmoid(0) = -1/2 with the head at zero: the head's bias gets exactly -1/2
    from hiennu.losses.focal import FocalLoss
    plan = NetworkPlan(in_channels=2, features_per_stage=[4, 8], pool_kernel_sizes=[[2, 2, 2]],
                       dropout_per_stage=[0.0, 0.0], norm="instance", rule_prior=True, rule_prior_mode="veto",
                       rule_prior_scale=10.0)
    net = build_network(plan).eval()
    x = torch.zeros(1, 2, 4, 8, 8)
    x[:, 1] = -4.0
    logits = net(x)
    assert float(logits.detach().min()) == pytest.approx(20.0)
    FocalLoss()(logits, torch.zeros_like(logits)).backward()
    assert float(net.heads[-1].bias.grad) == pytest.approx(-0.5, rel=1e-5)
