"""The built-in trainers, one per loss, made from the loss registry; and trainer lookup by name.

``Trainer<NAME>`` trains with the loss ``LOSSES[TRAINER_LOSSES[NAME]]`` of :mod:`hiennu.losses`
and changes nothing else (its ``build_loss`` builds that loss with its defaults): TrainerDice,
TrainerDiceFocal, TrainerTversky, TrainerHDT, TrainerDiceFocalHDT, TrainerTverskyHDT (the paper's
best; these six are the loss study's), and TrainerBlobDiceFocal (the blob loss, beyond the paper). A new loss
is its module in ``hiennu/losses/`` and its line in ``LOSSES``: its trainer ``Trainer<NAME>`` follows (unless
it is listed in :data:`COMPONENT_LOSSES`).

A trainer that changes more than the loss is a subclass of :class:`hiennu.training.trainer.Trainer`
written out, here or in a module of the user's own, named on the command line as
``--trainer-module my_module MyTrainer`` or ``my_module:MyTrainer`` (the module must be importable,
e.g. on ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib

from hiennu.errors import HiennuError
from hiennu.losses import LOSSES
from hiennu.training.trainer import Trainer

#: Losses of :data:`hiennu.losses.LOSSES` that are parts of compound losses, not trained alone.
COMPONENT_LOSSES = ("Focal", "LogHausdorffDT", "BlobDice")
#: Trainer names that are not their loss's name: the paper calls the HausdorffDT trainer "HDT".
TRAINER_NAMES = {"HausdorffDT": "HDT"}


def trainer_losses(losses: dict) -> dict[str, str]:
    """``NAME`` of ``Trainer<NAME>`` -> loss name, for every loss of ``losses`` but :data:`COMPONENT_LOSSES`."""
    return {TRAINER_NAMES.get(loss, loss): loss for loss in losses if loss not in COMPONENT_LOSSES}


#: Built-in trainers: ``Trainer<NAME>`` -> the name of its loss; one per registered loss, in registry order.
TRAINER_LOSSES = trainer_losses(LOSSES)


def loss_trainer(name: str, loss_name: str) -> type[Trainer]:
    """A trainer class called ``name`` that trains with ``LOSSES[loss_name]`` (built with its defaults)."""
    loss_class = LOSSES[loss_name]

    def build_loss(self):
        return loss_class()

    summary = next(iter((loss_class.__doc__ or "").strip().splitlines()), loss_name)
    doc = f"Trains with :class:`~hiennu.losses.{loss_class.__name__}`: {summary}"
    return type(name, (Trainer,), {"build_loss": build_loss, "__doc__": doc, "__module__": __name__,
                                   "__qualname__": name})


BUILTIN_TRAINERS: dict[str, type[Trainer]] = {
    f"Trainer{short}": loss_trainer(f"Trainer{short}", loss) for short, loss in TRAINER_LOSSES.items()}
globals().update(BUILTIN_TRAINERS)  # importable by name: from hiennu.training.trainers import TrainerTverskyHDT
__all__ = ["BUILTIN_TRAINERS", "COMPONENT_LOSSES", "TRAINER_LOSSES", "TRAINER_NAMES", "get_trainer_class",
           "loss_trainer", "trainer_losses", *BUILTIN_TRAINERS]


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
