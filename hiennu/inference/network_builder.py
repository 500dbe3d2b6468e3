"""Which function builds a trained fold's network at prediction: the plans' U-Net, or its trainer's own.

A trainer changes its network by overriding the class method ``Trainer.network_for(configuration)``
(:mod:`hiennu.training.trainer`); its checkpoints then record the trainer as ``network_builder``
(``"module:QualName"``), and validation, ``hiennu_predict``, exported zips and ensembles build every fold's network
with that method, as nnU-Net's predictor builds the network with the trainer's ``build_network_architecture``.
Checkpoints without the entry (every built-in trainer) get :func:`hiennu.networks.unet.build_network` from the
plans, and nothing is imported.

Why not always the plans: a network other than the plans' then failed to load its weights at validation ("were
the plans edited?"), or, when it had the same weights but another behaviour (a rule-prior threshold), was scored
silently as a network that was never trained. The trainer is imported by name only here, with :mod:`importlib`,
so prediction needs no part of ``hiennu.training``.
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping

from torch import nn

from hiennu.errors import HiennuError
from hiennu.networks.unet import build_network
from hiennu.plans import Configuration

NETWORK_BUILDER_KEY = "network_builder"

NetworkFactory = Callable[[Configuration], nn.Module]


def plans_network(configuration: Configuration) -> nn.Module:
    """The plans' U-Net of ``configuration`` (what every built-in trainer trains)."""
    return build_network(configuration.network)


def agreed_builder(builders: Mapping[str, object], where: str) -> str | None:
    """The ``network_builder`` every fold's checkpoint names (fold -> the entry, None where it has none), or None for
    the plans' network; folds that name different builders are one error naming ``where``."""
    names = set(builders.values())
    if len(names) > 1:
        raise HiennuError(f"{where}: its folds were trained with different networks ("
                          + ", ".join(f"fold {f}: {b or 'the plans'}" for f, b in builders.items())
                          + "); predict with the folds of one trainer (-f)")
    name = names.pop() if names else None
    if name is not None and (not isinstance(name, str) or ":" not in name):
        raise HiennuError(f"{where}: its checkpoints name the network builder {name!r}, not MODULE:CLASS")
    return name


def network_factory(name: str | None, where: str) -> NetworkFactory:
    """The function that builds the network of folds whose checkpoints name the builder ``name``
    (:func:`agreed_builder`): that trainer class's ``network_for``, else :func:`plans_network`. A builder that cannot
    be imported is one error naming ``where``."""
    if name is None:
        return plans_network
    module_name, _, qualname = name.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as e:
        raise HiennuError(f"{where}: trained by {name}, whose network_for builds its network; the module "
                          f"{module_name!r} cannot be imported ({e}): put its folder on PYTHONPATH or install it to "
                          f"predict with this model") from None
    for part in qualname.split("."):
        target = getattr(target, part, None)
    build = getattr(target, "network_for", None)
    if not callable(build):
        raise HiennuError(f"{where}: trained by {name}, which the module no longer defines with a network_for; "
                          f"restore the trainer the model was trained with")
    return build
