"""One trainer per loss (each overrides only ``build_loss``) and trainer lookup by name.

Built in: TrainerDice, TrainerDiceFocal, TrainerTversky, TrainerHDT, TrainerDiceFocalHDT,
TrainerTverskyHDT (the paper's best). A user's own trainer is a subclass of
:class:`hiennu.training.trainer.Trainer` in a module of their own, named on the command line as
``--trainer-module my_module MyTrainer`` or ``my_module:MyTrainer`` (the module must be importable,
e.g. on ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib

from hiennu.errors import HiennuError
from hiennu.losses import (DiceFocalHDTLoss, DiceFocalLoss, DiceLoss, HausdorffDTLoss, TverskyHDTLoss,
                           TverskyLoss)
from hiennu.training.trainer import Trainer


class TrainerDice(Trainer):
    """Soft Dice loss."""

    def build_loss(self):
        return DiceLoss()


class TrainerDiceFocal(Trainer):
    """Dice + focal loss (gamma 2), equal weights."""

    def build_loss(self):
        return DiceFocalLoss()


class TrainerTversky(Trainer):
    """Tversky loss, alpha 0.3 (false positives), beta 0.7 (false negatives)."""

    def build_loss(self):
        return TverskyLoss()


class TrainerHDT(Trainer):
    """Hausdorff distance-transform loss (Karimi et al. 2019)."""

    def build_loss(self):
        return HausdorffDTLoss()


class TrainerDiceFocalHDT(Trainer):
    """0.9 DiceFocal + 0.1 log(HausdorffDT + 1)."""

    def build_loss(self):
        return DiceFocalHDTLoss()


class TrainerTverskyHDT(Trainer):
    """0.9 Tversky + 0.1 log(HausdorffDT + 1): the paper's loss."""

    def build_loss(self):
        return TverskyHDTLoss()


BUILTIN_TRAINERS: dict[str, type[Trainer]] = {c.__name__: c for c in (
    TrainerDice, TrainerDiceFocal, TrainerTversky, TrainerHDT, TrainerDiceFocalHDT, TrainerTverskyHDT)}


def get_trainer_class(name: str, module: str | None = None) -> type[Trainer]:
    """The trainer class called ``name``: built in, or ``module:Class`` / ``name`` in ``module``.

    An unknown name raises HiennuError listing the known trainers and how to add one.
    """
    if ":" in name:
        module, name = name.split(":", 1)
    how = ("to use your own, subclass hiennu.training.trainer.Trainer (override build_loss) in a module "
           "of yours and name it with --trainer-module MODULE or as MODULE:CLASS")
    if module is None:
        if name in BUILTIN_TRAINERS:
            return BUILTIN_TRAINERS[name]
        raise HiennuError(f"unknown trainer {name!r}; known trainers: {', '.join(BUILTIN_TRAINERS)}; {how}")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise HiennuError(f"trainer module {module!r} cannot be imported ({e}); put its folder on "
                          f"PYTHONPATH or install it") from None
    cls = getattr(mod, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        found = sorted(k for k, v in vars(mod).items()
                       if isinstance(v, type) and issubclass(v, Trainer) and not getattr(v, "__abstractmethods__", None))
        raise HiennuError(f"module {module!r} has no trainer class {name!r}; trainers in it: "
                          f"{', '.join(found) or 'none'}; built-in trainers: {', '.join(BUILTIN_TRAINERS)}")
    if getattr(cls, "__abstractmethods__", None):
        raise HiennuError(f"trainer {module}:{name} does not define build_loss(); {how}")
    return cls
