"""Is a finished fold the one asked for? Comparing a fold's record with the request.

A finished fold (``checkpoint_final.pth``) is reused by the loss study (:mod:`hiennu.study.loss_study`) and by
``hiennu_train_default_model`` (:mod:`hiennu.pipeline.default_model`) only when what it recorded matches what
would be trained now:

- ``trainer``: the trainer class (``debug.json`` and the checkpoint's ``trainer_name``);
- ``configuration.*``: the plans configuration it was trained with (the checkpoint's
  ``configuration``, else ``debug.json``'s), compared as the predictor does, without the
  informative fields (notes, round-trip ceilings), ``inference_window`` (the final weights do not depend on it;
  a validation predicted with another window is stale and validated again,
  :func:`hiennu.training.native_validation.validation_is_current`) and the training section, which is compared
  next;
- ``training.*``: the effective training plan (plans' schedule with the options applied: epochs,
  patience, batch size, learning rate, iterations per epoch, optimizer settings), except
  ``num_workers``, which does not change the result;
- ``seed``, ``hiennu_version`` and ``val_cases`` (the fold's held-out cases, from the splits).

A fold continued with ``hiennu_train --c`` keeps the record of its start in ``debug.json`` and one ``resumed`` entry
per continuation; each continuation is compared too (``"FIELD: continued (TIME) with X, requested Y"``), so a
fold trained partly under other options is never taken for either recipe.

:func:`recorded_differences` lists each differing field as ``"FIELD: trained with X, requested Y"``;
:func:`move_fold_aside` renames a fold folder to ``fold_K.replaced-YYYYmmdd-HHMMSS`` (never deletes it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import hiennu
from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json
from hiennu.io.checkpoint import FINAL, load_checkpoint
from hiennu.plans import INFORMATIVE_FIELDS, TRAINING_ONLY_FIELDS, TrainingPlan, configuration_differences

DEBUG_FILE = "debug.json"
NOT_RESULT_CHANGING = ("num_workers",)
# what a record written before a training field existed was trained with: that field's default
TRAINING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainingPlan) if f.default is not dataclasses.MISSING}


def requested_record(trainer: Any) -> dict[str, Any]:
    """What a fold trained now records: ``trainer`` is its :class:`~hiennu.training.fold_layout.FoldLayout`
    (or a constructed :class:`~hiennu.training.trainer.Trainer`)."""
    training = {k: v for k, v in dataclasses.asdict(trainer.training).items() if k not in NOT_RESULT_CHANGING}
    return {"trainer": trainer.trainer_name, "training": training, "seed": trainer.options.seed,
            "hiennu_version": hiennu.__version__, "val_cases": list(trainer.val_cases)}


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, list) or len(value) <= 6 else f"[{len(value)} items]"


def recorded_differences(fold_dir: Path, trainer: Any) -> list[str]:
    """Fields where the finished fold in ``fold_dir`` differs from what ``trainer`` would train; [] when it matches.

    A fold without ``debug.json`` (or with an unreadable one) cannot be checked and is reported as
    differing, naming the file.
    """
    fold_dir = Path(fold_dir)
    debug_path = fold_dir / DEBUG_FILE
    try:
        debug = read_json(debug_path)
    except (OSError, ValueError):
        debug = None
    if not isinstance(debug, dict):
        return [f"{debug_path}: missing or unreadable, so what this fold was trained with is unknown"]
    state: dict[str, Any] = {}
    final = fold_dir / FINAL
    if final.is_file():
        try:
            state = load_checkpoint(final)
        except HiennuError as e:
            return [f"{final}: cannot be read ({e})"]
    want = requested_record(trainer)
    diffs: list[str] = []
    trained_as = state.get("trainer_name", debug.get("trainer"))
    if trained_as != want["trainer"]:
        diffs.append(f"trainer: trained with {_show(trained_as)}, requested {_show(want['trainer'])}")
    recorded_config = state.get("configuration", debug.get("configuration"))
    if recorded_config is None:
        diffs.append("configuration: not recorded in the checkpoint or debug.json")
    else:
        diffs += [f"configuration.{d}".replace(", now ", ", requested ")
                  for d in configuration_differences(recorded_config, trainer.config,
                                                     ignore=INFORMATIVE_FIELDS + TRAINING_ONLY_FIELDS
                                                     + ("inference_window",))]
    recorded_training = {**TRAINING_DEFAULTS, **(debug.get("effective_training_plan") or {})}
    for key, value in want["training"].items():
        if recorded_training.get(key) != value:
            diffs.append(f"training.{key}: trained with {_show(recorded_training.get(key))}, requested {_show(value)}")
    for key, recorded in (("seed", debug.get("seed")), ("hiennu_version", debug.get("hiennu_version")),
                          ("val_cases", debug.get("val_cases"))):
        if recorded != want[key]:
            diffs.append(f"{key}: trained with {_show(recorded)}, requested {_show(want[key])}")
    for entry in debug.get("resumed") or []:  # each --c continuation (trainer.py) trained part of the fold too
        if not isinstance(entry, dict):
            continue
        when = entry.get("at", "?")
        continued = {**TRAINING_DEFAULTS, **(entry.get("effective_training_plan") or {})}
        for key, value in want["training"].items():
            if continued.get(key) != value:
                diffs.append(f"training.{key}: continued ({when}) with {_show(continued.get(key))}, requested "
                             f"{_show(value)}")
        seed = (entry.get("options") or {}).get("seed")
        if seed != want["seed"]:
            diffs.append(f"seed: continued ({when}) with {_show(seed)}, requested {_show(want['seed'])}")
    return diffs


def move_fold_aside(fold_dir: Path) -> Path:
    """Rename ``fold_dir`` to ``fold_K.replaced-YYYYmmdd-HHMMSS`` (``-2``, ``-3`` ... if taken); return the new path.
    Any file or folder can be set aside so (the default path also sets aside a model's outdated
    ``postprocessing.json``)."""
    fold_dir = Path(fold_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = fold_dir.with_name(f"{fold_dir.name}.replaced-{stamp}")
    n = 2
    while target.exists():
        target = fold_dir.with_name(f"{fold_dir.name}.replaced-{stamp}-{n}")
        n += 1
    os.replace(fold_dir, target)
    return target
