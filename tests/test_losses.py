"""Losses: hand-computed values, gradients, hybrids, reductions, degenerate masks, autocast, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.losses import (LOSSES, DiceFocalHDTLoss, DiceFocalLoss, DiceLoss, FocalLoss, HausdorffDTLoss,
                           LogHausdorffDTLoss, TverskyHDTLoss, TverskyLoss)

L3 = math.log(3.0)  # sigmoid(L3) = 0.75, sigmoid(-L3) = 0.25
EPS = 1e-5


def _line(values) -> torch.Tensor:
    """A (1, 1, 1, 1, n) volume holding ``values`` along x."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, 1, -1)


# p = [0.75, 0.75, 0.75, 0.5], g = [1, 0, 0, 0]
LOGITS = _line([L3, L3, L3, 0.0])
TARGET = _line([1, 0, 0, 0])


def test_dice_hand_computed():
    # Σpg = 0.75, Σp = 2.75, Σg = 1
    expected = 1 - (1.5 + EPS) / (3.75 + EPS)
    assert DiceLoss()(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_tversky_hand_computed():
    # TP = 0.75, FP = 0.75 + 0.75 + 0.5 = 2.0, FN = 0.25
    expected = 1 - (0.75 + EPS) / (0.75 + 0.3 * 2.0 + 0.7 * 0.25 + EPS)
    assert TverskyLoss()(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    # alpha weighs false positives: raising it raises the loss here (FP > FN)
    assert TverskyLoss(alpha=0.7, beta=0.3)(LOGITS, TARGET).item() > expected


def test_focal_hand_computed():
    terms = [0.25 ** 2 * -math.log(0.75),      # g = 1, p = 0.75
             0.75 ** 2 * -math.log(0.25),      # g = 0, p = 0.75 (twice)
             0.75 ** 2 * -math.log(0.25),
             0.5 ** 2 * -math.log(0.5)]        # g = 0, p = 0.5
    assert FocalLoss()(LOGITS, TARGET).item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert FocalLoss(gamma=0.0)(LOGITS, TARGET).item() == pytest.approx(
        (-math.log(0.75) - 2 * math.log(0.25) - math.log(0.5)) / 4, rel=1e-6)


def test_hausdorff_hand_computed():
    # target 0 0 1 1 0 0 -> squared distance to the other class 4 1 1 1 1 4
    # prediction (logit > 0) 0 0 0 1 1 0 -> 9 4 1 1 1 1
    target = _line([0, 0, 1, 1, 0, 0])
    logits = _line([-L3, -L3, -L3, L3, L3, -L3])
    err = [0.0625, 0.0625, 0.5625, 0.0625, 0.5625, 0.0625]  # (p - g)²
    dist = [13, 5, 2, 2, 2, 5]
    expected = sum(e * d for e, d in zip(err, dist)) / 6
    assert HausdorffDTLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert LogHausdorffDTLoss()(logits, target).item() == pytest.approx(math.log(expected + 1), rel=1e-6)
    # 2 mm along x multiplies every squared distance by 4
    assert HausdorffDTLoss(spacing=(1.0, 1.0, 2.0))(logits, target).item() == pytest.approx(4 * expected, rel=1e-6)
    # alpha = 1 uses the distances themselves
    dist1 = [3 + 2, 2 + 1, 1 + 1, 1 + 1, 1 + 1, 1 + 2]
    assert HausdorffDTLoss(alpha=1.0)(logits, target).item() == pytest.approx(
        sum(e * d for e, d in zip(err, dist1)) / 6, rel=1e-6)


def _batch(seed=0, shape=(3, 1, 4, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 2
    target = (torch.rand(shape, generator=g) < 0.3).float()
    return logits, target


def test_hybrids_equal_their_weighted_parts():
    logits, target = _batch()
    dice, focal, tversky = DiceLoss()(logits, target), FocalLoss()(logits, target), TverskyLoss()(logits, target)
    log_hdt = LogHausdorffDTLoss()(logits, target)
    assert DiceFocalLoss()(logits, target).item() == pytest.approx((dice + focal).item(), rel=1e-6)
    assert DiceFocalHDTLoss()(logits, target).item() == pytest.approx(
        (0.9 * (dice + focal) + 0.1 * log_hdt).item(), rel=1e-6)
    assert TverskyHDTLoss()(logits, target).item() == pytest.approx((0.9 * tversky + 0.1 * log_hdt).item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_reductions(name):
    logits, target = _batch(1)
    per_sample = LOSSES[name](reduction="none")(logits, target)
    assert per_sample.shape == (3,) and per_sample.dtype == torch.float32
    mean = LOSSES[name]()(logits, target)
    total = LOSSES[name](reduction="sum")(logits, target)
    assert mean.dim() == 0 and mean.dtype == torch.float32
    if name == "LogHausdorffDT":
        return  # the log is taken after the reduction: test_log_hausdorff_is_log_of_reduced_value
    if "HDT" in name:   # region + log HDT, each part reduced the same way (the log after its own reduction)
        region = {"DiceFocalHDT": DiceFocalLoss, "TverskyHDT": TverskyLoss}[name]
        for reduction, reduce in (("none", lambda t: t), ("mean", torch.mean), ("sum", torch.sum)):
            hdt = HausdorffDTLoss(reduction="none")(logits, target)
            want = 0.9 * reduce(region(reduction="none")(logits, target)) + 0.1 * torch.log1p(reduce(hdt))
            torch.testing.assert_close(LOSSES[name](reduction=reduction)(logits, target), want, rtol=1e-5, atol=1e-6)
        return
    assert mean.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(per_sample.sum().item(), rel=1e-6)


def test_log_hausdorff_is_log_of_reduced_value():
    logits, target = _batch(2)
    hdt = HausdorffDTLoss(reduction="none")(logits, target)
    assert LogHausdorffDTLoss()(logits, target).item() == pytest.approx(math.log1p(hdt.mean().item()), rel=1e-6)
    assert LogHausdorffDTLoss(reduction="sum")(logits, target).item() == pytest.approx(
        math.log1p(hdt.sum().item()), rel=1e-6)
    torch.testing.assert_close(LogHausdorffDTLoss(reduction="none")(logits, target), torch.log1p(hdt))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck_float64(name):
    g = torch.Generator().manual_seed(3)
    shape = (2, 1, 2, 3, 4)
    logits = (torch.rand(shape, generator=g, dtype=torch.float64) + 0.2) \
        * torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()  # |logit| >= 0.2
    logits.requires_grad_(True)
    target = (torch.rand(shape, generator=g) < 0.4).double()
    # the distance fields are constants; the torch back-end has less per-call overhead on tiny volumes
    loss = LOSSES[name](backend="torch") if "Hausdorff" in name or "HDT" in name else LOSSES[name]()
    assert loss(logits, target).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("case", ["both_empty", "empty_target", "full_target", "full_both"])
def test_degenerate_masks_are_finite(name, case):
    shape = (2, 1, 3, 4, 5)
    target = torch.ones(shape) if case.startswith("full") else torch.zeros(shape)
    scale = 8.0 if case == "full_both" else -8.0
    if case in ("empty_target", "full_target"):
        scale = -scale if case == "empty_target" else scale
        logits = torch.randn(shape) * 3
    else:
        logits = torch.full(shape, scale)
    logits.requires_grad_(True)
    value = LOSSES[name]()(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_perfect_prediction_of_empty_and_full_masks():
    empty, full = torch.zeros(1, 1, 3, 4, 5), torch.ones(1, 1, 3, 4, 5)
    for loss in (DiceLoss(), TverskyLoss(), HausdorffDTLoss()):
        assert loss(torch.full_like(empty, -30.0), empty).item() == pytest.approx(0.0, abs=1e-6)
        assert loss(torch.full_like(full, 30.0), full).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_autocast_bfloat16(name):
    logits, target = _batch(4)
    low = logits.bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = LOSSES[name]()(low, target.bool())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(LOSSES[name]()(low.float(), target).item(), rel=1e-6)


def test_bad_input_is_explained():
    logits, target = _batch()
    with pytest.raises(HiennuError, match="differs"):
        DiceLoss()(logits, target[:, :, :-1])
    with pytest.raises(HiennuError, match="binary"):
        TverskyLoss()(logits, target * 2)
    with pytest.raises(HiennuError, match="one output channel"):
        DiceLoss()(torch.cat([logits, logits], 1), torch.cat([target, target], 1))
    with pytest.raises(HiennuError, match="reduction"):
        FocalLoss(reduction="average")
    with pytest.raises(HiennuError, match=r"\(B, 1, z, y, x\)"):
        HausdorffDTLoss()(logits[..., 0], target[..., 0])


@pytest.mark.slow  # importing MONAI alone takes about 10 s here
def test_matches_monai():
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = _batch(5)
    pairs = [(DiceLoss(), monai_losses.DiceLoss(sigmoid=True)),
             (FocalLoss(), monai_losses.FocalLoss(gamma=2.0)),
             (DiceFocalLoss(), monai_losses.DiceFocalLoss(sigmoid=True, gamma=2.0)),
             (TverskyLoss(), monai_losses.TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)),
             (HausdorffDTLoss(), monai_losses.HausdorffDTLoss(sigmoid=True)),
             (LogHausdorffDTLoss(), monai_losses.LogHausdorffDTLoss(sigmoid=True))]
    for ours, theirs in pairs:
        assert ours(logits, target).item() == pytest.approx(theirs(logits, target).item(), rel=1e-5), type(ours)


# ---------------------------------------------------------------- blob loss

def test_blob_dice_hand_computed():
    from hiennu.losses import BlobDiceLoss
    # x: p = [0.75, 0.75, 0.5, 0.25, 0.75], g = [1, 0, 0, 1, 1]: blobs {0} and {3, 4} (split by two background
    # voxels), probability off the lesions 0.75 + 0.5 = 1.25.
    # blob 1: Σp y = 0.75, size 1 -> 1 - 1.5 / (1.25 + 0.75 + 1); blob 2: Σp y = 1.0, size 2 -> 1 - 2 / (1.25 + 1 + 2)
    logits = _line([L3, L3, 0.0, -L3, L3])
    target = _line([1, 0, 0, 1, 1])
    blob1 = 1 - (1.5 + EPS) / (3.0 + EPS)
    blob2 = 1 - (2.0 + EPS) / (4.25 + EPS)
    assert BlobDiceLoss()(logits, target).item() == pytest.approx((blob1 + blob2) / 2, rel=1e-6)
    # the same two lesions joined by target voxels are one blob: the plain soft Dice of the sample
    joined = _line([1, 1, 1, 1, 1])
    assert BlobDiceLoss()(logits, joined).item() == pytest.approx(DiceLoss()(logits, joined).item(), rel=1e-6)


def test_blob_dice_counts_each_lesion_once_and_every_false_positive_in_each():
    from hiennu.losses import BlobDiceLoss
    # two 3D lesions, a big one found and a one-voxel one missed: the blob loss is the mean of about 0 and about 1,
    # where the plain Dice barely notices the small one
    target = torch.zeros(1, 1, 4, 8, 8)
    target[0, 0, 0:3, 0:4, 0:4] = 1
    target[0, 0, 3, 7, 7] = 1
    logits = torch.where(target > 0, 20.0, -20.0)
    logits[0, 0, 3, 7, 7] = -20.0
    assert BlobDiceLoss()(logits, target).item() == pytest.approx(0.5, abs=1e-4)
    assert DiceLoss()(logits, target).item() == pytest.approx(1 - 96 / 97, abs=1e-4)
    # a false-positive speck far from both lesions enters both blobs' denominators
    logits[0, 0, 3, 0, 7] = 20.0
    big = 1 - 96 / 97.0
    assert BlobDiceLoss()(logits, target).item() == pytest.approx((big + 1.0) / 2, abs=1e-4)
    # diagonal neighbours are one blob (full connectivity)
    diagonal = torch.zeros(1, 1, 2, 2, 2)
    diagonal[0, 0, 0, 0, 0] = diagonal[0, 0, 1, 1, 1] = 1
    from hiennu.losses.blob import blob_labels
    assert blob_labels(diagonal)[1] == [1]


def test_blob_dice_is_zero_without_a_lesion_and_per_sample():
    from hiennu.losses import BlobDiceLoss
    logits = torch.full((2, 1, 1, 2, 3), L3, requires_grad=True)
    target = torch.zeros(2, 1, 1, 2, 3)
    target[1, 0, 0, 0, 0] = 1
    values = BlobDiceLoss(reduction="none")(logits, target)
    assert values[0].item() == 0.0 and values[1].item() > 0.5
    values.sum().backward()
    assert logits.grad[0].abs().sum().item() == 0.0 and logits.grad[1].abs().sum().item() > 0.0


def test_blob_dice_focal_is_its_weighted_parts_and_keeps_the_blob_term_per_sample_in_batch_mode():
    from hiennu.losses import BlobDiceFocalLoss, BlobDiceLoss
    from hiennu.losses.base import use_batch_reduction
    logits, target = _batch()
    expected = 2 * DiceFocalLoss()(logits, target) + BlobDiceLoss()(logits, target)
    assert BlobDiceFocalLoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    loss = BlobDiceFocalLoss()
    assert use_batch_reduction(loss) == ["DiceFocalLoss"]
    batch_focal = DiceFocalLoss()
    use_batch_reduction(batch_focal)
    assert loss(logits, target).item() == pytest.approx(
        (2 * batch_focal(logits, target) + BlobDiceLoss()(logits, target)).item(), rel=1e-6)
    with pytest.raises(HiennuError, match="batch_dice"):
        use_batch_reduction(BlobDiceLoss())
