"""Refusing to predict with a fold whose plans changed after it was trained.

Every checkpoint records the configuration it was trained with (``state["configuration"]``, the
JSON form of :class:`~hiennu.plans.Configuration`). Before a fold predicts, that record is
compared with the configuration of the plans being loaded; any difference in what the network
sees or does (grid, normalization, network, augmentation's mirror axes, interpolation,
post-processing) is refused, naming the field. Training-only fields (``training``) and
informative ones (notes, round-trip ceilings, grid policy) are not compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiennu.errors import HiennuError
from hiennu.plans import (PREDICTOR_IGNORED_FIELDS, Configuration,
                          configuration_differences)


class TrainedConfigurationError(HiennuError):
    """A fold's recorded configuration differs from the plans it would predict with."""


def check_trained_configuration(state: dict[str, Any], configuration: Configuration, checkpoint: str,
                                plans_file: str | Path, fold_plans: Path | None = None) -> None:
    """Raise :class:`TrainedConfigurationError` when ``state``'s recorded configuration differs from ``configuration``.

    checkpoint: the checkpoint's name for the message; plans_file: where ``configuration`` came
    from; fold_plans: the fold's own ``plans.json`` (the plans it was trained with), named in the
    message when it exists. Checkpoints without a record (written by other tools) pass.
    """
    recorded = state.get("configuration")
    if not isinstance(recorded, dict):
        return
    diffs = configuration_differences(recorded, configuration, ignore=PREDICTOR_IGNORED_FIELDS)
    if not diffs:
        return
    restore = (f"put back the plans it was trained with ({fold_plans}) as {plans_file}, "
               if fold_plans is not None and fold_plans.is_file() else "put back the plans it was trained with, ")
    raise TrainedConfigurationError(
        f"{checkpoint}: trained with other plans than {plans_file} holds now ({'; '.join(diffs)}); predicting "
        f"with these plans would give wrong masks. Either {restore}leave this fold out (-f), or retrain it")
