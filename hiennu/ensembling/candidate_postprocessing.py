"""The post-processing of the chosen configuration, chosen on its cross-validation masks.

The choice is :mod:`hiennu.postprocessing.selection`'s, the one ``hiennu_determine_postprocessing`` makes:
every candidate scored on the pooled CV masks, the best that beats no post-processing kept, and the nested
estimate (each fold's choice made on the other folds only) beside it. For one model the masks are its
folds' validation masks (so the record is the one ``hiennu_determine_postprocessing`` writes); for an
ensemble, its CV masks (:mod:`hiennu.ensembling.ensemble_cv`).

Where it goes: an ensemble's folder always takes the new record. A model folder takes it when it has no
``postprocessing.json`` yet; one already there is never replaced: when it records the same choice it stays
as it is, and when it records another (chosen on other masks, or edited) it is kept and the difference said,
so the user decides (delete it and run again to replace it). The scores reported are those of the record in
force: pooled (its choice on every case) and nested (each fold's own choice on the fold's cases).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hiennu.ensembling.cv_scores import TABLE_METRICS, summaries
from hiennu.errors import HiennuError
from hiennu.evaluation.metrics import case_metrics
from hiennu.io.atomic import read_json_file
from hiennu.postprocessing.record import PostProcessing, postprocessing_from_record
from hiennu.postprocessing.selection import CaseImages

WRITTEN, IDENTICAL, KEPT = "written", "identical record already there", "kept the existing record"


@dataclass
class PostprocessingOutcome:
    """The post-processing in force for the chosen configuration.

    record: the record in force (the new one, or the one kept); path: its file; action: :data:`WRITTEN` (to
    write now), :data:`IDENTICAL` or :data:`KEPT`; new_choice: the name of this run's choice (differs from the
    record's when an existing record was kept); pooled / nested: metric -> summary over the cases of the record
    in force (nested None when the record has no choice for some fold).
    """

    record: dict
    path: Path
    action: str
    new_choice: str
    pooled: dict[str, dict]
    nested: dict[str, dict] | None

    @property
    def to_write(self) -> dict | None:
        """The record to write at the end of the run, or None."""
        return self.record if self.action == WRITTEN else None

    def to_dict(self, relative_to: Path) -> dict[str, Any]:
        return {"record": self.path.relative_to(relative_to).as_posix(), "chosen_name": self.record["chosen_name"],
                "action": self.action, "this_run_choice": self.new_choice, "pooled": self.pooled,
                "nested": self.nested}


def _without_provenance(record: Mapping) -> Any:
    """The record as it reads back from JSON, less its provenance (versions, commit, paths: not the choice)."""
    plain = {k: v for k, v in record.items() if k != "provenance"}
    return json.loads(json.dumps(plain, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def record_scores(record: dict, cases: Mapping[str, CaseImages],
                  fold_of: Mapping[str, int]) -> tuple[dict[str, dict], dict[str, dict] | None]:
    """(pooled, nested) metric summaries of a post-processing record on ``cases``: pooled applies its
    ``chosen`` to every case; nested applies each fold's ``nested.chosen_per_fold`` to that fold's cases
    (None when the record has no choice for one of the folds)."""
    source = "postprocessing record"
    chosen = postprocessing_from_record(record, source)
    pooled = [_metrics(cases[c], chosen) for c in sorted(cases)]
    per_fold = (record.get("nested") or {}).get("chosen_per_fold") or {}
    if not all(str(f) in per_fold for f in set(fold_of.values())):
        return summaries(pooled), None
    fold_posts = {f: PostProcessing.from_dict(per_fold[str(f)], source) for f in set(fold_of.values())}
    nested = [_metrics(cases[c], fold_posts[fold_of[c]]) for c in sorted(cases)]
    return summaries(pooled), summaries(nested)


def _metrics(case: CaseImages, post: PostProcessing) -> dict[str, float]:
    m = case_metrics(case.ref, case.postprocessed(post), case.spacing_zyx)
    return {k: float(m[k]) for k in TABLE_METRICS}


def settle_postprocessing(new: dict, path: Path, cases: Mapping[str, CaseImages], fold_of: Mapping[str, int],
                          keep_existing: bool) -> PostprocessingOutcome:
    """Decide which record is in force at ``path`` (see the module docstring) and score it.

    new: this run's record (:func:`~hiennu.postprocessing.selection.select_on_masks`); keep_existing: a model
    folder (an existing record is never replaced) rather than an ensemble folder (it always takes the new one).
    """
    record, action = new, WRITTEN
    if keep_existing and path.is_file():
        existing = read_json_file(path, "", "delete it and run again to choose it anew")
        postprocessing_from_record(existing, str(path))  # a record we cannot apply is an error, not a keeper
        if _without_provenance(existing) == _without_provenance(new):
            record, action = existing, IDENTICAL
        else:
            record, action = existing, KEPT
    try:
        pooled, nested = record_scores(record, cases, fold_of)
    except HiennuError as e:
        raise HiennuError(f"{path}: {e}; delete it and run again to choose it anew") from None
    return PostprocessingOutcome(record, path, action, new["chosen_name"], pooled, nested)
