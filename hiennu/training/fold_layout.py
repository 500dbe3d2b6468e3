"""Where a fold's training reads and writes, and which cases it trains and validates on.

:func:`fold_layout` answers from the plans and ``splits_final.json`` (``splits_seed{S}.json`` with
``--split-seed``) alone (it neither builds a
network nor touches the preprocessed arrays), so the launcher and the loss study learn a fold's
output folder and validation cases without building a trainer; the
:class:`~hiennu.training.trainer.Trainer` starts from the same record.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file
from hiennu.io.checkpoint import FINAL
from hiennu.paths import (model_dir_name, plans_file_name, preprocessed_data_name, preprocessed_root,
                          resolve_dataset, results_root, split_seed_folder, splits_file_name)
from hiennu.plans import PLANS_NAME, Configuration, Plans, TrainingPlan, load_plans, preprocessing_hash
from hiennu.training.options import TrainingOptions

EARLY_STOPPING_METRICS = ("val_dice", "ema_val_dice")


@dataclass(frozen=True)
class FoldLayout:
    """One fold of one trainer: its plans, effective training values, cases and folders.

    training: the configuration's training plan with the options' overrides applied.
    iterations_per_epoch: the plan's value, else one pass over the training cases.
    """

    trainer_name: str
    options: TrainingOptions
    dataset_name: str
    preprocessed_dir: Path
    plans: Plans
    config: Configuration
    training: TrainingPlan
    case_dir: Path
    train_cases: list[str]
    val_cases: list[str]
    model_dir: Path
    fold_dir: Path
    iterations_per_epoch: int

    @property
    def trains(self) -> bool:
        """Whether this run trains: not ``--val``, nor ``--continue`` of a finished fold (``checkpoint_final.pth``),
        which are validated from the raw images with the fold's own plans and checkpoint, so the preprocessed cases,
        the current plans and the raw validation cases before training do not concern them."""
        return not (self.options.validation_only or self.options.resume and (self.fold_dir / FINAL).is_file())

    def check_preprocessed_cases(self) -> None:
        """Raise HiennuError naming the cases of the split whose preprocessed files are missing, or were written
        under other plans than these (:func:`hiennu.plans.preprocessing_hash`, which hiennu's preprocessing records
        in each ``CASE.json``, written last; a ``CASE.json`` written by other tools has no record and passes):
        an interrupted re-preprocessing after an edit of the plans leaves some cases of each, and a fold trained
        on such a mix of normalizations would say nothing."""
        rerun = (f"preprocess them with the plans as they are: hiennu_plan_and_preprocess -d {self.dataset_name} "
                 f"-c {self.config.name}{'' if self.plans.plans_name == PLANS_NAME else ' -p ' + self.plans.plans_name}"
                 f" --keep-plans (without --keep-plans it plans anew and replaces the plans file, edits included)")
        cases = self.train_cases + self.val_cases
        missing = [c for c in cases if not (self.case_dir / f"{c}.npy").is_file()
                   or not (self.case_dir / f"{c}.json").is_file()]
        if missing:
            raise HiennuError(f"{self.case_dir}: preprocessed files missing for case(s) {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''}; {rerun}")
        expected = preprocessing_hash(self.config)

        def recorded(case: str) -> object:
            props = read_json_file(self.case_dir / f"{case}.json", rerun, rerun)
            signature = props.get("source_signature") if isinstance(props, dict) else None
            return signature.get("configuration") if isinstance(signature, dict) else None

        stale = [c for c in cases if recorded(c) not in (None, expected)]  # None: not written by hiennu, no record
        if stale:
            raise HiennuError(f"{self.case_dir}: {len(stale)} of {len(cases)} case(s) ({', '.join(stale[:5])}"
                              f"{' ...' if len(stale) > 5 else ''}) were preprocessed under other plans than "
                              f"{self.plans.plans_name}'s {self.config.name} (an interrupted or older "
                              f"preprocessing); {rerun}")


def fold_layout(trainer_name: str, options: TrainingOptions) -> FoldLayout:
    """The :class:`FoldLayout` of ``options``' fold trained by the trainer class called ``trainer_name``."""
    dataset_name = resolve_dataset(options.dataset)
    preprocessed_dir = preprocessed_root() / dataset_name
    plans = load_plans(preprocessed_dir / plans_file_name(options.plans_name))
    if plans.plans_name != options.plans_name:  # a copied plans file: its file name is its identity
        plans = dataclasses.replace(plans, plans_name=options.plans_name)
    config = plans.configuration(options.configuration)
    training = effective_training_plan(config, options)
    train_cases, val_cases = split_cases(preprocessed_dir, dataset_name, options.fold, options.split_seed)
    model_dir = model_folder(dataset_name, model_dir_name(trainer_name, plans.plans_name, config.name),
                             options.split_seed)
    return FoldLayout(
        trainer_name=trainer_name, options=options, dataset_name=dataset_name, preprocessed_dir=preprocessed_dir,
        plans=plans, config=config, training=training,
        case_dir=preprocessed_dir / preprocessed_data_name(options.plans_name, config.name),
        train_cases=train_cases, val_cases=val_cases, model_dir=model_dir, fold_dir=model_dir / f"fold_{options.fold}",
        iterations_per_epoch=training.iterations_per_epoch or math.ceil(len(train_cases) / training.batch_size))


def effective_training_plan(config: Configuration, options: TrainingOptions) -> TrainingPlan:
    """The configuration's training plan with the options that override it (those not None)."""
    o = options
    overrides = {"max_epochs": o.epochs, "patience": o.patience, "batch_size": o.batch_size,
                 "learning_rate": o.learning_rate, "iterations_per_epoch": o.iterations_per_epoch,
                 "num_workers": o.num_workers, "cpu_bf16": o.cpu_bf16, "time_budget_minutes": o.time_budget_minutes}
    plan = dataclasses.replace(config.training, **{k: v for k, v in overrides.items() if v is not None})
    if plan.early_stopping_metric not in EARLY_STOPPING_METRICS:
        raise HiennuError(f"plans: early_stopping_metric {plan.early_stopping_metric!r} is not one of "
                          f"'val_dice', 'ema_val_dice'")
    return plan


def model_folder(dataset_name: str, model_dir: str, split_seed: int | None = None) -> Path:
    """``$hiennu_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG``; with a split seed,
    ``$hiennu_results/DatasetNNN_Name/split_seed_{S}/TRAINER__PLANS__CONFIG``."""
    base = results_root() / dataset_name
    return (base if split_seed is None else base / split_seed_folder(split_seed)) / model_dir


def finished_validations(model_dir: Path) -> dict[int, list[dict]]:
    """Per-case rows of every fold of ``model_dir`` (a ``TRAINER__PLANS__CONFIG`` folder) whose final validation
    wrote its table, ``fold_K/validation/summary_per_case.csv`` (native geometry, no post-processing), by fold."""
    from hiennu.evaluation.evaluate import read_per_case_csv
    from hiennu.training.options import NUM_FOLDS

    tables = {k: Path(model_dir) / f"fold_{k}" / "validation" / "summary_per_case.csv" for k in range(NUM_FOLDS)}
    return {k: read_per_case_csv(table) for k, table in tables.items() if table.is_file()}


def split_cases(preprocessed_dir: Path, dataset_name: str, fold: int | str,
                split_seed: int | None = None) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of ``fold`` from ``splits_final.json`` (``splits_seed{S}.json``
    with a split seed); fold ``all``: every case, twice."""
    path = preprocessed_dir / splits_file_name(split_seed)
    how = (f"run hiennu_plan_and_preprocess -d {dataset_name} first" if split_seed is None else
           f"write it with hiennu_train/hiennu_loss_study --split-seed {split_seed} (it is made from "
           f"dataset_fingerprint.json)")
    redo = ("delete it and re-run hiennu_plan_and_preprocess" if split_seed is None else
            f"delete it and run again with --split-seed {split_seed}")
    splits = read_json_file(path, how, redo)
    if not (isinstance(splits, list) and all(isinstance(s, dict) and "train" in s and "val" in s for s in splits)):
        raise HiennuError(f"{path}: must be a list of {{\"train\": [...], \"val\": [...]}} entries")
    if fold == "all":
        cases = sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
        return cases, cases
    if fold >= len(splits):
        raise HiennuError(f"{path}: has {len(splits)} folds, fold {fold} does not exist")
    return list(splits[fold]["train"]), list(splits[fold]["val"])


def check_batch_split(batch_size: int, world_size: int) -> None:
    """Refuse a global batch that ``world_size`` processes cannot share evenly."""
    if batch_size % world_size:
        raise HiennuError(f"batch size {batch_size} cannot be split evenly over {world_size} processes; "
                          f"choose --batch-size as a multiple of --num-gpus")
