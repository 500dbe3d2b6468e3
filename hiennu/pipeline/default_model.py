"""The default model in one command (``hiennu_train_default_model -d BONBID``): plan, train, choose, export, install.

The README's path "Train the default model on BONBID", run end to end by the library functions its commands
call, so each step is what the command alone would do:

1. **Plan and preprocess** (:func:`~hiennu.pipeline.plan_and_preprocess.plan_and_preprocess`, what
   ``hiennu_plan_and_preprocess`` runs) the recipe's configurations, unless the plans and every case of them are
   already there (then they are reused, and the log says so; a configuration whose cases are missing is
   preprocessed with the existing plans).
2. **Train** every configuration of :data:`DEFAULT_RECIPE`, five folds each, with ``--npz``: each fold through
   :func:`hiennu.training.launch.train`, the code ``hiennu_train`` runs, with the step's overrides as
   ``--epochs``/``--patience`` would give them (so ``debug.json`` records them as it records ``hiennu_train
   --epochs``). Resumable: a finished fold whose validation kept its probabilities is skipped (no trainer is
   built); an interrupted one (``checkpoint_latest.pth``) is continued (``--continue``); a finished one whose
   validation lacks the probabilities, or was made with another checkpoint or sliding window than the model's
   plans now say (:func:`hiennu.training.native_validation.validation_problem`), is re-validated (``--continue
   --npz`` on a finished fold: nothing is trained, the final validation runs again and keeps them). A finished
   or interrupted fold whose record
   differs from the recipe (:func:`hiennu.training.fold_record.recorded_differences`: trainer, plans,
   epochs, patience, steps, seed, hiennu version, validation cases) is refused before anything is trained,
   or with ``retrain_mismatched`` moved aside (``fold_K.replaced-<timestamp>``) and trained again.
3. **Choose** by cross-validation among the recipe's configurations and their ensembles (with the one configuration
   of :data:`DEFAULT_RECIPE`, only its post-processing), each with the rule's components judged by its probabilities
   as post-processing, the rule ZADC < -2 as the reference
   (:func:`~hiennu.ensembling.best_configuration.find_best_configuration`, what ``hiennu_find_best_configuration
   -c ... --postprocessing-candidates judged-rule --nested-choice`` runs; :data:`DEFAULT_CHOICE` says why;
   ``--rule-candidate`` lets the rule compete), and estimate the whole choice fully nested: the last line of the
   log says what to expect on new cases (:func:`expectation_text`).
4. **Export** the chosen model, ensemble or rule folder to one zip (:func:`~hiennu.inference.model_zip.export_models`, what
   ``hiennu_export_model`` runs; default ``$hiennu_results/DatasetNNN_Name/default_model.zip``) and **install**
   it as the default model (:func:`~hiennu.inference.model_zip.install_model_zip`, ``hiennu_install_model
   --default``), so ``hiennu_predict -i in/ -o out/`` predicts with it.

Steps 3 and 4 are not redone for nothing (the choice takes 0.3-5 min on BONBID): ``default_model_state.json`` in the
dataset's results folder records what the last choice was made from (:func:`choice_inputs`: the size and
modification time of every fold's ``checkpoint_final.pth`` and validation files, each model folder's plans and
``dataset.json``, the split, the raw labels and images, the configurations, trainer, choice options and hiennu
version), the
files it wrote that export reads (``inference_information.json``, the chosen folder's ``postprocessing.json`` and
``members.json``), the zip exported from it and the default model installed from that zip. When none of these
changed, the choice in ``inference_information.json`` is reused, and the export and the install are skipped while
the zip and the default model are still the recorded ones; the log says so. Anything changed (a fold trained,
continued or re-validated, a file touched, ``inference_information.json`` rewritten by hand) makes the run choose
again, export and install; ``rechoose`` (``--rechoose``) always does.

One ETA covers the whole training (:class:`RecipeProgress`): the plan is logged first (configurations, folds,
steps per fold, what is reused), then after the first epoch of each configuration and after every fold trained,
continued or re-validated ``fold k of N done ..., X min elapsed, about Y min left`` (reused folds count in k but get
no line of their own). Folds are trained fold by fold, the cheaper configuration first
(:func:`training_order`). Bad input (unknown dataset, no raw dataset, a recipe fold trained otherwise, ``-o`` a
folder) is one :class:`~hiennu.errors.HiennuError` line with the fix, raised before anything is written; every
output of the steps is written atomically by the step itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hiennu import __version__
from hiennu.ensembling.best_configuration import BestConfiguration, FindBestOptions, find_best_configuration
from hiennu.ensembling.ensemble_cv import RULE
from hiennu.ensembling.inference_information import InferenceInformation, load_inference_information
from hiennu.ensembling.table import summary_number
from hiennu.errors import HiennuError
from hiennu.inference.model_registry import read_default_model
from hiennu.inference.model_zip import export_models, install_model_zip
from hiennu.io.atomic import read_json, write_json
from hiennu.io.checkpoint import BEST, FINAL, LATEST
from hiennu.log import get_logger
from hiennu.paths import (DATASET_FILE, DEFAULT_PLANS_NAME, ENSEMBLE_MEMBERS_FILE, INFERENCE_INFORMATION_FILE,
                          PLANS_FILE, POSTPROCESSING_FILE, PROGRESS_FILE, model_dir_name, plans_file_name,
                          preprocessed_data_name, preprocessed_root, raw_root, resolve_dataset, results_root,
                          splits_file_name)
from hiennu.pipeline.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess, training_cases
from hiennu.preprocessing.preprocessor import is_preprocessed
from hiennu.postprocessing.candidates import ALL_CANDIDATES, JUDGED_RULE, check_candidate_set
from hiennu.postprocessing.selection import record_windows, validation_windows
from hiennu.plans import load_plans
from hiennu.training.fold_layout import FoldLayout, fold_layout, split_cases
from hiennu.training.fold_record import move_fold_aside, recorded_differences
from hiennu.training.launch import train
from hiennu.training.native_validation import validation_is_current, validation_problem
from hiennu.training.options import NUM_FOLDS, TrainingOptions
from hiennu.training.trainers import get_trainer_class

log = get_logger(__name__)

DEFAULT_TRAINER = "TrainerDiceFocal"
DEFAULT_ZIP_NAME = "default_model.zip"
STATE_FILE = "default_model_state.json"  # in $hiennu_results/DatasetNNN_Name/: what the last choice, export, install
                                         # were made from (module docstring)


@dataclass(frozen=True)
class RecipeStep:
    """One configuration of the recipe: trained on five folds by ``trainer``; ``epochs``, ``patience`` and
    ``iterations_per_epoch`` override the plans' values as ``hiennu_train --epochs/--patience/
    --iterations-per-epoch`` do (None: the plans' value)."""

    configuration: str
    trainer: str = DEFAULT_TRAINER
    epochs: int | None = None
    patience: int | None = None
    iterations_per_epoch: int | None = None


# The recipe documentation/results.md measured (session 20, 2026-12-04, 2-core CPU): 3d_fullres is its recipe 4,
# `hiennu_loss_study -d BONBID --trainers TrainerDiceFocal --folds all --epochs 30 --patience 1000`: 30 epochs of
# the plans' 20 steps = 600 steps a fold, never stopped early (patience 1000 > 30 epochs; the same values, so folds
# trained by that command are reused here); TrainerDiceFocal, five folds, --npz.
# The plans' own 200 steps for 3d_fullres (a third of the cost, for CPUs without AVX-512) made a worse judge for
# judged-rule: nested 0.648 and 0.618 over two seeds against 0.652-0.662 at 600 (results.md, session 36); so did
# half the widths (8-64, a 2.2x faster float32 step): 0.625, the rule's level (session 37).
# Until 2026-12-08 the recipe also held the 2d on the plans' own schedule (on a CPU 20 epochs x 50 steps). It left by
# recipe 42 (results.md sessions 49-50, declared before it ran): over split seeds 5 and 6 the 3d_fullres alone with its
# nested post-processing scored above the whole choice among 2d, 3d_fullres and their ensemble estimated fully
# nested, by +0.035 and +0.022 Dice (the per-fold choice among the networks is unstable). The 2d and the ensembles
# stay available through the commands (hiennu_train -c 2d, hiennu_find_best_configuration -c 2d 3d_fullres).
DEFAULT_RECIPE: tuple[RecipeStep, ...] = (
    RecipeStep("3d_fullres", epochs=30, patience=1000),
)

# How the default path chooses (documentation/results.md, sessions 33-35): among the networks and their ensemble, each
# with one post-processing recipe against none, "judged-rule": the rule ZADC < -2's components after the ADC cap, each
# kept or dropped by the lesion filter with the network's mean probability over it as a fourth feature; the rule with
# the same recipe without the network (cap-filter) is the reference. On the 37 BONBID dev cases this choice, estimated
# fully nested, scores 0.634 (it picks the 3d_fullres, nested 0.652; three 3d_fullres seeds 0.652-0.662), against 0.626
# for the rule + cap-filter that session 34's default shipped and 0.568 for that default's choice procedure; letting the
# rule compete as well lowers it to 0.609 (one outer fold picks the rule and loses there). The gain over the rule moves
# with the split: +0.026 on splits_final.json (median 0, one lesion-free case judged empty by every seed; not
# significant), +0.061 on split seed 1 (11 cases up, 2 down; Holm 0.028), +0.023 on split seed 2 (Holm 0.69; session
# 36). The rule ships only when cross-validation says so (--rule-candidate).
# The chosen one's nested score is the best of three on the same cases, so the path also estimates the whole choice
# fully nested (--nested-choice: each outer fold chooses on the other four; 1.7 min on the AVX2 box, session 46) and
# reports it as what to expect of the procedure on new cases: 0.634 and 0.581 on two boxes against 0.652 and 0.640.
# With the one configuration of DEFAULT_RECIPE (recipe 42) only its post-processing is chosen, estimated the same way.
DEFAULT_CHOICE = {"rule_candidate": False, "postprocessing_candidates": JUDGED_RULE, "nested_choice": True}

# what happens to a fold (FoldTask.action)
REUSE, REVALIDATE, CONTINUE, TRAIN = "reuse", "re-validate", "continue", "train"


@dataclass
class DefaultModelOptions:
    """What ``hiennu_train_default_model`` runs. recipe: None reads :data:`DEFAULT_RECIPE` when the run starts.
    output: the zip (default ``$hiennu_results/DatasetNNN_Name/default_model.zip``). install: make it the
    default model. device / cpu_threads: as ``hiennu_train --device/--cpu-threads``. num_processes: worker
    processes of planning/preprocessing and of ``find_best_configuration``. retrain_mismatched: move a fold
    trained otherwise than the recipe aside and train it again, instead of refusing. rechoose: choose, export and
    install again even when nothing the last choice was made from changed (module docstring). rule_candidate,
    postprocessing_candidates and nested_choice: ``hiennu_find_best_configuration --rule-candidate``,
    ``--postprocessing-candidates`` and ``--nested-choice`` (:data:`DEFAULT_CHOICE`)."""

    dataset: str
    recipe: Sequence[RecipeStep] | None = None
    output: str | Path | None = None
    install: bool = True
    device: str | None = None
    cpu_threads: int | None = None
    num_processes: int = 2
    retrain_mismatched: bool = False
    rechoose: bool = False
    rule_candidate: bool = DEFAULT_CHOICE["rule_candidate"]
    postprocessing_candidates: str = DEFAULT_CHOICE["postprocessing_candidates"]
    nested_choice: bool = DEFAULT_CHOICE["nested_choice"]

    def __post_init__(self) -> None:
        check_candidate_set(self.postprocessing_candidates)


@dataclass
class FoldTask:
    """One fold of one recipe step: where it lives (``layout``), what will happen to it (``action``), the
    epochs it already holds and, for a fold trained otherwise than the recipe, the differing fields."""

    step: RecipeStep
    options: TrainingOptions
    layout: FoldLayout
    action: str
    epochs_done: int = 0
    differences: list[str] = field(default_factory=list)

    @property
    def configuration(self) -> str:
        return self.step.configuration

    @property
    def fold(self) -> int:
        return int(self.options.fold)

    @property
    def steps_per_fold(self) -> int:
        return int(self.layout.training.max_epochs) * int(self.layout.iterations_per_epoch)

    @property
    def steps_to_run(self) -> int:
        """Optimization steps this invocation will run for the fold (at most: early stopping may cut them)."""
        if self.action in (REUSE, REVALIDATE):
            return 0
        done = 0 if self.action == TRAIN else self.epochs_done * int(self.layout.iterations_per_epoch)
        return max(0, self.steps_per_fold - done)


@dataclass
class DefaultModelResult:
    """What a run did: the folds (in order), the choice (``information``, as in ``inference_information.json``;
    ``best``, what find_best_configuration returned, is None when the last choice was reused), the zip, the
    installed folder (None with ``install=False``), the wall time of each stage in seconds and the stages reused
    from the last run (``choice``, ``export``, ``install``; see the module docstring)."""

    dataset: str
    tasks: list[FoldTask]
    best: BestConfiguration | None
    zip_path: Path
    installed: Path | None
    seconds: dict[str, float]
    information: InferenceInformation | None = None
    reused: list[str] = field(default_factory=list)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


class RecipeProgress:
    """One ETA over every fold of the recipe.

    Each fold is done once trained, continued, re-validated or reused. The time left is, for every fold not
    done yet, its configuration's measured time per optimization step times the steps the fold still has to
    run (a fresh fold: its steps per fold, so this is the configuration's mean measured minutes per fold; an
    interrupted one: the steps it lacks; reused and re-validated folds: none). A configuration's time per step
    is the wall time of its folds trained in this invocation (their validation included) over their steps; until
    one of its folds has finished, the wall time of its first epoch here over that epoch's steps
    (:meth:`first_epoch`, logged at once, so the first ETA comes minutes into the run, not after a fold). A
    configuration not timed yet is named instead of guessed: the time per step of a ``2d`` and a ``3d_fullres``
    differ about 6x (0.6 s and 3.7 s, medians on a 2-core box without AVX-512, 2026-12-07).
    """

    def __init__(self, tasks: Sequence[FoldTask], clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.start = clock()
        self.total = len(tasks)
        self.finished = 0
        # (configuration, fold) -> (configuration, steps it still has to run) of every fold not done yet
        self.pending: dict[tuple[str, int], tuple[str, int]] = {(t.configuration, t.fold): (t.configuration,
                                                                                            t.steps_to_run)
                                                               for t in tasks}
        self.timed: dict[str, list[float]] = {}  # configuration -> [seconds, steps] of its folds trained here
        self.first_epochs: dict[str, float] = {}  # configuration -> seconds per step of its first epoch here

    def _rate(self, configuration: str) -> float | None:
        """Seconds per step: from the configuration's finished folds, else its first epoch, else None."""
        own = self.timed.get(configuration)
        if own and own[1] > 0:
            return own[0] / own[1]
        return self.first_epochs.get(configuration)

    def seconds_left(self) -> tuple[float, list[str]]:
        """(seconds of training left for the timed configurations, configurations with steps left not timed yet)."""
        total, untimed = 0.0, []
        for configuration, steps in self.pending.values():
            if steps <= 0:
                continue
            rate = self._rate(configuration)
            if rate is None:
                if configuration not in untimed:
                    untimed.append(configuration)
            else:
                total += rate * steps
        return total, untimed

    def _eta(self) -> str:
        if not any(steps > 0 for _, steps in self.pending.values()):
            return "no training left"
        left, untimed = self.seconds_left()
        if not untimed:
            return f"about {_duration(left)} left"
        timed = sorted({c for c, steps in self.pending.values() if steps > 0} - set(untimed))
        wait = f"{', '.join(untimed)} not timed yet (the first epoch of a fold of it will tell)"
        if not timed:
            return f"time left unknown: {wait}"
        return f"about {_duration(left)} left for {', '.join(timed)}; {wait}"

    def first_epoch(self, task: FoldTask, epoch_seconds: float) -> str | None:
        """Record the wall time of an epoch of ``task``'s fold; for the first epoch of a configuration not timed yet,
        return the line to log (its time per step and the ETA), else None."""
        configuration = task.configuration
        if self._rate(configuration) is not None:
            return None
        rate = float(epoch_seconds) / max(1, int(task.layout.iterations_per_epoch))
        self.first_epochs[configuration] = rate
        return (f"{configuration} fold {task.fold}: {rate:.2f} s a step in its first epoch here, validation included; "
                f"{(self.clock() - self.start) / 60:.1f} min elapsed, {self._eta()}")

    def done(self, task: FoldTask, seconds: float, steps_run: int, how: str) -> str:
        """Record ``task`` as done (``steps_run`` steps trained in ``seconds``); return the line to log."""
        self.finished += 1
        self.pending.pop((task.configuration, task.fold), None)
        if steps_run > 0:
            spent = self.timed.setdefault(task.configuration, [0.0, 0])
            spent[0] += float(seconds)
            spent[1] += int(steps_run)
        elapsed = (self.clock() - self.start) / 60
        if how != "reused":
            how = f"{how}, {seconds / 60:.1f} min"
        return (f"fold {self.finished} of {self.total} done ({task.configuration} fold {task.fold}: {how}), "
                f"{elapsed:.1f} min elapsed, {self._eta()}")


def training_order(tasks: Sequence[FoldTask]) -> list[FoldTask]:
    """The folds in the order they are trained: fold by fold, and within a fold the configuration with the fewest
    voxels per step (batch size x patch or grid) first (recipe order on a tie), so that every configuration's first
    epoch, and with it the whole ETA, comes early: on a 2-core CPU the ``2d`` fold 0 takes minutes, a ``3d_fullres``
    fold an hour. The order changes nothing that is trained: each fold is seeded and written on its own."""
    def voxels(task: FoldTask) -> int:  # input_size_zyx: the patch, or the whole grid of a whole-volume configuration
        return int(task.layout.training.batch_size) * int(np.prod(task.layout.config.input_size_zyx))

    recipe = list(dict.fromkeys(t.configuration for t in tasks))
    return sorted(tasks, key=lambda t: (t.fold, voxels(t), recipe.index(t.configuration)))


# ------------------------------------------------------------------------------------------------ checks

def check_recipe(recipe: Sequence[RecipeStep]) -> tuple[RecipeStep, ...]:
    """The recipe as a tuple: at least one step, each configuration once, one trainer for all (the choice
    compares every trainer with every configuration), every trainer known."""
    steps = tuple(recipe)
    if not steps or not all(isinstance(s, RecipeStep) for s in steps):
        raise HiennuError("the default recipe must be one or more RecipeStep(configuration, trainer, epochs, ...)")
    configurations = [s.configuration for s in steps]
    if len(set(configurations)) != len(configurations):
        raise HiennuError(f"the default recipe names a configuration twice: {', '.join(configurations)}")
    trainers = sorted({s.trainer for s in steps})
    if len(trainers) != 1:
        raise HiennuError(f"the default recipe trains with {', '.join(trainers)}; find_best_configuration compares "
                          f"every trainer with every configuration, so give every step the same trainer")
    for s in steps:
        get_trainer_class(s.trainer)
    return steps


def raw_dataset(identifier: str) -> tuple[str, Path]:
    """``(DatasetNNN_Name, raw folder)``: the raw dataset must be there, with ``imagesTr/`` and ``labelsTr/``
    (each fold's validation is predicted from the raw images and scored against the raw labels)."""
    dataset = resolve_dataset(identifier)
    raw_dir = raw_root() / dataset
    missing = [name for name in ("imagesTr", "labelsTr", "dataset.json") if not (raw_dir / name).exists()]
    if missing:
        raise HiennuError(f"{raw_dir}: the raw dataset ({', '.join(missing)} missing) is needed to preprocess it and "
                          f"to score every fold's validation; convert it there (hiennu_convert_bonbid SOURCE -d "
                          f"NNN) or point hiennu_raw at the folder that holds {dataset}")
    return dataset, raw_dir


def output_zip(output: str | Path | None, dataset: str) -> Path:
    """The zip to write: ``output``, or ``$hiennu_results/DatasetNNN_Name/default_model.zip``; refused before
    any training when it is a folder or sits in a file."""
    path = Path(output) if output is not None else results_root() / dataset / DEFAULT_ZIP_NAME
    if path.is_dir():
        raise HiennuError(f"-o {path} is a folder; give the zip file to write, e.g. -o {path / DEFAULT_ZIP_NAME}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise HiennuError(f"-o {path}: {parent} is a file, not a folder; give a zip path in a folder")
    return path


def _plan_for(device: str | None) -> str | None:
    """The planner's target for ``--device``: cpu, gpu for CUDA, else its own default."""
    kind = (device or "").split(":")[0].lower()
    return {"cpu": "cpu", "cuda": "gpu"}.get(kind)


def _split_cases(preprocessed_dir: Path, dataset: str) -> list[str]:
    """Every case of the five folds of ``splits_final.json``."""
    cases: set[str] = set()
    for fold in range(NUM_FOLDS):
        train_cases, val_cases = split_cases(preprocessed_dir, dataset, fold)
        cases.update(train_cases, val_cases)
    return sorted(cases)


def ensure_preprocessed(dataset: str, configurations: Sequence[str], device: str | None = None,
                        num_processes: int = 2) -> str:
    """Plan and preprocess ``configurations`` unless the plans and every case of them are there; returns what
    was done (``planned``, ``preprocessed`` or ``reused``). Existing plans are never re-planned (they may have
    been edited, and trained folds were trained with them)."""
    pre_dir = preprocessed_root() / dataset
    plans_path = pre_dir / plans_file_name(DEFAULT_PLANS_NAME)
    if not plans_path.is_file():
        plan_for = _plan_for(device)
        log.info("no plans in %s yet: planning and preprocessing %s (hiennu_plan_and_preprocess -d %s -c %s%s)",
                 pre_dir, ", ".join(configurations), dataset, " ".join(configurations),
                 f" --plan-for {plan_for}" if plan_for else "")
        plan_and_preprocess(dataset, PlanAndPreprocessOptions(configurations=list(configurations),
                                                              num_processes=num_processes, plan_for=plan_for))
        return "planned"
    plans = load_plans(plans_path)
    absent = [c for c in configurations if c not in plans.configurations]
    if absent:
        raise HiennuError(f"{plans_path} has no {', '.join(absent)} configuration (it holds "
                          f"{', '.join(plans.configurations)}); re-plan with hiennu_plan_and_preprocess -d {dataset} "
                          f"(folds trained with the old plans are then refused: move them away)")
    cases = _split_cases(pre_dir, dataset)
    raw = {c.case_id: c for c in training_cases(raw_root() / dataset)}
    missing = [c for c in cases if c not in raw]
    if missing:
        raise HiennuError(f"{pre_dir / 'splits_final.json'} names case(s) {', '.join(missing[:5])} that "
                          f"{raw_root() / dataset / 'imagesTr'} does not hold; restore the raw cases the folds were "
                          f"made from")
    # up to date as the preprocessor judges it (CASE.json written last, same files and plans), not just CASE.npy
    incomplete = [c for c in configurations
                  if not all(is_preprocessed(raw[case], plans.configurations[c],
                                             pre_dir / preprocessed_data_name(DEFAULT_PLANS_NAME, c))
                             for case in cases)]
    if incomplete:
        log.info("plans reused from %s; preprocessing %s with them (hiennu_plan_and_preprocess -d %s -c %s "
                 "--keep-plans)", plans_path, ", ".join(incomplete), dataset, " ".join(incomplete))
        plan_and_preprocess(dataset, PlanAndPreprocessOptions(configurations=incomplete, keep_plans=True,
                                                              num_processes=num_processes))
        return "preprocessed"
    log.info("plans and preprocessed cases reused from %s (%s: %d cases each)", pre_dir, ", ".join(configurations),
             len(cases))
    return "reused"


# ------------------------------------------------------------------------------------------------ the folds

def _epochs_done(fold_dir: Path) -> int:
    path = fold_dir / PROGRESS_FILE
    try:
        return len(read_json(path).get("epoch", [])) if path.is_file() else 0
    except (OSError, ValueError, AttributeError):
        return 0


def fold_options(step: RecipeStep, dataset: str, fold: int, opts: DefaultModelOptions) -> TrainingOptions:
    """The options of one fold, as ``hiennu_train DATASET TRAINER FOLD -c CONFIG --npz [--epochs E] [--patience P]
    [--iterations-per-epoch I] [--device D] [--cpu-threads N]`` would give them (``resume`` is set per fold)."""
    return TrainingOptions(dataset=dataset, configuration=step.configuration, fold=fold, epochs=step.epochs,
                           patience=step.patience, iterations_per_epoch=step.iterations_per_epoch,
                           device=opts.device, cpu_threads=opts.cpu_threads, save_probabilities=True)


def fold_task(step: RecipeStep, dataset: str, fold: int, opts: DefaultModelOptions) -> FoldTask:
    """What will happen to one fold: reused, re-validated (probabilities missing), continued or trained."""
    options = fold_options(step, dataset, fold, opts)
    layout = fold_layout(get_trainer_class(step.trainer).__name__, options)
    fold_dir = layout.fold_dir
    finished = (fold_dir / FINAL).is_file() and not (fold_dir / LATEST).is_file()
    interrupted = (fold_dir / LATEST).is_file()
    if (fold_dir / BEST).is_file() and not finished and not interrupted:
        raise HiennuError(f"{fold_dir} holds {BEST} but no {LATEST} or {FINAL} to continue from; move the folder "
                          f"away to train {step.configuration} fold {fold} again from scratch")
    differences = recorded_differences(fold_dir, layout) if finished or interrupted else []
    if differences:
        action = TRAIN  # after the folder is moved aside (retrain_mismatched), else refused before any training
    elif finished:
        action = REUSE if validation_is_current(fold_dir, FINAL, True) else REVALIDATE
    elif interrupted:
        action = CONTINUE
    else:
        action = TRAIN
    return FoldTask(step, options, layout, action, _epochs_done(fold_dir) if interrupted else 0, differences)


def check_mismatched(tasks: Sequence[FoldTask], retrain: bool) -> None:
    """Refuse, before anything is trained, when a fold was trained otherwise than the recipe (unless ``retrain``)."""
    mismatched = [t for t in tasks if t.differences]
    if mismatched and not retrain:
        first = mismatched[0]
        raise HiennuError(
            f"{len(mismatched)} fold(s) of the recipe were trained otherwise than it asks ("
            + "; ".join(f"{t.configuration} fold {t.fold}" for t in mismatched) + f"), e.g. {first.layout.fold_dir}: "
            + "; ".join(first.differences[:3]) + "; move those fold folders away, or pass --retrain-mismatched to "
            "move them aside (fold_K.replaced-<timestamp>) and train them again")


def _schedule(task: FoldTask) -> str:
    """``E epochs x S steps = N steps per fold, patience P``, each override of the plans marked ``(recipe)``."""
    step, training = task.step, task.layout.training

    def mark(value) -> str:
        return " (recipe)" if value is not None else ""

    return (f"{training.max_epochs} epochs{mark(step.epochs)} x {task.layout.iterations_per_epoch} steps"
            f"{mark(step.iterations_per_epoch)} = {task.steps_per_fold} steps per fold, patience {training.patience}"
            f"{mark(step.patience)}")


def _folds_text(folds: Sequence[int]) -> str:
    return ("fold " if len(folds) == 1 else "folds ") + ", ".join(map(str, folds))


def plan_lines(dataset: str, tasks: Sequence[FoldTask], preprocessing: str, out_zip: Path, install: bool) -> list[str]:
    """The whole plan, logged before anything is trained."""
    configurations = list(dict.fromkeys(t.configuration for t in tasks))
    counts = Counter(t.action for t in tasks)
    lines = [f"default model of {dataset}: {len(configurations)} configuration(s) x {NUM_FOLDS} folds = {len(tasks)} "
             f"folds ({counts[REUSE]} reused, {counts[REVALIDATE]} to re-validate with --npz, {counts[CONTINUE]} to "
             f"continue, {counts[TRAIN]} to train), then find_best_configuration over "
             f"{', '.join(configurations)}, export to {out_zip}"
             + (" and install as the default model" if install else " (not installed: --no-install)"),
             f"  plans and preprocessed cases: {preprocessing}"]
    for configuration in configurations:
        mine = [t for t in tasks if t.configuration == configuration]
        parts = []
        for action, label in ((REUSE, "reused"), (REVALIDATE, "to re-validate with --npz (no training)"),
                              (CONTINUE, None), (TRAIN, "to train")):
            folds = [t for t in mine if t.action == action]
            if action == CONTINUE:
                parts += [f"fold {t.fold} to continue from epoch {t.epochs_done}" for t in folds]
            elif folds:
                moved = [t.fold for t in folds if t.differences]
                parts.append(f"{_folds_text([t.fold for t in folds])} {label}"
                             + (f" ({_folds_text(moved)} trained otherwise: moved aside first)" if moved else ""))
        lines.append(f"  {configuration} ({mine[0].step.trainer}, {mine[0].layout.model_dir}): {_schedule(mine[0])}; "
                     + "; ".join(parts))
    return lines


def run_fold(task: FoldTask, epoch_listener: Callable[[int, float], None] | None = None) -> tuple[int, str]:
    """Train, continue or re-validate one fold through :func:`hiennu.training.launch.train` (as ``hiennu_train``);
    returns (steps trained, what happened). ``epoch_listener``: as ``train``'s."""
    fold_dir = task.layout.fold_dir
    label = f"{task.configuration} fold {task.fold}"
    if task.action == REUSE:  # finished, validated with probabilities: no trainer is built
        return 0, "reused"
    if task.differences:
        moved = move_fold_aside(fold_dir)
        log.warning("%s: trained otherwise than the recipe (%s); moved to %s, training again", label,
                    "; ".join(task.differences), moved)
    resume = any((fold_dir / name).is_file() for name in (LATEST, FINAL, BEST))
    before = _epochs_done(fold_dir) if resume else 0
    if task.action == REVALIDATE:  # why, read only here (its checkpoint digest reads the whole file)
        what = f"finished, but {validation_problem(fold_dir, FINAL, True)}: validating again (--continue --npz)"
    else:
        what = f"continuing from epoch {before} (--continue --npz)" if task.action == CONTINUE else "training (--npz)"
    log.info("%s: %s", label, what)
    train(dataclasses.replace(task.options, resume=resume), task.step.trainer, epoch_listener=epoch_listener)
    if not validation_is_current(fold_dir, FINAL, True):
        raise HiennuError(f"{label}: training ended without a validation with probabilities in {fold_dir / 'validation'}"
                          f"; see {fold_dir / 'training_log.txt'}, then run the command again")
    steps = max(0, _epochs_done(fold_dir) - before) * int(task.layout.iterations_per_epoch)
    how = {REVALIDATE: "re-validated", CONTINUE: f"continued, {steps} steps"}.get(task.action, f"trained, {steps} steps")
    return steps, how


# ------------------------------------------------------------------------------------------------ choose once

def _stat(path: Path) -> list[int] | None:
    """``[size, modification time in ns]`` of a file, None when it is not there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def set_aside_other_records(dataset: str, configurations: Sequence[str], trainer: str,
                            candidate_set: str) -> list[tuple[Path, Path, str]]:
    """Move aside each recipe model's ``postprocessing.json`` that was chosen among another post-processing candidate
    set than ``candidate_set`` (a record without ``candidate_set`` was chosen among all of them), or on validation
    masks of another sliding window than its folds' validations now
    (:func:`hiennu.postprocessing.selection.record_windows`: the plans' ``inference_window`` changed and the folds
    were validated again), renamed ``postprocessing.json.replaced-<timestamp>``; returns (old path, new path, why).

    ``hiennu_find_best_configuration`` never replaces a model's existing record (it may have been edited), so without
    this a default path run after the default choice changed, with ``--postprocessing-candidates``, or after a change
    of window would ship the old record. A record of the same set and windows stays, edited or not; one that cannot
    be read is left for the choice to report."""
    moved = []
    for configuration in configurations:
        model_dir = results_root() / dataset / model_dir_name(trainer, DEFAULT_PLANS_NAME, configuration)
        path = model_dir / POSTPROCESSING_FILE
        if not path.is_file():
            continue
        try:
            record = read_json(path)
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        made_on = record_windows(record)
        now = validation_windows(model_dir, [int(f) for f in made_on])
        if record.get("candidate_set", ALL_CANDIDATES) != candidate_set:
            why = f"was chosen among other post-processing candidates than this choice's ({candidate_set})"
        elif made_on != now:
            why = (f"was chosen on validation masks of inference_window {_windows_text(made_on)}, its folds' "
                   f"validations are now {_windows_text(now)}")
        else:
            continue
        moved.append((path, move_fold_aside(path), why))
    return moved


def _windows_text(windows: dict[str, str]) -> str:
    """``'case'`` when every fold has one window, else ``fold 0 'patch', fold 1 'case', ...``."""
    values = set(windows.values())
    if len(values) == 1:
        return repr(values.pop())
    return ", ".join(f"fold {f} {w!r}" for f, w in sorted(windows.items()))


def choice_inputs(dataset: str, configurations: Sequence[str], trainer: str,
                  find_best: dict | None = None) -> dict:
    """What find_best_configuration's choice is made from, cheaply: the configurations, trainer, its options
    ``find_best`` (default :data:`DEFAULT_CHOICE`) and hiennu version, and ``[size, mtime_ns]`` (None: absent) of
    every file it reads or that stands for what it reads: each fold's ``checkpoint_final.pth`` and validation folder (summary, masks, probabilities), each model folder's plans
    and ``dataset.json``, the split, and the raw dataset's ``dataset.json``, labels and images. Keys are relative to
    their root (``results/``, ``preprocessed/``, ``raw/``). Sizes and times, not hashes: a fold trained, continued
    or re-validated rewrites them, and reading every probability file to hash it would cost a good part of what
    skipping the choice saves."""
    results, pre, raw = results_root(), preprocessed_root(), raw_root()
    files: dict[str, list[int] | None] = {}

    def add(root: Path, label: str, path: Path) -> None:
        files[f"{label}/{path.relative_to(root).as_posix()}"] = _stat(path)

    for configuration in configurations:
        model = results / dataset / model_dir_name(trainer, DEFAULT_PLANS_NAME, configuration)
        for name in (PLANS_FILE, DATASET_FILE):
            add(results, "results", model / name)
        for fold in range(NUM_FOLDS):
            add(results, "results", model / f"fold_{fold}" / FINAL)
            for path in _files(model / f"fold_{fold}" / "validation"):
                add(results, "results", path)
    add(pre, "preprocessed", pre / dataset / splits_file_name())
    add(raw, "raw", raw / dataset / DATASET_FILE)
    for folder in ("labelsTr", "imagesTr"):
        for path in _files(raw / dataset / folder):
            add(raw, "raw", path)
    return {"hiennu_version": __version__, "configurations": list(configurations), "trainer": trainer,
            "find_best": dict(DEFAULT_CHOICE if find_best is None else find_best), "files": files}


def _choice_outputs(dataset: str, information: InferenceInformation) -> dict[str, list[int] | None]:
    """``[size, mtime_ns]`` of what the choice wrote that the export reads: ``inference_information.json`` and the
    chosen folder's ``postprocessing.json`` and ``members.json`` (keys relative to the dataset's results folder)."""
    results_dir = results_root() / dataset
    names = [INFERENCE_INFORMATION_FILE] + [f"{information.chosen.path}/{name}"
                                            for name in (POSTPROCESSING_FILE, ENSEMBLE_MEMBERS_FILE)]
    return {name: _stat(results_dir / name) for name in names}


def _differences(recorded: dict, current: dict, limit: int = 3) -> list[str]:
    """The first ``limit`` keys whose values differ (``a changed``, ``b added``, ``c removed``) of two flat dicts."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        if recorded.get(key) != current.get(key):
            what = "added" if recorded.get(key) is None else "removed" if current.get(key) is None else "changed"
            out.append(f"{key} {what}")
    return out[:limit] + ([f"{len(out) - limit} more"] if len(out) > limit else [])


def _read_state(path: Path) -> dict:
    """The state file, or {} when absent or unreadable (then everything is done again)."""
    try:
        state = read_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def reusable_choice(state: dict, inputs: dict, dataset: str) -> tuple[InferenceInformation | None, str]:
    """(the recorded choice, why) when nothing it was made from or wrote changed since; (None, why not) else."""
    choice = state.get("choice")
    if not isinstance(choice, dict) or "inputs" not in choice:
        return None, "no choice recorded yet"
    recorded = choice["inputs"]
    if not isinstance(recorded, dict):
        return None, "the recorded choice cannot be read"
    options = [k for k in ("hiennu_version", "configurations", "trainer", "find_best") if recorded.get(k) != inputs[k]]
    if options:
        return None, f"{', '.join(options)} changed"
    changed = _differences(recorded.get("files") or {}, inputs["files"])
    if changed:
        return None, "what it was made from changed: " + "; ".join(changed)
    try:
        information = load_inference_information(results_root() / dataset)
    except HiennuError as e:
        return None, str(e)
    changed = _differences(choice.get("outputs") or {}, _choice_outputs(dataset, information))
    if changed:
        return None, "what it wrote changed: " + "; ".join(changed)
    return information, ""


def _scores_text(metrics: dict) -> str:
    """``Dice m [low, high] / MASD m mm / NSD m`` from metric summaries (``n/a`` for a missing value)."""
    dice = metrics.get("dice")
    low, high = summary_number(dice, "ci95_low", 3), summary_number(dice, "ci95_high", 3)
    interval = "" if "n/a" in (low, high) else f" [{low}, {high}]"
    return (f"Dice {summary_number(dice, 'mean', 3)}{interval} / MASD {summary_number(metrics.get('masd'), 'mean', 2)}"
            f" mm / NSD {summary_number(metrics.get('nsd'), 'mean', 3)}")


def expectation_text(information: InferenceInformation) -> str:
    """What the choice says to expect of the default model on new cases, in one line: the chosen one's nested
    score (post-processing chosen without the scored fold) and the rule given the same post-processing. With several
    candidates the chosen one was the best of K on every case, which flatters it, so the line adds the estimate of
    the whole choice fully nested (``nested_choice``: each outer fold's candidate and post-processing chosen on the
    other folds) when it was made. With one candidate that estimate is its nested score by construction (each outer
    fold's only choice is the post-processing, made on the other folds), so the nested score is what to expect.
    Scores are 5-fold CV means over the dataset's cases (Dice, MASD in mm, NSD at 2 mm)."""
    chosen = information.chosen
    rows = list(information.candidates) + ([information.reference] if information.reference is not None else [])
    row = next((r for r in rows if r.name == chosen.name), None)
    nested = ((row.postprocessing or {}).get("nested") if row is not None else None) or {}
    k = information.selection.num_candidates
    text = (f"{chosen.name}, nested with its post-processing"
            + (f" (the best of {k} candidates on the same cases: it flatters): " if k > 1 else
               " (the only candidate: what to expect on new cases): ")
            + (_scores_text(nested) if nested else "not recorded (an older inference_information.json)"))
    fully = information.nested_choice
    if k > 1 and fully is None:
        text += "; the whole choice was not estimated fully nested (--nested-choice estimates it)"
    elif k > 1:
        text += (f"; the whole choice, fully nested (what to expect on new cases): {_scores_text(fully.metrics)}, "
                 f"outer folds chose {', '.join(f'{f}: {n}' for f, n in fully.choices.items())}")
    reference = ((information.reference.postprocessing or {}).get("nested")
                 if information.reference is not None else None)
    if reference and chosen.kind != RULE:
        text += f"; the rule with the same post-processing: {_scores_text(reference)}"
    return text


def _is_default_model(folder: str | None) -> bool:
    """Whether ``folder`` is the default model now (an unreadable ``default_model.json`` counts as no)."""
    try:
        default = read_default_model()
    except HiennuError:
        return False
    return folder is not None and default is not None and default.resolve() == Path(folder).resolve()


# ------------------------------------------------------------------------------------------------ the run

def train_default_model(opts: DefaultModelOptions) -> DefaultModelResult:
    """Plan/preprocess, train every fold of the recipe, choose the best configuration or ensemble, export it to one
    zip and install it as the default model (see the module docstring)."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    recipe = check_recipe(opts.recipe if opts.recipe is not None else DEFAULT_RECIPE)  # read now, not at import
    if opts.num_processes < 1:
        raise HiennuError(f"-np must be at least 1, got {opts.num_processes}")
    if opts.cpu_threads is not None and (int(opts.cpu_threads) != opts.cpu_threads or opts.cpu_threads < 1):
        raise HiennuError(f"--cpu-threads must be a positive whole number, got {opts.cpu_threads}")
    dataset, _ = raw_dataset(opts.dataset)
    out_zip = output_zip(opts.output, dataset)
    configurations = [s.configuration for s in recipe]

    t = time.perf_counter()
    preprocessing = ensure_preprocessed(dataset, configurations, opts.device, opts.num_processes)
    seconds["plan_and_preprocess"] = time.perf_counter() - t
    tasks = [fold_task(step, dataset, fold, opts) for step in recipe for fold in range(NUM_FOLDS)]
    check_mismatched(tasks, opts.retrain_mismatched)
    for line in plan_lines(dataset, tasks, preprocessing, out_zip, opts.install):
        log.info("%s", line)

    t = time.perf_counter()
    progress = RecipeProgress(tasks)
    for task in training_order(tasks):
        fold_started = time.perf_counter()

        def first_epoch(epoch: int, epoch_seconds: float, task: FoldTask = task) -> None:
            line = progress.first_epoch(task, epoch_seconds)
            if line:
                log.info("%s", line)

        steps, how = run_fold(task, first_epoch)
        line = progress.done(task, time.perf_counter() - fold_started, steps, how)
        if how != "reused":  # the plan's lines already name the reused folds
            log.info("%s", line)
    seconds["training"] = time.perf_counter() - t

    t = time.perf_counter()
    trainer = recipe[0].trainer
    state_path = results_root() / dataset / STATE_FILE
    state = _read_state(state_path)
    find_best = {"rule_candidate": opts.rule_candidate, "postprocessing_candidates": opts.postprocessing_candidates,
                 "nested_choice": opts.nested_choice}
    inputs = choice_inputs(dataset, configurations, trainer, find_best)
    information, why = (None, "--rechoose") if opts.rechoose else reusable_choice(state, inputs, dataset)
    reused: list[str] = []
    best = None
    if information is not None:
        reused.append("choice")
        log.info("the choice of %s is reused: %s (%s) from %s; nothing it was made from changed since it was made "
                 "(checkpoints, validation files, plans, split, raw data; --rechoose makes it again)", dataset,
                 information.chosen.name, information.chosen.kind,
                 results_root() / dataset / INFERENCE_INFORMATION_FILE)
    else:
        flags = (" --rule-candidate" if opts.rule_candidate else "") + (
            f" --postprocessing-candidates {opts.postprocessing_candidates}") + (
            " --nested-choice" if opts.nested_choice else "")
        what = (f"among {', '.join(configurations)}, their ensemble"
                + (" and the rule ZADC < -2" if opts.rule_candidate else "") if len(configurations) > 1 else
                f"the post-processing of {configurations[0]}"
                + (", the rule ZADC < -2 competing" if opts.rule_candidate else ""))
        log.info("choosing %s by cross-validation (hiennu_find_best_configuration -d %s -c %s%s)%s", what, dataset,
                 " ".join(configurations), flags, f"; not reusing the last choice: {why}" if state else "")
        for old, new, why in set_aside_other_records(dataset, configurations, trainer, opts.postprocessing_candidates):
            log.info("%s %s: moved aside to %s, so the choice writes its own", old.relative_to(results_root()), why,
                     new.name)
        best = find_best_configuration(FindBestOptions(dataset=dataset, configurations=configurations,
                                                       trainers=[trainer], num_processes=opts.num_processes,
                                                       **find_best))
        information = best.information
        state = {"choice": {"inputs": inputs, "outputs": _choice_outputs(dataset, information)}}
        write_json(state, state_path)  # export and install are recorded once done
    seconds["find_best_configuration"] = time.perf_counter() - t

    t = time.perf_counter()
    chosen = information.chosen
    chosen_dir = results_root() / dataset / chosen.path
    exported = state.get("export") or {}
    if "choice" in reused and exported.get("zip") == str(out_zip) and exported.get("file") == _stat(out_zip):
        zip_path = out_zip
        reused.append("export")
        log.info("%s is reused: exported from this choice and unchanged since", zip_path)
    else:
        rule = chosen.kind == RULE  # a rule folder has no folds or checkpoint
        zip_path = export_models([chosen_dir], None, None, None, DEFAULT_PLANS_NAME, out_zip,
                                 None if rule else list(chosen.folds), None if rule else chosen.checkpoint)
        state["export"] = {"zip": str(zip_path), "file": _stat(zip_path)}
        state.pop("install", None)
        write_json(state, state_path)
    seconds["export"] = time.perf_counter() - t
    installed = None
    if opts.install:
        t = time.perf_counter()
        done = state.get("install") or {}
        if ("export" in reused and done.get("zip") == str(zip_path) and done.get("file") == _stat(zip_path)
                and _is_default_model(done.get("default"))):
            installed = Path(done["default"])
            reused.append("install")
            log.info("%s is still the default model, installed from %s; not installed again", installed, zip_path)
        else:
            installed = install_model_zip(zip_path, make_default=True)
            state["install"] = {"zip": str(zip_path), "file": _stat(zip_path), "default": str(installed)}
            write_json(state, state_path)
        seconds["install"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    log.info("default model of %s: %s (%s), exported to %s%s; %.1f min in all (%s)", dataset, chosen.name, chosen.kind,
             zip_path, f", installed as the default model ({installed}): hiennu_predict -i INPUT_FOLDER -o "
                       f"OUTPUT_FOLDER predicts with it" if installed else
             f"; install it with hiennu_install_model {zip_path} --default", seconds["total"] / 60,
             ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items() if k != "total"))
    log.info("what the choice says to expect: %s", expectation_text(information))
    return DefaultModelResult(dataset, tasks, best, zip_path, installed, seconds, information, reused)
