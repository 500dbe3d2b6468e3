"""``hiennu_find_best_configuration``: every trained configuration and every ensemble of them, scored by
cross-validation; the best chosen, its post-processing chosen on top, the prediction command written down.

nnU-Net's ``nnUNetv2_find_best_configuration``, on hiennu's files:

1. The models are every combination of the trainers, plans and configurations asked for
   (``$hiennu_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG``). Each is checked before anything is read
   or written (:mod:`hiennu.ensembling.cv_probabilities`): every fold of ``splits_final.json`` asked for
   trained and validated with its probabilities (``--npz``), all on the same dataset and splits and with
   the same checkpoint.
2. Every case of the pooled folds is scored (:func:`hiennu.ensembling.cv_scores.score_case`, in ``-np``
   worker processes) for each model alone (its probabilities >= 0.5, which must be its validation masks),
   each ensemble of two or more (the members' mean probability >= 0.5,
   :mod:`hiennu.ensembling.ensemble_cv`) and, as a reference that is never chosen, the rule ZADC < -2 inside
   the brain.
3. The best candidate by mean Dice is chosen (ties: fewer members, then the name), then its post-processing
   on its CV masks (:mod:`hiennu.ensembling.chosen_postprocessing`), with the nested estimate beside the
   pooled one.
4. Only then is anything written: each ensemble's CV masks, ``summary.json`` and ``members.json`` into its
   :class:`~hiennu.paths.EnsembleFolder` (staged in a hidden folder until then), the post-processing record,
   and ``inference_information.json`` (:mod:`hiennu.ensembling.inference_information`) last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from hiennu.ensembling.chosen_postprocessing import PostprocessingOutcome, settle_postprocessing
from hiennu.ensembling.cv_probabilities import (ModelCV, check_comparable, collect_model_cv, split_validation_cases,
                                                train_command)
from hiennu.ensembling.cv_scores import (RULE_NAME, CaseJob, EnsembleOutput, MemberFiles, json_safe, score_case,
                                        summaries, write_cv_summary)
from hiennu.ensembling.ensemble_cv import ENSEMBLE, MODEL, Candidate, EnsembleStaging, candidates, members_record
from hiennu.ensembling.inference_information import (RULE, CandidateScores, ChosenConfiguration, InferenceInformation,
                                                     candidate_scores, predict_command)
from hiennu.errors import HiennuError
from hiennu.io.atomic import write_json
from hiennu.io.cases import channel_file_name
from hiennu.io.channels import adc_zadc_channels
from hiennu.io.dataset_json import DatasetJson, load_dataset_json
from hiennu.log import get_logger
from hiennu.parallel import parallel_map
from hiennu.paths import (DEFAULT_PLANS_NAME, ENSEMBLES_DIR, SUMMARY_FILE, ModelFolder, model_dir_name,
                          preprocessed_root, raw_root, resolve_dataset, results_root, splits_file_name)
from hiennu.postprocessing.selection import select_on_masks, select_postprocessing
from hiennu.provenance import provenance

log = get_logger(__name__)

DEFAULT_TRAINER = "TrainerDiceFocal"  # the trainer of the README's default model (nnU-Net: nnUNetTrainer)
DEFAULT_FOLDS = (0, 1, 2, 3, 4)


@dataclass
class FindBestOptions:
    """What ``hiennu_find_best_configuration`` compares. dataset: name, ``DatasetNNN_Name`` or number;
    configurations / trainers / plans: every combination is one model; folds: the folds of ``splits_final.json``
    pooled; ensembles: also score every ensemble of two or more models; num_processes: worker processes
    for scoring the cases."""

    dataset: str
    configurations: Sequence[str]
    trainers: Sequence[str] = (DEFAULT_TRAINER,)
    plans: Sequence[str] = (DEFAULT_PLANS_NAME,)
    folds: Sequence[int] = DEFAULT_FOLDS
    ensembles: bool = True
    num_processes: int = 2

    def __post_init__(self) -> None:
        self.configurations, self.trainers, self.plans = (list(dict.fromkeys(map(str, v))) for v in
                                                          (self.configurations, self.trainers, self.plans))
        if not self.configurations or not self.trainers or not self.plans:
            raise HiennuError("name at least one configuration (-c), trainer (-tr) and plans (-p)")
        if not self.folds or any(isinstance(f, bool) or int(f) != f or f < 0 for f in self.folds):
            raise HiennuError(f"-f: folds must be whole numbers >= 0, got {list(self.folds)}")
        self.folds = sorted(set(int(f) for f in self.folds))
        if self.num_processes < 1:
            raise HiennuError(f"-np must be at least 1, got {self.num_processes}")

    def model_names(self) -> list[str]:
        return list(dict.fromkeys(model_dir_name(t, p, c) for t in self.trainers for p in self.plans
                                  for c in self.configurations))


@dataclass
class BestConfiguration:
    """What a run found: the record it wrote (:class:`~hiennu.ensembling.inference_information.InferenceInformation`),
    where, and the post-processing outcome."""

    information: InferenceInformation
    path: Path
    postprocessing: PostprocessingOutcome
    ensemble_folders: list[Path] = field(default_factory=list)


def choose_best(scored: Sequence[CandidateScores]) -> CandidateScores:
    """The candidate of the highest mean Dice; ties: fewer members, then the name (alphabetical)."""
    if not scored:
        raise HiennuError("no candidate to choose from")
    return min(scored, key=lambda c: (-c.mean("dice"), len(c.members), c.name))


def _raw_files(raw_dir: Path, raw: DatasetJson, case_ids: Sequence[str]) -> dict[str, tuple[Path, Path | None,
                                                                                              Path | None]]:
    """Case -> (label, ADC, ZADC) files of the raw dataset; each must exist."""
    ending = raw.file_ending
    adc_k, zadc_k = adc_zadc_channels(raw.channel_names)
    out = {}
    for case in case_ids:
        label = raw_dir / "labelsTr" / f"{case}{ending}"
        files = [label] + [None if k is None else raw_dir / "imagesTr" / channel_file_name(case, k, ending)
                           for k in (adc_k, zadc_k)]
        missing = next((f for f in files if f is not None and not f.is_file()), None)
        if missing is not None:
            raise HiennuError(f"case {case}: {missing} not found; give the raw dataset the models were trained on")
        out[case] = tuple(files)
    return out


def _jobs(models: Sequence[ModelCV], ensembles: Sequence[Candidate], staging: EnsembleStaging,
          raw_files: dict, ending: str, dataset: str) -> list[tuple[CaseJob]]:
    """One :class:`~hiennu.ensembling.cv_scores.CaseJob` per case, each ensemble's mask going to the staging."""
    index = {m.name: i for i, m in enumerate(models)}
    fold_of = models[0].fold_of
    jobs = []
    for case in sorted(fold_of):
        label, adc, zadc = raw_files[case]
        members = tuple(MemberFiles(m.name, m.probabilities(case), m.mask(case, ending), m.size_rule,
                                    train_command(dataset, m.path, m.fold_of[case], True, m.checkpoint))
                        for m in models)
        outputs = tuple(EnsembleOutput(e.name, tuple(index[n] for n in e.members),
                                       max(models[index[n]].size_rule for n in e.members),
                                       staging.validation_dir(e) / f"{case}{ending}") for e in ensembles)
        jobs.append((CaseJob(case, fold_of[case], label, adc, zadc, members, outputs),))
    return jobs


def _score(models: Sequence[ModelCV], all_candidates: Sequence[Candidate], staging: EnsembleStaging, raw: DatasetJson,
           raw_dir: Path, dataset: str, num_processes: int) -> tuple[list[CandidateScores], CandidateScores | None]:
    """Every candidate's and the rule's scores over the pooled cases; each ensemble's masks and ``summary.json``
    written into the staging."""
    ensembles = [c for c in all_candidates if c.kind == ENSEMBLE]
    raw_files = _raw_files(raw_dir, raw, sorted(models[0].fold_of))
    rows = parallel_map(score_case, _jobs(models, ensembles, staging, raw_files, raw.file_ending, dataset),
                        num_processes, desc="scoring configurations")
    scored = [candidate_scores(c.name, c.kind, c.members, c.name if c.kind == MODEL else f"{ENSEMBLES_DIR}/{c.name}",
                               summaries([r[c.name] for r in rows])) for c in all_candidates]
    reference = (candidate_scores(RULE_NAME, RULE, (), None, summaries([r[RULE_NAME] for r in rows]))
                 if all(RULE_NAME in r for r in rows) else None)
    for e in ensembles:
        write_cv_summary([r[e.name] for r in rows], staging.validation_dir(e) / SUMMARY_FILE,
                         {"members": list(e.members), "folds": models[0].folds, "checkpoint": models[0].checkpoint,
                          "threshold": "mean of the members' probabilities >= 0.5"})
    return scored, reference


def _postprocessing(winner: Candidate, models: Sequence[ModelCV], staging: EnsembleStaging,
                    raw_dir: Path, ending: str) -> PostprocessingOutcome:
    """The winner's post-processing chosen on its CV masks (a model's validation masks, as
    ``hiennu_determine_postprocessing`` chooses it; an ensemble's staged masks), and where it goes."""
    by_name = {m.name: m for m in models}
    folds, fold_of, checkpoint = models[0].folds, models[0].fold_of, models[0].checkpoint
    details: dict = {}
    if winner.kind == MODEL:
        model = by_name[winner.name]
        record = select_postprocessing(model.path, raw_dir, folds, write=False, details=details)
        return settle_postprocessing(record, ModelFolder(model.path).postprocessing, details["cases"], fold_of,
                                     keep_existing=True)
    masks = {case: staging.validation_dir(winner) / f"{case}{ending}" for case in fold_of}
    folder = staging.folder(winner)
    record = select_on_masks(masks, dict(fold_of), raw_dir, max(by_name[n].size_rule for n in winner.members),
                             {str(f): checkpoint for f in folds}, folder.path, details=details)
    return settle_postprocessing(record, folder.postprocessing, details["cases"], fold_of, keep_existing=False)


def find_best_configuration(options: FindBestOptions) -> BestConfiguration:
    """Check, score, choose, choose the post-processing, then write (see the module docstring); returns what was
    written. Raises :class:`HiennuError` (one line, with the fix) before writing anything."""
    dataset = resolve_dataset(options.dataset, [results_root()])
    results_dir = results_root() / dataset
    raw_dir = raw_root() / resolve_dataset(options.dataset, [raw_root()])
    preprocessed_dir = preprocessed_root() / dataset
    folds = list(options.folds)
    split_cases = split_validation_cases(preprocessed_dir, folds)
    models = [collect_model_cv(results_dir / name, folds, dataset) for name in options.model_names()]
    raw = load_dataset_json(raw_dir)
    check_comparable(models, split_cases, raw, dataset, preprocessed_dir / splits_file_name())
    all_candidates = candidates([m.name for m in models], options.ensembles)
    ensembles = [c for c in all_candidates if c.kind == ENSEMBLE]
    checkpoint = models[0].checkpoint
    staging = EnsembleStaging(results_dir)
    try:
        scored, reference = _score(models, all_candidates, staging, raw, raw_dir, dataset, options.num_processes)
        best = choose_best(scored)
        winner = next(c for c in all_candidates if c.name == best.name)
        outcome = _postprocessing(winner, models, staging, raw_dir, raw.file_ending)
        chosen = ChosenConfiguration(winner.name, winner.kind, winner.members, tuple(folds), checkpoint, best.path,
                                     json_safe(outcome.to_dict(results_dir)))
        information = InferenceInformation(
            dataset, tuple(folds), tuple(sorted(models[0].fold_of)), tuple(scored), reference, chosen,
            predict_command(dataset, chosen, results_dir),
            provenance({"dataset": dataset, "configurations": options.configurations, "trainers": options.trainers,
                        "plans": options.plans, "folds": folds, "ensembles": options.ensembles}))
        # everything is computed and checked: now write, the record that points at the rest last
        committed = [staging.commit(e, members_record(e, folds, checkpoint)).path for e in ensembles]
        if outcome.to_write is not None:
            write_json(outcome.to_write, outcome.path)
        path = information.save(results_dir)
    finally:
        staging.discard()
    log.info("chosen by cross-validation: %s (mean Dice %.4f); post-processing %s (%s); written to %s",
             best.name, best.mean("dice"), outcome.record["chosen_name"], outcome.action, path)
    return BestConfiguration(information, path, outcome, committed)
