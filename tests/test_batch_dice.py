"""nnU-Net's batch Dice (``training.batch_dice``): the region terms sum over the whole batch."""

import pytest
import torch

from hiennu.errors import HiennuError
from hiennu.losses.base import use_batch_reduction
from hiennu.losses.compound import DiceFocalLoss, TverskyHDTLoss
from hiennu.losses.dice import DiceLoss
from hiennu.losses.hausdorff import HausdorffDTLoss
from hiennu.plans import TrainingPlan


def test_batch_dice_by_hand():
    # two one-voxel-wide samples: sample 0 predicts its lesion, sample 1 is lesion-free and predicts one voxel
    big = 30.0
    logits = torch.full((2, 1, 1, 1, 4), -big)
    target = torch.zeros_like(logits)
    logits[0, 0, 0, 0, :2] = big
    target[0, 0, 0, 0, :2] = 1
    logits[1, 0, 0, 0, 0] = big
    per_sample = DiceLoss(reduction="none")(logits, target)
    assert float(per_sample[0]) == pytest.approx(0.0, abs=1e-4)
    assert float(per_sample[1]) == pytest.approx(1.0, abs=1e-4)
    loss = DiceLoss(reduction="none")
    assert use_batch_reduction(loss) == ["DiceLoss"]
    batch = loss(logits, target)
    # over the batch: intersection 2, predicted 3, reference 2 -> 1 - 4/5
    assert batch.shape == (1,)
    assert float(batch[0]) == pytest.approx(1 - 4 / 5, abs=1e-5)


def test_batch_mode_equals_one_sample_made_of_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 2, 5, 5)
    target = (torch.rand(3, 1, 2, 5, 5) > 0.7).float()
    loss = DiceFocalLoss()
    use_batch_reduction(loss)
    joined = DiceFocalLoss()(logits.permute(1, 0, 2, 3, 4).reshape(1, 1, 6, 5, 5),
                             target.permute(1, 0, 2, 3, 4).reshape(1, 1, 6, 5, 5))
    assert float(loss(logits, target)) == pytest.approx(float(joined), rel=1e-6)


def test_compound_loss_keeps_its_distance_term_per_sample():
    loss = TverskyHDTLoss()
    assert use_batch_reduction(loss) == ["TverskyLoss"]
    assert loss.region.batch and not loss.log_hdt.batch


def test_distance_loss_alone_refuses_batch_mode():
    with pytest.raises(HiennuError, match="batch_dice"):
        use_batch_reduction(HausdorffDTLoss())


def test_plans_default_is_per_sample():
    assert TrainingPlan().batch_dice is False


def test_the_trainer_switches_batch_dice_on_from_the_plans(hiennu_roots):
    from hiennu.plans import load_plans, save_plans
    from hiennu.training.trainers import TrainerDiceFocal
    from helpers import DATASET, make_tiny_dataset, options
    make_tiny_dataset(hiennu_roots["hiennu_preprocessed"], dropout=0.0)
    assert not TrainerDiceFocal(options(epochs=1)).loss.batch
    path = hiennu_roots["hiennu_preprocessed"] / DATASET / "plans.json"
    plans = load_plans(path)
    plans.configuration().training.batch_dice = True
    save_plans(plans, path)
    assert TrainerDiceFocal(options(epochs=1)).loss.batch
