"""The built-in trainers, one per loss, made from the loss registry; and trainer lookup by name.

``Trainer<NAME>`` trains with the loss ``LOSSES[TRAINER_LOSSES[NAME]]`` of :mod:`hiennu.losses`
and changes nothing else (its ``build_loss`` builds that loss with its defaults): TrainerDice,
TrainerDiceFocal, TrainerTversky, TrainerHDT, TrainerDiceFocalHDT, TrainerTverskyHDT (the paper's
best; these six are the loss study's), and TrainerBlobDiceFocal (the blob loss, beyond the paper). A new loss
is its module in ``hiennu/losses/`` and its line in ``LOSSES``: its trainer ``Trainer<NAME>`` follows (unless
it is listed in :data:`COMPONENT_LOSSES`).

One built-in trainer changes the target instead of the loss: :class:`TrainerDiceFocalRuleComponents`
(TrainerDiceFocal trained on the rule's components that touch the reference, kept whole; see
:mod:`hiennu.training.rule_component_targets`).

A trainer that changes more than the loss is a subclass of :class:`hiennu.training.trainer.Trainer`
written out, here or in a module of the user's own, named on the command line as
``--trainer-module my_module MyTrainer`` or ``my_module:MyTrainer`` (the module must be importable,
e.g. on ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib

from hiennu.errors import HiennuError
from hiennu.io.channels import adc_zadc_channels
from hiennu.log import get_logger
from hiennu.losses import LOSSES
from hiennu.training.rule_component_targets import RuleComponentTargets, lesion_adc_quantile
from hiennu.training.trainer import Trainer, check_trainer_class

logger = get_logger(__name__)

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


class TrainerDiceFocalRuleComponents(BUILTIN_TRAINERS["TrainerDiceFocal"]):  # type: ignore[misc, valid-type]
    """TrainerDiceFocal whose target is the rule's components that touch the reference, each kept whole.

    The rule is the plans' ``network.rule_prior_channel < rule_prior_threshold`` (ZADC < -2 as the planner
    writes it); voxels above the fold's ADC cap (the 99.5th percentile of the ADC inside its training cases'
    lesions, the post-processing's cap) are dropped before the components are formed. So the network learns
    which of the rule's components are lesion, not their borders; validation and every score stay against
    the reference. Only the targets change (:meth:`build_training_targets`); see
    :mod:`hiennu.training.rule_component_targets`.
    """

    def build_training_targets(self) -> RuleComponentTargets:
        network = self.config.network
        channels = self.plans.channel_names
        if not 0 <= network.rule_prior_channel < len(channels):
            raise HiennuError(f"{self.trainer_name}: its targets are components of the rule on channel "
                              f"configurations.{self.config.name}.network.rule_prior_channel = "
                              f"{network.rule_prior_channel}, but the dataset has {len(channels)} channel(s) "
                              f"({', '.join(channels)}); set it to the ZADC channel's index in the plans")
        adc_channel, _ = adc_zadc_channels(channels)
        cap = None
        if adc_channel is None:
            logger.warning("%s: the dataset has no ADC channel, so its targets are the rule's components "
                           "without an ADC cap", self.trainer_name)
        else:
            cap = lesion_adc_quantile(self.case_dir, self.train_cases, adc_channel)
        logger.info("%s: targets are the components of %s < %g%s that touch the reference", self.trainer_name,
                    channels[network.rule_prior_channel], network.rule_prior_threshold,
                    "" if cap is None else f" with normalized ADC <= {cap:.4f} (the 99.5th percentile inside the "
                                           f"{len(self.train_cases)} training cases' lesions)")
        return RuleComponentTargets(network.rule_prior_channel, network.rule_prior_threshold, adc_channel,
                                    cap).fill(self.case_dir, self.train_cases)


BUILTIN_TRAINERS["TrainerDiceFocalRuleComponents"] = TrainerDiceFocalRuleComponents
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
    check_trainer_class(cls)
    return cls
