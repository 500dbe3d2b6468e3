"""The loss study: which loss segments HIE lesions best, answered with cross-validation.

For each trainer (one loss each) and each fold it trains the model (or reuses a finished one),
predicts the fold's validation cases in their native geometry, and scores them with the challenge
metrics. The same cases are scored for two simple rules, ZADC < -2 and ZADC < -2 with components
under 10 voxels removed, so every table says how far above them each loss is.

Writes ``loss_study/`` (default: ``$hiennu_results/DatasetNNN_Name/loss_study_CONFIG/``) with:
``report.md`` (everything below in one page), ``table.md``/``table.csv`` (per method: Dice, MASD and
NSD as mean ± std with the 95 % bootstrap interval of the mean, HD95, lesion-wise recall and
precision; per trainer: epochs to stop, optimization steps per fold and training wall time from
``progress.json``), ``bands.md``/``bands.csv`` (the same per lesion volume band),
``wilcoxon.md``/``wilcoxon.csv`` (paired tests of each trainer against the reference trainer, with
Holm-corrected p-values per metric), ``per_case.csv``, ``dice_boxplot.png`` (per-case Dice of every
method, rules included), ``progress.png`` (training curves side by side), ``slices.png`` (the same
axial slices of a few cases, cropped to the brain: the ADC image with the ground truth and each
method's mask as contours) and, when every fold was run, ``postprocessing.md`` (each trainer's
post-processing candidates scored by cross-validation, the choice stored as the model folder's
``postprocessing.json``: :mod:`hiennu.postprocessing`, the code ``hiennu_determine_postprocessing`` runs) and
``postprocessed_vs_rule.md``/``postprocessed_vs_rule.csv`` (each trainer + its nested post-processing
against the rule ZADC < -2 + its own nested post-processing over the same cases: the paired Wilcoxon
test, Holm-corrected across Dice, MASD and NSD, with n beside it;
:mod:`hiennu.study.postprocessed_comparison`; masks under ``postprocessed/``; with two trainers or more, the
``hiennu_find_best_configuration --nested-choice`` command that estimates choosing one of them by that table
fully nested, which the study does not run: on BONBID it took 7 min, 2026-12-05).

Progress over the whole study is logged after each (trainer, fold) run: runs done out of the total,
the run's time and an ETA (:class:`StudyProgress`). A finished fold is reused only when its record
matches the request (:mod:`hiennu.training.fold_record`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hiennu.errors import HiennuError
from hiennu.evaluation import report
from hiennu.evaluation.evaluate import evaluate_folders, write_per_case_csv
from hiennu.inference.baseline import ZadcThresholdBaseline
from hiennu.io.atomic import read_json, write_text
from hiennu.io.checkpoint import FINAL, LATEST
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.cases import channel_file_name
from hiennu.io.channels import adc_zadc_channels
from hiennu.io.image import read_image
from hiennu.log import get_logger
from hiennu.losses.base import use_batch_reduction
from hiennu.paths import parse_model_dir_name, raw_root, resolve_dataset, results_root
from hiennu.plans import PLANS_NAME
from hiennu.postprocessing.commands import determine_postprocessing
from hiennu.postprocessing.selection import postprocessing_table
from hiennu.provenance import provenance_markdown
from hiennu.study.postprocessed_comparison import compare_models_with_rule
from hiennu.study.split_seeds import ensure_seed_splits
from hiennu.training.fold_layout import FoldLayout, fold_layout
from hiennu.training.fold_record import move_fold_aside, recorded_differences
from hiennu.training.native_validation import validated_checkpoint, validation_is_current
from hiennu.training.options import NUM_FOLDS, TrainingOptions
from hiennu.training.trainers import get_trainer_class

log = get_logger(__name__)

#: The paper's six losses; further built-in trainers (TrainerBlobDiceFocal) join a study when named with --trainers.
STUDY_TRAINERS = ("TrainerDice", "TrainerDiceFocal", "TrainerTversky", "TrainerHDT", "TrainerDiceFocalHDT",
                  "TrainerTverskyHDT")
RULE_ZADC = "rule: ZADC < -2"
RULE_ZADC_CC = "rule: ZADC < -2, components < 10 vox removed"
RULES = {RULE_ZADC: 0, RULE_ZADC_CC: 10}


DEFAULT_REFERENCE = "TrainerDice"


@dataclass
class LossStudyOptions:
    """What to study.

    trainers: trainer class names (``module:Class`` for your own). folds: fold numbers 0-4, or
    ``"all"`` for all five (the study scores each fold's validation cases, so the training fold
    ``all``, which has none, is not one of them).
    training: how every fold is trained (configuration, plans identifier ``-p``, epochs, seed ...;
    ``None`` values take the plans'); its dataset, fold and ``resume`` are set by the study per run.
    Default: ``TrainingOptions(dataset)``.
    reference: the trainer the Wilcoxon tests compare against, one of ``trainers`` (None: :data:`DEFAULT_REFERENCE`
    when studied, else the first trainer). figure_cases: rows of slices.png.
    output_dir: where the study is written (default under the dataset's results folder).
    retrain_mismatched: a finished fold whose record (plans configuration, trainer, result-changing
    training options, seed, hiennu version: :mod:`hiennu.training.fold_record`) differs from the
    request is moved aside (``fold_K.replaced-<timestamp>``) and trained again; without it the study
    refuses, naming the fields.
    """

    dataset: str
    trainers: Sequence[str] = STUDY_TRAINERS
    folds: Sequence[int] = (0, 1, 2, 3, 4)
    training: TrainingOptions | None = None
    reference: str | None = None
    figure_cases: int = 4
    num_processes: int = 2
    output_dir: Path | None = None
    retrain_mismatched: bool = False

    def __post_init__(self) -> None:
        self.folds = study_folds(self.folds)
        if isinstance(self.figure_cases, bool) or int(self.figure_cases) != self.figure_cases or self.figure_cases < 1:
            raise HiennuError(f"--figure-cases must be a whole number >= 1 (rows of slices.png), got "
                              f"{self.figure_cases!r}")
        if int(self.num_processes) != self.num_processes or self.num_processes < 1:
            raise HiennuError(f"-np must be a whole number >= 1, got {self.num_processes!r}")
        if self.reference is not None and self.reference not in self.trainers:
            raise HiennuError(f"--reference {self.reference} is not among --trainers ({', '.join(self.trainers)}); "
                              f"name one of them, or leave --reference out ({DEFAULT_REFERENCE} when studied, else "
                              f"the first trainer)")
        if self.training is None:
            self.training = TrainingOptions(dataset=self.dataset)

    @property
    def plans_name(self) -> str:
        """The plans identifier the models are trained with (``-p``)."""
        return self.training.plans_name

    def fold_options(self, dataset: str, fold: int, resume: bool) -> TrainingOptions:
        """The training options of one fold's run."""
        return dataclasses.replace(self.training, dataset=dataset, fold=fold, resume=resume)

    def record(self) -> dict[str, Any]:
        """The options as one flat record (for the report): the training options in the place of
        ``training``, less those the study sets per run."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "training":
                out.update({k: v for k, v in dataclasses.asdict(self.training).items()
                            if k not in ("dataset", "fold", "resume")})
            else:
                out[f.name] = getattr(self, f.name)
        return out


def study_folds(folds: Sequence[int | str] | str) -> tuple[int, ...]:
    """Fold numbers 0-4, each once and in order (``0 0 1`` is 0 and 1: a fold named twice would count its cases
    twice in every mean and no longer pair with the rules' rows); ``"all"`` (alone or in the list) means every one."""
    items = [folds] if isinstance(folds, (str, int)) else list(folds)
    if any(str(f).strip().lower() == "all" for f in items):
        return tuple(range(NUM_FOLDS))
    try:
        numbers = tuple(int(f) for f in items)
    except (TypeError, ValueError):
        numbers = ()
    if not numbers or not all(0 <= f < NUM_FOLDS for f in numbers):
        raise HiennuError(f"--folds takes fold numbers 0-{NUM_FOLDS - 1} or 'all', got {' '.join(map(str, items))}")
    return tuple(sorted(set(numbers)))


@dataclass
class FoldRun:
    """One trained fold of one trainer: where it lives and what it validated on."""

    trainer: str
    fold: int
    fold_dir: Path
    val_cases: list[str]
    epochs_trained: int
    curves: dict[str, list[float]] = field(default_factory=dict)
    trained_now: bool = False
    steps: int = 0
    train_seconds: float = 0.0


@dataclass
class LossStudyResult:
    output_dir: Path
    rows: list[dict]
    per_case: dict[str, list[dict]]
    wall_seconds: float


def run_loss_study(opts: LossStudyOptions) -> LossStudyResult:
    """Train/reuse every (trainer, fold), score validation predictions and the two rules, write the report."""
    start = time.perf_counter()
    if not opts.trainers:
        raise HiennuError("the loss study needs at least one trainer")
    dataset = resolve_dataset(opts.dataset)
    raw_dir = raw_root() / dataset
    if not (raw_dir / "labelsTr").is_dir():
        raise HiennuError(f"{raw_dir}: raw dataset with labelsTr/ not found; the study scores validation "
                          f"predictions against the raw labels (hiennu_convert_bonbid / hiennu_make_synthetic)")
    ensure_seed_splits(dataset, opts.training.split_seed)
    check_losses_fit_plans(dataset, opts)  # before hours of training, not after
    if not opts.retrain_mismatched:
        check_finished_folds(dataset, opts)
    tracker = StudyProgress(len(opts.trainers) * len(opts.folds))
    runs: dict[str, list[FoldRun]] = {}
    for name in opts.trainers:
        for fold in opts.folds:
            run_start = time.perf_counter()
            run = train_fold(name, fold, dataset, opts)
            runs.setdefault(name, []).append(run)
            log.info("%s", tracker.done(name, fold, time.perf_counter() - run_start, run.trained_now))
    config_name = parse_model_dir_name(runs[opts.trainers[0]][0].fold_dir.parent.name).configuration
    suffix = config_name if opts.plans_name == PLANS_NAME else f"{opts.plans_name}__{config_name}"
    if opts.training.split_seed is not None:
        suffix += f"_split{opts.training.split_seed}"
    out = opts.output_dir or results_root() / dataset / f"loss_study_{suffix}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    per_case: dict[str, list[dict]] = {}
    case_fold: dict[str, int] = {}
    for name, fold_runs in runs.items():
        per_case[name] = []
        for run in fold_runs:
            summary = evaluate_folders(raw_dir / "labelsTr", run.fold_dir / "validation", images_dir=raw_dir / "imagesTr",
                                       num_processes=opts.num_processes, case_ids=run.val_cases)
            for row in summary["per_case"]:
                per_case[name].append({**row, "fold": run.fold})
                case_fold[row["case_id"]] = run.fold
    cases = sorted(case_fold)
    channel_names = load_dataset_json(raw_dir).channel_names
    for rule, min_voxels in RULES.items():
        pred_dir = out / "rules" / _slug(rule)
        ZadcThresholdBaseline(min_component_voxels=min_voxels, channel_names=channel_names).predict_folder(
            raw_dir / "imagesTr", pred_dir, continue_prediction=True)
        summary = evaluate_folders(raw_dir / "labelsTr", pred_dir, images_dir=raw_dir / "imagesTr",
                                   num_processes=opts.num_processes, case_ids=cases)
        per_case[rule] = [{**row, "fold": case_fold[row["case_id"]]} for row in summary["per_case"]]

    extra = {name: {"epochs": [r.epochs_trained for r in fold_runs], "steps": [r.steps for r in fold_runs],
                    "train_min": [r.train_seconds / 60 for r in fold_runs],
                    "train_min_total": round(sum(r.train_seconds for r in fold_runs) / 60, 1)}
             for name, fold_runs in runs.items()}
    title = f"Loss study on {dataset} ({config_name}), folds {', '.join(map(str, opts.folds))}"
    rows = report.write_method_table(per_case, out / "table.md", out / "table.csv", metrics=report.STUDY_METRICS,
                                     extra=extra, title=title, ci_metrics=report.CI_METRICS)
    report.write_band_tables(per_case, out / "bands.md", out / "bands.csv", title=f"{title}: by lesion volume band")
    report.plot_dice_boxplot(per_case, out / "dice_boxplot.png", title=f"per-case Dice, {title}")
    post_records = choose_postprocessing(runs, raw_dir, opts.folds)
    write_text(_postprocessing_markdown(post_records, opts.folds), out / "postprocessing.md")
    write_postprocessed_vs_rule(runs, post_records, raw_dir, out, opts)
    reference = opts.reference or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in runs else opts.trainers[0])
    tests = report.wilcoxon_vs_reference({m: per_case[m] for m in runs}, reference) if len(runs) > 1 else []
    report.write_wilcoxon_table(tests, out / "wilcoxon.md", out / "wilcoxon.csv",
                                title=f"Paired Wilcoxon signed-rank tests against {reference}")
    write_per_case_csv([{"method": m, **r} for m, rs in per_case.items() for r in rs], out / "per_case.csv")
    report.plot_progress_curves({name: fold_runs[0].curves for name, fold_runs in runs.items()},
                                out / "progress.png", title=f"training curves, fold {opts.folds[0]}")
    _slice_figure(raw_dir, runs, per_case, case_fold, opts.figure_cases, out / "slices.png", title)
    wall = time.perf_counter() - start
    _write_report(out, title, rows, per_case, tests, reference, wall, opts)
    log.info("loss study written to %s (report.md, tables, dice_boxplot.png, progress.png, slices.png)", out)
    return LossStudyResult(out, rows, per_case, wall)


class StudyProgress:
    """Progress over the whole study: runs done out of the total, time per run, and an ETA.

    The ETA is the mean wall time of the runs trained in this invocation times the runs left;
    reused runs count as done but not in the timing (no ETA until one run has been trained).
    """

    def __init__(self, total: int):
        self.total, self.finished = int(total), 0
        self.trained_seconds: list[float] = []

    def done(self, trainer: str, fold: int, seconds: float, trained: bool) -> str:
        """Record one finished (trainer, fold) run; return the progress line to log."""
        self.finished += 1
        if trained:
            self.trained_seconds.append(float(seconds))
        left = self.total - self.finished
        if self.trained_seconds:
            eta = f"ETA {left * sum(self.trained_seconds) / len(self.trained_seconds) / 60:.1f} min"
        else:
            eta = "ETA unknown (no run trained yet)" if left else "ETA 0.0 min"
        how = f"in {seconds / 60:.1f} min" if trained else "(reused)"
        return f"run {self.finished}/{self.total} done: {trainer} fold {fold} {how}; {eta}"


def check_losses_fit_plans(dataset: str, opts: LossStudyOptions) -> None:
    """Refuse, before anything is trained, a trainer whose loss the plans cannot train.

    With ``training.batch_dice`` (what the planner writes for ``2d``) a loss with no region term (the
    distance-transform loss alone, ``TrainerHDT``) has nothing to sum over the batch, and its trainer
    raises when it is built; in a six-loss study that came after hours of the other trainers' folds. A
    custom trainer whose ``build_loss`` needs the trainer's state is not checked here (it still raises
    when it is built).
    """
    problems = []
    for name in opts.trainers:
        cls = get_trainer_class(name)
        if not _fold_layout(name, opts.folds[0], dataset, opts).training.batch_dice:
            continue
        try:
            loss = cls.build_loss(object.__new__(cls))  # the built-in trainers' losses need no trainer state
        except Exception:  # noqa: BLE001 - a custom build_loss that reads the trainer: checked when it trains
            continue
        try:
            use_batch_reduction(loss)
        except HiennuError:
            problems.append(f"{name} ({type(loss).__name__})")
    if problems:
        raise HiennuError(f"plans {opts.plans_name!r}: training.batch_dice is true, and the loss of "
                          f"{', '.join(problems)} has no region term to sum over the batch (distance-transform "
                          f"losses are per sample); nothing was trained. Leave these trainers out of --trainers, "
                          f"or study them with plans whose training.batch_dice is false (-p NAME)")


def _started(fold_dir: Path) -> bool:
    """A finished (``checkpoint_final.pth``) or interrupted (``checkpoint_latest.pth``) run: its record says how it
    was started, and continuing it under other options would mix two recipes in one fold."""
    return (fold_dir / FINAL).is_file() or (fold_dir / LATEST).is_file()


def check_finished_folds(dataset: str, opts: LossStudyOptions) -> None:
    """Refuse, before anything is trained, when any finished or interrupted fold of the study differs from the
    request.

    The error lists every such fold with its differing fields (see :func:`train_fold`).
    """
    problems = []
    for name in opts.trainers:
        for fold in opts.folds:
            layout = _fold_layout(name, fold, dataset, opts)
            if _started(layout.fold_dir):
                diffs = recorded_differences(layout.fold_dir, layout)
                if diffs:
                    problems.append(f"{name} fold {fold} ({layout.fold_dir}): {'; '.join(diffs)}")
    if problems:
        raise HiennuError(f"{len(problems)} finished or interrupted run(s) were started otherwise than requested:\n  - "
                          + "\n  - ".join(problems) + "\nrerun the study with the options they were trained with, "
                          "or pass --retrain-mismatched to move them aside and train them again")


def train_fold(trainer_name: str, fold: int, dataset: str, opts: LossStudyOptions) -> FoldRun:
    """Train one fold unless a finished run that matches the request exists; return what the study needs.

    A finished (``checkpoint_final.pth``) or interrupted (``checkpoint_latest.pth``) fold whose record differs
    from the request (:func:`hiennu.training.fold_record.recorded_differences`) is refused, naming the fields, or
    with ``opts.retrain_mismatched`` moved aside and trained again. An interrupted fold that matches is continued
    (``--continue``).
    """
    cls = get_trainer_class(trainer_name)
    layout = _fold_layout(trainer_name, fold, dataset, opts)
    fold_dir = layout.fold_dir
    if _started(fold_dir):
        diffs = recorded_differences(fold_dir, layout)
        if diffs and not opts.retrain_mismatched:
            status = "interrupted" if (fold_dir / LATEST).is_file() else "finished"
            raise HiennuError(f"{trainer_name} fold {fold}: the {status} run in {fold_dir} was started otherwise than "
                              f"requested ({'; '.join(diffs)}); rerun the study with the options it was started "
                              f"with, or pass --retrain-mismatched to move it aside and train it again")
        if diffs:
            moved = move_fold_aside(fold_dir)
            log.warning("%s fold %d: the run differs from the request (%s); moved to %s, training again",
                        trainer_name, fold, "; ".join(diffs), moved)
    wanted = opts.training.validation_checkpoint_file
    finished = (fold_dir / FINAL).is_file() and not (fold_dir / LATEST).is_file()
    validated = validated_checkpoint(fold_dir)
    trained_now = not (finished and validated is not None)
    if finished and validated is not None and not validation_is_current(fold_dir, wanted,
                                                                        opts.training.save_probabilities):
        log.info("%s fold %d: finished run found in %s, its validation masks came from %s%s; re-validating with %s%s",
                 trainer_name, fold, fold_dir, validated, "" if validated != wanted else " without probabilities",
                 wanted, " (--npz)" if opts.training.save_probabilities else "")
        cls(dataclasses.replace(opts.fold_options(dataset, fold, resume=False), validation_only=True)).run()
    elif not trained_now:
        log.info("%s fold %d: finished run found in %s, matches the request, reused", trainer_name, fold, fold_dir)
    else:
        resume = (fold_dir / LATEST).is_file() or (fold_dir / FINAL).is_file()
        log.info("%s fold %d: %s", trainer_name, fold, "resuming" if resume else "training")
        cls(opts.fold_options(dataset, fold, resume)).run()
        if not (fold_dir / "validation" / "summary.json").is_file():
            raise HiennuError(f"{trainer_name} fold {fold}: training ended without validation predictions in "
                              f"{fold_dir / 'validation'}; see {fold_dir / 'training_log.txt'}")
    prog = read_json(fold_dir / "progress.json") if (fold_dir / "progress.json").is_file() else {}
    curves = {k: [math.nan if v is None else float(v) for v in prog.get(k, [])]
              for k in ("train_loss", "val_loss", "val_dice")}
    epochs = len(prog.get("epoch", []))
    train_seconds = float(sum(v for v in prog.get("epoch_seconds", []) if v is not None))
    return FoldRun(trainer_name, fold, fold_dir, list(layout.val_cases), epochs, curves, trained_now,
                   steps=epochs * int(layout.iterations_per_epoch), train_seconds=train_seconds)


def choose_postprocessing(runs: dict[str, list[FoldRun]], raw_dir: Path, folds: Sequence[int]) -> dict[str, dict]:
    """Post-processing chosen by cross-validation for each trainer run on all five folds (record per trainer).

    With fewer folds nothing is chosen (the pooled validation cases would not be the whole
    dataset) and the result is empty.
    """
    if sorted(folds) != list(range(NUM_FOLDS)):
        log.info("post-processing not chosen: it needs all %d folds, the study ran fold(s) %s", NUM_FOLDS,
                 ", ".join(map(str, folds)))
        return {}
    return {name: determine_postprocessing(fold_runs[0].fold_dir.parent, raw_dir, folds, table=False)[0]
            for name, fold_runs in runs.items()}


def _postprocessing_markdown(records: dict[str, dict], folds: Sequence[int]) -> str:
    if not records:
        return (f"Post-processing was not chosen: choosing it needs the pooled validation cases of all {NUM_FOLDS} "
                f"folds, and this study ran folds {', '.join(map(str, folds))}.\n")
    return ("Mean per-case Dice of each post-processing candidate on the pooled cross-validation predictions "
            "(folds " + ", ".join(map(str, folds)) + "). A candidate is kept only when it raises the mean Dice "
            "over no post-processing (nnU-Net's rule); the best kept one is stored as the model folder's "
            "postprocessing.json and applied by hiennu_predict. The chosen candidate's pooled Dice flatters it (the "
            "best of many on the same cases); the last column is the honest number: each fold's choice made on "
            "the other folds only, then scored on it (benchmarks/postprocessing_cv.py scores it with every "
            "metric).\n\n" + postprocessing_table(records))


def write_postprocessed_vs_rule(runs: dict[str, list[FoldRun]], records: dict[str, dict], raw_dir: Path, out: Path,
                                opts: LossStudyOptions) -> None:
    """``postprocessed_vs_rule.md``/``.csv``: each trainer + the post-processing chosen for it by nested CV
    against the rule + its own nested post-processing, paired over the same cases (needs all folds, as the
    choice does; otherwise the file says why not)."""
    if not records:
        write_text(f"Not compared: the post-processing of model and rule is chosen by nested cross-validation, "
                   f"which needs all {NUM_FOLDS} folds; this study ran folds {', '.join(map(str, opts.folds))}.\n",
                   out / "postprocessed_vs_rule.md")
        write_text("method,reference,metric\n", out / "postprocessed_vs_rule.csv")
        return
    result = compare_models_with_rule({name: fold_runs[0].fold_dir.parent for name, fold_runs in runs.items()},
                                      records, raw_dir, opts.folds, out / "postprocessed",
                                      num_processes=opts.num_processes)
    command = loss_choice_command(runs)
    honest = ("" if command is None else
              "\nPicking the trainer with the best row above is itself a choice made on these cases, and flatters it. "
              "Its fully nested estimate (the trainer and its post-processing chosen without each fold, then scored "
              f"on it; the folds must have kept their probabilities, --npz):\n\n    {command}\n")
    write_text(result["markdown"] + f"\nThe rule's nested choices per fold: {result['rule_choices']}.\n" + honest,
               out / "postprocessed_vs_rule.md")
    write_per_case_csv(result["tests"], out / "postprocessed_vs_rule.csv")


def loss_choice_command(runs: dict[str, list[FoldRun]]) -> str | None:
    """The ``hiennu_find_best_configuration`` command that estimates, fully nested, choosing one of the study's
    trainers by its nested Dice with post-processing; ``None`` when there is no choice to estimate (one trainer),
    or the models do not share one dataset folder, plans and configuration (a study on a split seed)."""
    models = [fold_runs[0].fold_dir.parent for fold_runs in runs.values() if fold_runs]
    names = [parse_model_dir_name(m.name) for m in models]
    if len(models) < 2 or None in names or not models[0].parent.name.startswith("Dataset"):
        return None
    if len({m.parent for m in models}) > 1 or len({(n.plans, n.configuration) for n in names}) > 1:
        return None
    return (f"hiennu_find_best_configuration -d {models[0].parent.name} -c {names[0].configuration} "
            f"-tr {' '.join(n.trainer for n in names)} -p {names[0].plans} --no-ensembles --nested-choice")


def _fold_layout(trainer_name: str, fold: int, dataset: str, opts: LossStudyOptions) -> FoldLayout:
    """Where ``trainer_name``'s run of ``fold`` lives and what it validates on (a trainer's own class
    name, so ``module:Class`` names the class)."""
    return fold_layout(get_trainer_class(trainer_name).__name__, opts.fold_options(dataset, fold, resume=False))


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_").lower()


def figure_cases(per_case_rows: list[dict], count: int) -> list[str]:
    """Up to ``count`` cases spread over the range of lesion sizes (smallest to largest non-empty)."""
    with_lesion = sorted((r for r in per_case_rows if (r.get("ref_voxels") or 0) > 0),
                         key=lambda r: r.get("ref_voxels") or 0)
    if not with_lesion or count < 1:
        return []
    picks = np.unique(np.linspace(0, len(with_lesion) - 1, min(count, len(with_lesion))).round().astype(int))
    return [with_lesion[i]["case_id"] for i in picks]


def _slice_figure(raw_dir: Path, runs: dict[str, list[FoldRun]], per_case: dict[str, list[dict]],
                  case_fold: dict[str, int], count: int, path: Path, title: str) -> None:
    first = next(iter(per_case.values()))
    chosen = figure_cases(first, count)
    if not chosen:
        log.info("no validation case has a lesion: slices.png not drawn")
        return
    dataset = load_dataset_json(raw_dir)
    ending = dataset.file_ending
    adc_k = adc_zadc_channels(dataset.channel_names)[0] or 0  # the ADC map, else the first channel
    adc, reference, spacing = {}, {}, {}
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for case in chosen:
        adc[case], geometry = read_image(raw_dir / "imagesTr" / channel_file_name(case, adc_k, ending))
        reference[case], _ = read_image(raw_dir / "labelsTr" / f"{case}{ending}", dtype=np.uint8)
        spacing[case] = geometry.spacing_zyx
        for name, fold_runs in runs.items():
            run = next(r for r in fold_runs if r.fold == case_fold[case])
            predictions.setdefault(name, {})[case], _ = read_image(run.fold_dir / "validation" / f"{case}{ending}",
                                                                   dtype=np.uint8)
    report.plot_slices(adc, reference, predictions, path, spacing_zyx=spacing, title=title,
                       channel_name=dataset.channel_names[adc_k])


def _write_report(out: Path, title: str, rows: list[dict], per_case: dict[str, list[dict]], tests: list[dict],
                  reference: str, wall_seconds: float, options: LossStudyOptions) -> None:
    by_method = {r["method"]: r for r in rows}
    lines = [f"# {title}", "",
             f"Wall time of the study (training, prediction, scoring): {wall_seconds / 60:.1f} min.",
             "Scores are per case in native geometry (Dice, MASD in mm, NSD at 2 mm, HD95 in mm), mean ± std over "
             "the validation cases of the folds, with the 95 % bootstrap interval of the mean in brackets (seeded "
             "percentile bootstrap); MASD and HD95 are undefined (left out) when exactly one mask is empty. "
             "Lesion recall and precision count 26-connected lesions detected. Steps per fold are epochs × "
             "iterations per epoch; training minutes are the sum of the epochs' wall times (progress.json). "
             f"The cross-validation masks were predicted with {options.training.validation_checkpoint_file} of each "
             "fold (checkpoint_best.pth is chosen on the very cases it is scored on). MASD's n is the number of "
             "cases where it is defined; the common-cases column averages it over the cases every row has.", "",
             (out / "table.md").read_text().split("\n", 2)[-1].strip(), "",
             "## Above the simple rules", "",
             "| method | ΔDice vs ZADC<-2 | ΔDice vs best rule | ΔMASD (mm, common cases) vs best rule | ΔNSD vs best rule |",
             "|---|---|---|---|---|"]
    best_rule = max(RULES, key=lambda r: by_method[r]["dice_mean"])
    for method, row in by_method.items():
        if method in RULES:
            continue
        lines.append(f"| {method} | {row['dice_mean'] - by_method[RULE_ZADC]['dice_mean']:+.3f} | "
                     f"{row['dice_mean'] - by_method[best_rule]['dice_mean']:+.3f} | "
                     f"{row['masd_common_mean'] - by_method[best_rule]['masd_common_mean']:+.2f} | "
                     f"{row['nsd_mean'] - by_method[best_rule]['nsd_mean']:+.3f} |")
    lines += ["", f"Best rule by Dice: {best_rule}. Negative ΔMASD is better.", "",
              "## By lesion volume band", "",
              (out / "bands.md").read_text().split("\n", 1)[-1].strip().replace("## ", "### "), "",
              f"## Paired Wilcoxon signed-rank tests against {reference}", "",
              "p (Holm): Holm's step-down correction over the tests of one metric.", "",
              (out / "wilcoxon.md").read_text().split("\n", 2)[-1].strip() if tests else "(one trainer only)", "",
              "## Post-processing chosen by cross-validation", "",
              (out / "postprocessing.md").read_text().strip(), "",
              "## Model + post-processing against the rule + post-processing", "",
              (out / "postprocessed_vs_rule.md").read_text().strip(), "",
              "## Figures", "", "Per-case Dice of every method:", "", "![Dice per case](dice_boxplot.png)", "",
              "![training curves](progress.png)", "",
              "Axial slices of the ADC image (cropped to the brain) with the ground truth (green) and each "
              "method's mask:", "", "![slices](slices.png)", "",
              "## How this report was made", "", *provenance_markdown(options.record(), options.training.seed), ""]
    write_text("\n".join(lines), out / "report.md")
