"""The rule ``ZADC < -2`` with its post-processing, as a folder that predicts like a trained model.

On the 37 BONBID dev cases the rule given one post-processing recipe (the ADC cap and the lesion filter, chosen by
cross-validation) scores above every network trained so far (documentation/results.md, session 33), so
``hiennu_find_best_configuration --rule-candidate`` may choose it, and what it chose has to ship like a model:
``hiennu_predict -m FOLDER``, ``hiennu_export_model`` / ``hiennu_install_model`` and the challenge container.
The folder is ``$hiennu_results/DatasetNNN_Name/baseline_zadc/``::

    rule.json             {"format": "hiennu-rule", "format_version": 1, "rule": "zadc", "threshold": -2.0}
    dataset.json          the raw dataset's, for its channel names (ADC and ZADC must be among them)
    postprocessing.json   the record chosen on the rule's cross-validation masks (optional: without it, the bare rule)

``rule.json`` is written last, so a folder is a rule folder only once it is complete. The rule needs no weights
and no plans; the threshold is on the ZADC map's atlas z-score scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json_file, write_json
from hiennu.io.dataset_json import DatasetJson, load_dataset_json
from hiennu.io.channels import adc_zadc_channels
from hiennu.masks import RULE_THRESHOLD
from hiennu.paths import DATASET_FILE, POSTPROCESSING_FILE
from hiennu.postprocessing.record import PostProcessing, load_record_file, postprocessing_from_record

RULE_FILE = "rule.json"
RULE_FORMAT = "hiennu-rule"
RULE_FORMAT_VERSION = 1
RULES = ("zadc",)


@dataclass(frozen=True)
class RuleSpec:
    """Which rule: ``zadc`` (lesion where ZADC < ``threshold`` inside the brain, ADC != 0)."""

    rule: str = "zadc"
    threshold: float = RULE_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return {"format": RULE_FORMAT, "format_version": RULE_FORMAT_VERSION, "rule": self.rule,
                "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "RuleSpec":
        if not isinstance(d, dict) or d.get("format") != RULE_FORMAT:
            raise HiennuError(f"{source}: not a rule record (format {RULE_FORMAT!r} expected); write the folder again "
                              f"with hiennu_determine_postprocessing --rule")
        if d.get("format_version") != RULE_FORMAT_VERSION:
            raise HiennuError(f"{source}: rule record version {d.get('format_version')!r}; this hiennu reads "
                              f"{RULE_FORMAT_VERSION} (update hiennu, or write the folder again)")
        rule, threshold = d.get("rule"), d.get("threshold", RULE_THRESHOLD)
        if rule not in RULES:
            raise HiennuError(f"{source}: unknown rule {rule!r}; known: {', '.join(RULES)}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold:
            raise HiennuError(f"{source}: threshold must be a number (ZADC z-score), got {threshold!r}")
        return cls(rule, float(threshold))


@dataclass(frozen=True)
class RuleFolder:
    """A rule folder read into memory: its path, the rule, the dataset's channel names and the post-processing
    (None without a record)."""

    path: Path
    spec: RuleSpec
    dataset: DatasetJson
    postprocessing: PostProcessing | None


def check_rule_postprocessing(post: PostProcessing | None, source: str) -> None:
    """A rule has no network to ask: a post-processing whose lesion filter reads a network's probabilities
    (``judged-rule``, chosen for a model) is a one-line error naming ``source``."""
    if post is not None and post.needs_probabilities:
        raise HiennuError(f"{source}: the ZADC rule has no network to ask, so it cannot apply the post-processing "
                          f"{post.name!r} (chosen for a model's probabilities); give it a record chosen for the rule "
                          f"(hiennu_determine_postprocessing --rule)")


def is_rule_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``rule.json`` (a complete rule folder; :func:`load_rule_folder` checks it)."""
    return (Path(path) / RULE_FILE).is_file()


def check_rule_dataset(dataset: DatasetJson, source: str) -> None:
    """A rule reads ADC and ZADC: both must be among the dataset's channels, else a one-line error."""
    adc_zadc_channels(dataset.channel_names, required=True, source=source)


def write_rule_folder(folder: str | Path, dataset: DatasetJson, record: dict | None,
                      spec: RuleSpec = RuleSpec()) -> Path:
    """Write (or rewrite) a rule folder: ``dataset.json``, ``postprocessing.json`` when ``record`` is given (a
    post-processing record, checked first; without one, an earlier ``postprocessing.json`` is removed, so the
    rewritten folder is the plain rule and not the old record), then ``rule.json``, each atomically; returns the
    folder."""
    folder = Path(folder)
    check_rule_dataset(dataset, f"{folder / DATASET_FILE}")
    if record is not None:
        source = f"the record for {folder / POSTPROCESSING_FILE}"
        check_rule_postprocessing(postprocessing_from_record(record, source), source)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(dataset.to_dict(), folder / DATASET_FILE)
    if record is not None:
        write_json(record, folder / POSTPROCESSING_FILE)
    else:
        (folder / POSTPROCESSING_FILE).unlink(missing_ok=True)
    write_json(spec.to_dict(), folder / RULE_FILE)
    return folder


def load_rule_folder(folder: str | Path) -> RuleFolder:
    """Read a rule folder (module docstring); a missing or malformed file is a one-line error naming it."""
    folder = Path(folder)
    if not is_rule_dir(folder):
        raise HiennuError(f"{folder}: no {RULE_FILE}; not a rule folder (hiennu_determine_postprocessing --rule or "
                          f"hiennu_find_best_configuration --rule-candidate writes one)")
    again = "write the folder again with hiennu_determine_postprocessing --rule"
    spec = RuleSpec.from_dict(read_json_file(folder / RULE_FILE, again, again), str(folder / RULE_FILE))
    if not (folder / DATASET_FILE).is_file():
        raise HiennuError(f"{folder / DATASET_FILE}: missing; a rule folder needs the dataset's channel names ({again})")
    dataset = load_dataset_json(folder)
    check_rule_dataset(dataset, str(folder / DATASET_FILE))
    post = load_record_file(folder / POSTPROCESSING_FILE) if (folder / POSTPROCESSING_FILE).is_file() else None
    check_rule_postprocessing(post, str(folder / POSTPROCESSING_FILE))
    return RuleFolder(folder, spec, dataset, post)
