"""``hiennu_find_best_configuration``: every trained configuration and every ensemble of them, scored by
cross-validation, each with its own post-processing; the best chosen, the prediction command written down.

nnU-Net's ``nnUNetv2_find_best_configuration``, on hiennu's files, with one difference (why:
:mod:`hiennu.ensembling.choice`): every candidate gets its own post-processing, and the choice is by the nested
Dice with it, not by the raw Dice (``--select-by raw`` restores nnU-Net's rule).

1. The models are every combination of the trainers, plans and configurations asked for
   (``$hiennu_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG``). Each is checked before anything is read
   or written (:mod:`hiennu.ensembling.cv_probabilities`): every fold of ``splits_final.json`` asked for
   trained and validated with its probabilities (``--npz``), all on the same dataset and splits and with
   the same checkpoint.
2. Every case of the pooled folds is scored (:func:`hiennu.ensembling.cv_scores.score_case`, in ``-np``
   worker processes) for each model alone (its probabilities >= 0.5, which must be its validation masks),
   each ensemble of two or more (the members' mean probability >= 0.5,
   :mod:`hiennu.ensembling.ensemble_cv`) and, as a reference, the rule ZADC < -2 inside the brain (a candidate
   too with ``--rule-candidate``).
3. Every candidate's post-processing is chosen on its CV masks, and the rule's on its masks with the same folds
   (:mod:`hiennu.ensembling.candidate_postprocessing`, one worker each), with pooled and nested scores.
4. The best is chosen (:mod:`hiennu.ensembling.choice`), and its nested post-processed cases are tested against
   the rule's, paired (:mod:`hiennu.ensembling.rule_comparison`). With ``--rule-candidate`` the rule with its own
   post-processing competes by the same criterion; when it wins, the best model or ensemble is the one tested
   against it, so the record says by how much the networks lose. With ``--nested-choice``, the whole choice
   (every candidate's post-processing and the candidate) is also made without each fold and applied to it, the
   estimate of step 4 that no choice on the same cases flatters (:mod:`hiennu.ensembling.nested_choice`).
5. Only then is anything written: each ensemble's CV masks, ``summary.json``, ``members.json`` and
   ``postprocessing.json`` into its :class:`~hiennu.paths.EnsembleFolder` (the masks staged in a hidden folder
   until then), each model's ``postprocessing.json`` where it has none, the rule folder
   ``baseline_zadc/`` when the rule is chosen (:mod:`hiennu.postprocessing.rule_folder`; rewritten with this run's
   choice), and ``inference_information.json`` (:mod:`hiennu.ensembling.inference_information`) last.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from hiennu.ensembling.candidate_postprocessing import (WRITTEN, PostprocessingJob, PostprocessingOutcome,
                                                        candidate_postprocessing)
from hiennu.ensembling.choice import POSTPROCESSED, RAW, RULES, SELECT_BY, choose_best, select
from hiennu.ensembling.cv_probabilities import (ModelCV, check_comparable, collect_model_cv, split_validation_cases,
                                                warn_replanned)
from hiennu.ensembling.cv_scores import (RULE_NAME, CaseJob, EnsembleOutput, MemberFiles, score_case, summaries,
                                        write_cv_summary)
from hiennu.ensembling.ensemble_cv import (ENSEMBLE, EVERY, MANY_ENSEMBLES, MODEL, RULE, Candidate, EnsembleStaging,
                                           candidates, check_max_ensemble_size, count_ensembles, ensemble_set,
                                           members_record)
from hiennu.ensembling.inference_information import (CandidateScores, ChosenConfiguration, InferenceInformation,
                                                     candidate_scores, predict_command)
from hiennu.ensembling.nested_choice import NestedChoice, check_folds, nested_choice
from hiennu.ensembling.rule_comparison import paired_test
from hiennu.errors import HiennuError
from hiennu.io.atomic import write_json
from hiennu.io.cases import channel_file_name
from hiennu.io.channels import adc_zadc_channels
from hiennu.io.checkpoint import BEST
from hiennu.io.dataset_json import DatasetJson, load_dataset_json
from hiennu.log import get_logger
from hiennu.parallel import parallel_map
from hiennu.paths import (DEFAULT_PLANS_NAME, ENSEMBLES_DIR, POSTPROCESSING_FILE, RULE_DIR, SUMMARY_FILE, VALIDATE,
                          ModelFolder, model_dir_name, parse_model_dir_name, preprocessed_root, raw_root,
                          resolve_dataset, results_root, splits_file_name, train_command)
from hiennu.postprocessing.candidates import (ALL_CANDIDATES, check_candidate_set, needs_probabilities,
                                             rule_candidate_set)
from hiennu.postprocessing.rule_folder import write_rule_folder
from hiennu.provenance import provenance

log = get_logger(__name__)

DEFAULT_TRAINER = "TrainerDiceFocal"  # the trainer of the README's default model (nnU-Net: nnUNetTrainer)
DEFAULT_FOLDS = (0, 1, 2, 3, 4)


@dataclass
class FindBestOptions:
    """What ``hiennu_find_best_configuration`` compares. dataset: name, ``DatasetNNN_Name`` or number;
    configurations / trainers / plans: every combination is one model; models: instead of them, the model folders
    by name (``TRAINER__PLANS__CONFIG``), for a set that is not every combination (two trainers on one
    configuration, one on the other); folds: the folds of ``splits_final.json`` pooled; ensembles: which
    ensembles are candidates beside the models, ``every`` one of two or more models, only the one of ``all`` the
    models, or ``none`` (:func:`~hiennu.ensembling.ensemble_cv.ensemble_set`; True and False are ``every`` and
    ``none``); max_ensemble_size: with ``every``, ensembles of at most this many members (None: any size; 2 is
    nnU-Net's pairs; n models make 2^n - n - 1 ensembles of any size); num_processes: worker processes for scoring the cases and choosing the
    candidates' post-processing; select_by: ``postprocessed`` (the nested
    Dice with post-processing, the default) or ``raw`` (nnU-Net's rule), see :mod:`hiennu.ensembling.choice`;
    nested_choice: also estimate the whole choice fully nested (:mod:`hiennu.ensembling.nested_choice`; three
    folds or more); postprocessing_candidates: what every candidate's (and the rule's) post-processing is chosen
    among (:func:`hiennu.postprocessing.selection.all_candidates`); rule_candidate: the rule ``ZADC < -2`` with its
    own post-processing is a candidate too, not only the reference (chosen, it is written as a rule folder,
    :mod:`hiennu.postprocessing.rule_folder`, that predicts and ships like a model)."""

    dataset: str
    configurations: Sequence[str] = ()
    trainers: Sequence[str] = (DEFAULT_TRAINER,)
    plans: Sequence[str] = (DEFAULT_PLANS_NAME,)
    models: Sequence[str] = ()
    folds: Sequence[int] = DEFAULT_FOLDS
    ensembles: bool | str = EVERY
    max_ensemble_size: int | None = None
    num_processes: int = 2
    select_by: str = POSTPROCESSED
    nested_choice: bool = False
    postprocessing_candidates: str = ALL_CANDIDATES
    rule_candidate: bool = False

    def __post_init__(self) -> None:
        self.models = list(map(str, self.models))
        twice = sorted(m for m, n in Counter(self.models).items() if n > 1)
        if twice:
            raise HiennuError(f"-m: {', '.join(twice)} named twice; name each model once (a typo for another model "
                              f"would turn the choice into one among fewer models)")
        if self.models:
            if self.configurations:
                raise HiennuError("-m names the models: leave out -c, -tr and -p (or name them with -c, -tr, -p alone)")
            parts = [parse_model_dir_name(name) for name in self.models]
            bad = [name for name, part in zip(self.models, parts) if part is None]
            if bad:
                raise HiennuError(f"-m: {', '.join(bad)} is not a model folder name TRAINER__PLANS__CONFIG, "
                                  "e.g. TrainerDiceFocal__hiennuPlans__2d")
            self.configurations = [part.configuration for part in parts]
            self.trainers = [part.trainer for part in parts]
            self.plans = [part.plans for part in parts]
        self.configurations, self.trainers, self.plans = (list(dict.fromkeys(map(str, v))) for v in
                                                          (self.configurations, self.trainers, self.plans))
        if not self.configurations or not self.trainers or not self.plans:
            raise HiennuError("name at least one configuration (-c), trainer (-tr) and plans (-p)")
        if not self.folds or any(isinstance(f, bool) or int(f) != f or f < 0 for f in self.folds):
            raise HiennuError(f"-f: folds must be whole numbers >= 0, got {list(self.folds)}")
        self.folds = sorted(set(int(f) for f in self.folds))
        if self.num_processes < 1:
            raise HiennuError(f"-np must be at least 1, got {self.num_processes}")
        self.ensembles = ensemble_set(self.ensembles)
        check_max_ensemble_size(self.max_ensemble_size)
        if self.max_ensemble_size is not None and self.ensembles != EVERY:
            raise HiennuError(f"--max-ensemble-size limits --ensembles every; with --ensembles {self.ensembles} "
                              f"leave it out")
        check_candidate_set(self.postprocessing_candidates)
        if self.select_by not in SELECT_BY:
            raise HiennuError(f"--select-by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.nested_choice:
            check_folds(self.folds)

    def model_names(self) -> list[str]:
        if self.models:
            return list(self.models)
        return list(dict.fromkeys(model_dir_name(t, p, c) for t in self.trainers for p in self.plans
                                  for c in self.configurations))


@dataclass
class BestConfiguration:
    """What a run found: the record it wrote (:class:`~hiennu.ensembling.inference_information.InferenceInformation`),
    where, the chosen one's post-processing outcome, every candidate's (by name; the rule's under its name when
    scored) and the ensemble folders written."""

    information: InferenceInformation
    path: Path
    postprocessing: PostprocessingOutcome
    ensemble_folders: list[Path] = field(default_factory=list)
    outcomes: dict[str, PostprocessingOutcome] = field(default_factory=dict)


__all__ = ["BestConfiguration", "FindBestOptions", "choose_best", "find_best_configuration"]


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
                                    train_command(m.path, m.fold_of[case], VALIDATE, best=m.checkpoint == BEST,
                                                  dataset=dataset))
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


def _postprocessing_jobs(models: Sequence[ModelCV], all_candidates: Sequence[Candidate], staging: EnsembleStaging,
                         raw_dir: Path, ending: str, with_rule: bool, nested_choice: str | None = None,
                         candidate_set: str = ALL_CANDIDATES, rule_candidate: bool = False) -> list[PostprocessingJob]:
    """One :class:`~hiennu.ensembling.candidate_postprocessing.PostprocessingJob` per candidate (a model's on its
    validation masks, as ``hiennu_determine_postprocessing`` chooses it; an ensemble's on its staged masks) and,
    with ``with_rule``, the rule's on its own masks over the same folds; nested_choice: the criterion, when every
    candidate's worker is to compute what the fully nested choice needs of it (the rule's too when
    ``rule_candidate``); candidate_set: what every post-processing choice is made among."""
    by_name = {m.name: m for m in models}
    folds, fold_of, checkpoint = models[0].folds, dict(models[0].fold_of), models[0].checkpoint
    jobs = []
    for c in all_candidates:
        if c.kind == MODEL:
            path = by_name[c.name].path
            jobs.append(PostprocessingJob(c.name, MODEL, fold_of, raw_dir, path, ModelFolder(path).postprocessing,
                                          nested_choice=nested_choice, candidate_set=candidate_set))
        else:
            folder = staging.folder(c)
            jobs.append(PostprocessingJob(
                c.name, ENSEMBLE, fold_of, raw_dir, folder.path, folder.postprocessing,
                {case: staging.validation_dir(c) / f"{case}{ending}" for case in fold_of},
                max(by_name[n].size_rule for n in c.members), {str(f): checkpoint for f in folds}, nested_choice,
                candidate_set,
                {case: tuple(by_name[n].probabilities(case) for n in c.members) for case in fold_of}
                if needs_probabilities(candidate_set) else None))
    if with_rule:
        jobs.append(PostprocessingJob(RULE_NAME, RULE, fold_of, raw_dir, Path(RULE_NAME), None,
                                      nested_choice=nested_choice if rule_candidate else None,
                                      candidate_set=rule_candidate_set(candidate_set)))
    return jobs


def _nested_choice(scored: Sequence[CandidateScores], outcomes: dict[str, PostprocessingOutcome],
                   select_by: str) -> NestedChoice:
    """The fully nested estimate of choosing among ``scored`` by ``select_by``, tested against the rule + its nested
    post-processing when the rule was scored."""
    rule = outcomes.get(RULE_NAME)
    return nested_choice(scored, {s.name: outcomes[s.name].choice_inputs for s in scored}, select_by,
                         None if rule is None else RULE_NAME, None if rule is None else rule.nested_rows)


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
    warn_replanned(models, preprocessed_dir)
    all_candidates = candidates([m.name for m in models], options.ensembles, options.max_ensemble_size)
    ensembles = [c for c in all_candidates if c.kind == ENSEMBLE]
    if len(ensembles) > MANY_ENSEMBLES:
        log.warning("%d models make %d ensembles to score, each with its own post-processing chosen and %d CV masks "
                    "written; for fewer: --max-ensemble-size 2 (nnU-Net's pairs: %d), --ensembles all (one ensemble "
                    "of all %d) or fewer models with -m", len(models), len(ensembles),
                    sum(len(c) for c in split_cases.values()), count_ensembles(len(models), 2), len(models))
    if options.select_by != RAW or (options.ensembles == EVERY and options.max_ensemble_size != 2):
        log.info("choosing by %s, among the models and %s; nnU-Net chooses by raw Dice among the models and their "
                 "pairs (--select-by raw --max-ensemble-size 2)", RULES[options.select_by],
                 f"{len(ensembles)} ensemble(s)" if ensembles else "no ensemble")
    checkpoint = models[0].checkpoint
    for folder in [results_dir] + [m.path for m in models]:  # every folder it writes into, checked before scoring
        if not os.access(folder, os.W_OK):
            raise HiennuError(f"{folder}: cannot be written (read-only?), and the choice writes into it (the models' "
                              f"postprocessing.json, the ensembles, inference_information.json); make it writable, or "
                              f"run on a writable copy of {results_dir}")
    staging = EnsembleStaging(results_dir)
    try:
        raw_scored, raw_reference = _score(models, all_candidates, staging, raw, raw_dir, dataset,
                                           options.num_processes)
        if options.rule_candidate and raw_reference is None:
            raise HiennuError(f"--rule-candidate: {raw_dir / 'dataset.json'} has no ADC and ZADC channels for the rule "
                              f"ZADC < -2; leave out --rule-candidate")
        jobs = _postprocessing_jobs(models, all_candidates, staging, raw_dir, raw.file_ending,
                                    raw_reference is not None, options.select_by if options.nested_choice else None,
                                    options.postprocessing_candidates, options.rule_candidate)
        outcomes = {job.name: outcome for job, outcome in zip(jobs, parallel_map(
            candidate_postprocessing, [(job,) for job in jobs], options.num_processes,
            desc="post-processing per candidate"))}
        scored = [candidate_scores(s.name, s.kind, s.members, s.path, s.metrics,
                                   outcomes[s.name].to_dict(results_dir)) for s in raw_scored]
        reference = (None if raw_reference is None else
                     candidate_scores(RULE_NAME, RULE, (), RULE_DIR if options.rule_candidate else None,
                                      raw_reference.metrics, outcomes[RULE_NAME].to_dict(results_dir)))
        pool = list(scored) + ([reference] if options.rule_candidate else [])
        best, selection = select(pool, options.select_by)
        outcome = outcomes[best.name]
        if best.kind == RULE:  # chosen, the rule's record is written into its folder
            outcome.path, outcome.action = results_dir / RULE_DIR / POSTPROCESSING_FILE, WRITTEN
            reference = best = candidate_scores(RULE_NAME, RULE, (), RULE_DIR, raw_reference.metrics,
                                                outcome.to_dict(results_dir))
            chosen = ChosenConfiguration(RULE_NAME, RULE, (), tuple(folds), None, RULE_DIR, best.postprocessing)
            runner_up = choose_best(scored, options.select_by)  # the test: the best model or ensemble against it
            test = paired_test(runner_up.name, outcomes[runner_up.name], RULE_NAME, outcome)
        else:
            winner = next(c for c in all_candidates if c.name == best.name)
            chosen = ChosenConfiguration(winner.name, winner.kind, winner.members, tuple(folds), checkpoint,
                                         best.path, best.postprocessing)
            test = None if reference is None else paired_test(winner.name, outcome, RULE_NAME, outcomes[RULE_NAME])
        fully_nested = _nested_choice(pool, outcomes, options.select_by) if options.nested_choice else None
        information = InferenceInformation(
            dataset, tuple(folds), tuple(sorted(models[0].fold_of)), tuple(scored), reference, chosen,
            predict_command(dataset, chosen, results_dir), selection, test,
            provenance({"dataset": dataset, "configurations": options.configurations, "trainers": options.trainers,
                        "plans": options.plans, "models": options.model_names(), "folds": folds,
                        "ensembles": options.ensembles, "max_ensemble_size": options.max_ensemble_size,
                        "select_by": options.select_by,
                        "nested_choice": options.nested_choice,
                        "postprocessing_candidates": options.postprocessing_candidates,
                        "rule_candidate": options.rule_candidate}),
            fully_nested)
        # everything is computed and checked: now write, the record that points at the rest last
        committed = []
        for e in ensembles:
            folder = staging.commit(e, members_record(e, folds, checkpoint), outcomes[e.name].record)
            committed.append(folder.path)
        for c in all_candidates:
            if c.kind == MODEL and outcomes[c.name].to_write is not None:
                write_json(outcomes[c.name].to_write, outcomes[c.name].path)
        if chosen.kind == RULE:
            write_rule_folder(results_dir / RULE_DIR, raw, outcome.record)
        path = information.save(results_dir)
    finally:
        staging.discard()
    log.info("chosen by cross-validation among %d candidate%s (%s): %s (nested Dice with post-processing %.4f, raw "
             "%.4f); post-processing %s (%s); written to %s", selection.num_candidates,
             "s" if selection.num_candidates != 1 else "", selection.criterion, best.name,
             best.nested_mean("dice"), best.mean("dice"), outcome.record["chosen_name"], outcome.action, path)
    if fully_nested is not None:
        log.info("fully nested choice (%s): mean Dice %.4f over %d cases (%.4f without post-processing); chosen "
                 "per outer fold: %s", fully_nested.criterion, fully_nested.metrics["dice"]["mean"],
                 len(fully_nested.per_case), fully_nested.raw_metrics["dice"]["mean"],
                 ", ".join(f"{f}: {name}" for f, name in fully_nested.choices.items()))
    return BestConfiguration(information, path, outcome, committed, outcomes)
