"""What the user chose for one training on top of the plans: :class:`TrainingOptions`.

One field per option. The command-line flag of each field is declared once, in
:mod:`hiennu.cli._training` (``dest`` = the field's name), and
:meth:`TrainingOptions.from_args` fills the fields from the parsed arguments, so a new option is
one field here plus one argument there; ``hiennu_train`` and ``hiennu_loss_study`` both take it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from hiennu.errors import HiennuError
from hiennu.io.checkpoint import DEFAULT_CHECKPOINT_CHOICE, FINAL as FINAL_CHECKPOINT, checkpoint_file
from hiennu.plans import PLANS_NAME

NUM_FOLDS = 5


@dataclass
class TrainingOptions:
    """What the user chose on top of the plans; ``None`` takes the plans' value.

    fold: 0-4, or ``"all"`` (train on every case; validation then runs on the training cases and
    the native-geometry validation is skipped). device: ``cpu``, ``cuda``, ``mps`` or None (best
    available). num_gpus: processes for data-parallel training (``--num-gpus``; on CPU, gloo
    processes). val_every: validate every this many epochs (and always at the last epoch).
    plans_name: the plans identifier (``-p``): plans from ``NAME.json`` (``plans.json`` for the
    default), model folder ``TRAINER__NAME__CONFIG``.
    validation_checkpoint: the checkpoint that predicts the fold's validation cases at the end
    (``"final"``, the default as in nnU-Net, or ``"best"``, which was chosen on those same cases;
    :func:`hiennu.io.checkpoint.checkpoint_file`). validation_only: do not train; re-run only the
    final validation of a finished fold (``--val``, as nnU-Net's).
    split_seed: the seed of the folds: None reads ``splits_final.json``; another seed reads
    ``splits_seed{S}.json`` (:func:`hiennu.paths.splits_file_name`) and trains into
    ``split_seed_{S}/TRAINER__PLANS__CONFIG`` beside the default model folder, so its folds never mix
    with those of the default split.
    cpu_threads: torch's intra-op threads on a CPU (``--cpu-threads``; None: torch's default, one per core).
    save_probabilities: the final validation also keeps each case's sigmoid probabilities in native geometry
    as ``fold_K/validation/CASE.npz`` (``--npz``, nnU-Net's), which ``hiennu_find_best_configuration``
    averages to score ensembles of configurations.
    time_budget_minutes: the training loop's wall-clock budget (``--time-budget``, minutes), overriding the
    plans' ``training.time_budget_minutes`` (:class:`hiennu.plans.TrainingPlan`).
    """

    dataset: str
    configuration: str | None = None
    fold: int | str = 0
    epochs: int | None = None
    patience: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    iterations_per_epoch: int | None = None
    num_workers: int | None = None
    device: str | None = None
    num_gpus: int = 1
    compile: bool = False
    resume: bool = False
    seed: int = 12345
    val_every: int = 1
    final_validation: bool = True
    plans_name: str = PLANS_NAME
    cpu_bf16: bool | None = None
    validation_checkpoint: str = DEFAULT_CHECKPOINT_CHOICE
    validation_only: bool = False
    split_seed: int | None = None
    cpu_threads: int | None = None
    save_probabilities: bool = False
    time_budget_minutes: float | None = None

    def __post_init__(self) -> None:
        self.fold = parse_fold(self.fold)
        checkpoint_file(self.validation_checkpoint)  # a clear error for anything but final, best or a file name
        if self.validation_only and (self.fold == "all" or not self.final_validation):
            raise HiennuError("--val re-runs the final validation of a fold 0-4; it cannot be combined with fold "
                              "'all' (no held-out cases) or --no-final-validation")
        if self.save_probabilities and (self.fold == "all" or not self.final_validation):
            raise HiennuError("--npz keeps the probabilities of the final validation of a fold 0-4; it cannot be "
                              "combined with fold 'all' (no held-out cases) or --no-final-validation")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or not 0 <= self.seed < 2 ** 32:
            raise HiennuError(f"--seed must be a whole number 0 <= seed < 2^32 (numpy's seeds), got {self.seed!r}")
        if self.split_seed is not None and (isinstance(self.split_seed, bool) or int(self.split_seed) != self.split_seed
                                            or self.split_seed < 0):
            raise HiennuError(f"--split-seed must be a whole number >= 0, got {self.split_seed!r}")
        for name in ("epochs", "patience", "batch_size", "iterations_per_epoch", "cpu_threads"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise HiennuError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}")
        if self.learning_rate is not None and not 0 < self.learning_rate < math.inf:
            raise HiennuError(f"--lr must be a finite positive number, got {self.learning_rate}")
        if self.time_budget_minutes is not None and not self.time_budget_minutes > 0:
            raise HiennuError(f"--time-budget must be a positive number of minutes, got {self.time_budget_minutes}")
        if self.num_workers is not None and (int(self.num_workers) != self.num_workers or self.num_workers < 0):
            raise HiennuError(f"--num-workers must be a whole number >= 0 (0: load in this process), got "
                              f"{self.num_workers}")
        for flag, value in (("--num-gpus", self.num_gpus), ("--val-every", self.val_every)):
            if value < 1:
                raise HiennuError(f"{flag} must be at least 1, got {value}")
        if self.validation_checkpoint_file != FINAL_CHECKPOINT and not self.final_validation:
            raise HiennuError(f"--checkpoint {self.validation_checkpoint} chooses the checkpoint of the final "
                              f"validation; it has no effect with --no-final-validation: leave one of them out")

    @property
    def validation_checkpoint_file(self) -> str:
        """The file name of :attr:`validation_checkpoint` (``checkpoint_final.pth`` by default)."""
        return checkpoint_file(self.validation_checkpoint)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **values: Any) -> "TrainingOptions":
        """The options of parsed command-line arguments: each field from the argument of its name,
        unless given in ``values``; a field the command has no argument for keeps its default."""
        for f in dataclasses.fields(cls):
            if f.name not in values and hasattr(args, f.name):
                values[f.name] = getattr(args, f.name)
        return cls(**values)


def parse_fold(fold: int | str) -> int | str:
    """``0``-``4`` (int or digit string) or ``"all"``; anything else raises HiennuError."""
    if isinstance(fold, str) and fold.strip().lower() == "all":
        return "all"
    try:
        value = int(fold)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value < NUM_FOLDS:
        raise HiennuError(f"fold must be 0-{NUM_FOLDS - 1} or 'all', got {fold!r}")
    return value
