"""Root folders and dataset-name resolution.

The three roots come from the environment variables ``hiennu_raw``, ``hiennu_preprocessed`` and
``hiennu_results``. When a variable is unset the root defaults to a folder of the same name in the
current working directory (``./hiennu_raw`` ...), so a first run needs no setup.

A dataset is a folder ``DatasetNNN_Name``. Anywhere a dataset is asked for, the user may give the
name (``BONBID``), the full folder name (``Dataset001_BONBID``) or the number (``1``, ``001``).

A trained model is a folder ``TRAINER__PLANS__CONFIG`` inside the results folder of its dataset:
:func:`model_dir_name` builds that name and :func:`parse_model_dir_name` reads it back (the one
builder and the one parser of the convention). What a model folder holds, file by file, is
:class:`ModelFolder` (the one description of its layout)::

    TRAINER__PLANS__CONFIG/
        plans.json, dataset.json          what the predictor reads for every fold
        postprocessing.json               the post-processing chosen by cross-validation (hiennu.postprocessing)
        fold_K/                           K = 0..4 or all
            plans.json                    the plans the fold was trained with
            checkpoint_{latest,best,final}.pth, training_log.txt, progress.json, progress.png, debug.json
            validation/CASE.<ending>      the fold's cross-validation masks (no post-processing)
            validation/summary.json       their scores (and the checkpoint that predicted them)
            validation/CASE.npz           with ``--npz``: the fold's sigmoid probabilities in native geometry

Ensembles of configurations and the choice among them (``hiennu_find_best_configuration``) live beside the
model folders, as nnU-Net has them; :class:`EnsembleFolder` is their layout::

    DatasetNNN_Name/
        inference_information.json        the configuration or ensemble chosen by CV, its scores, the predict command
        ensembles/ensemble___M1___M2/     M1, M2 model folder names (TRAINER__PLANS__CONFIG), sorted; an ensemble
                                          too many to list in a file name: ensemble___N-models-DIGEST
            members.json                  the member model folders, folds and checkpoint
            postprocessing.json           the post-processing chosen on the ensemble's CV masks
            validation/CASE.<ending>      the ensemble's cross-validation masks (mean probability >= 0.5)
            validation/summary.json       their scores
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from hiennu.errors import DatasetNotFoundError, HiennuError

RAW_ENV, PREPROCESSED_ENV, RESULTS_ENV = "hiennu_raw", "hiennu_preprocessed", "hiennu_results"
_DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")
DEFAULT_PLANS_NAME = "hiennuPlans"  # the default plans identifier (hiennu.plans.PLANS_NAME is this one)
_RESERVED_PLANS_NAMES = {"plans", "dataset", "dataset_fingerprint", "splits_final"}


def _root(env: str) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser().resolve() if value else (Path.cwd() / env).resolve()


def raw_root() -> Path:
    """Folder holding raw datasets (``$hiennu_raw``, default ``./hiennu_raw``)."""
    return _root(RAW_ENV)


def preprocessed_root() -> Path:
    """Folder holding preprocessed datasets (``$hiennu_preprocessed``, default ``./hiennu_preprocessed``)."""
    return _root(PREPROCESSED_ENV)


def results_root() -> Path:
    """Folder holding trained models (``$hiennu_results``, default ``./hiennu_results``)."""
    return _root(RESULTS_ENV)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset{id:03d}_{name}``; the id must be 1..999 and the name a plain word."""
    if not 0 < int(dataset_id) < 1000:
        raise DatasetNotFoundError(f"dataset id must be between 1 and 999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise DatasetNotFoundError(f"dataset name {name!r} must be letters, digits, '_' or '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def parse_dataset_folder_name(folder: str) -> tuple[int, str] | None:
    """``Dataset001_BONBID`` -> ``(1, "BONBID")``; anything else -> None."""
    m = _DATASET_RE.match(folder)
    return (int(m.group(1)), m.group(2)) if m else None


def known_datasets(roots: list[Path] | None = None) -> list[str]:
    """Sorted dataset folder names found under the given roots (default: all three roots)."""
    roots = roots if roots is not None else [raw_root(), preprocessed_root(), results_root()]
    found = set()
    for root in roots:
        if root.is_dir():
            found.update(p.name for p in root.iterdir() if p.is_dir() and parse_dataset_folder_name(p.name))
    return sorted(found)


def resolve_dataset(identifier: str | int, roots: list[Path] | None = None) -> str:
    """Resolve a dataset name, full folder name or number to its folder name ``DatasetNNN_Name``.

    Raises :class:`DatasetNotFoundError` listing the known datasets when the identifier matches
    none or more than one.
    """
    ident = str(identifier).strip()
    candidates = known_datasets(roots)
    matches = _matches(ident, candidates)
    if len(matches) == 1:
        return matches[0]
    where = ", ".join(str(r) for r in (roots if roots is not None else [raw_root(), preprocessed_root(), results_root()]))
    known = ", ".join(candidates) if candidates else "none"
    if not matches:
        elsewhere = _found_in_other_roots(ident, roots)
        if elsewhere:
            raise DatasetNotFoundError(f"dataset {ident!r} is not under {where}, but {elsewhere}")
        raise DatasetNotFoundError(
            f"unknown dataset {ident!r}: no DatasetNNN_Name folder matches it under {where}. "
            f"Known datasets: {known}. Create one with hiennu_make_synthetic or hiennu_convert_bonbid, "
            f"or point the environment variables {RAW_ENV}/{PREPROCESSED_ENV}/{RESULTS_ENV} at your folders.")
    raise DatasetNotFoundError(
        f"dataset {ident!r} is ambiguous: it matches {', '.join(matches)}; give the full folder name"
        f"{'' if ident.isdigit() else ' or the number'}.")


def _matches(ident: str, candidates: list[str]) -> list[str]:
    """The folder names among ``candidates`` that ``ident`` (a folder name, number or name) names."""
    if parse_dataset_folder_name(ident):
        matches = [c for c in candidates if c == ident]
    elif ident.isdigit():
        matches = [c for c in candidates if parse_dataset_folder_name(c)[0] == int(ident)]
    else:
        matches = [c for c in candidates if parse_dataset_folder_name(c)[1].lower() == ident.lower()]
    return sorted(set(matches))


def _found_in_other_roots(ident: str, roots: list[Path] | None) -> str | None:
    """When ``ident`` was looked up under some of the three roots only: where else it is, and what is missing."""
    if roots is None:
        return None
    searched = {Path(r).resolve() for r in roots}
    found = {}
    for stage, root in (("raw", raw_root()), ("preprocessed", preprocessed_root()), ("results", results_root())):
        if root.resolve() in searched:
            continue
        there = _matches(ident, known_datasets([root]))
        if len(there) == 1:
            found[stage] = (root, there[0])
    if not found:
        return None
    root, name = list(found.values())[-1]  # the latest stage it reached
    plan = f"hiennu_plan_and_preprocess -d {ident}"
    train = f"hiennu_train {ident} TRAINER FOLD (or hiennu_train_default_model -d {ident})"
    if results_root().resolve() in searched:
        todo = train if "preprocessed" in found else f"{plan}, then {train}"
        return f"{name} is in {root}: it has no trained model yet; run {todo}"
    if preprocessed_root().resolve() in searched and "raw" in found:
        return f"{name} is in {found['raw'][0]}: it has not been planned and preprocessed yet; run {plan}"
    return (f"{name} is in {root}: its raw data are not under {raw_root()}; point {RAW_ENV} at the folder that "
            f"holds {name}")


def raw_dataset_dir(identifier: str | int) -> Path:
    """The raw folder of a dataset (it must exist under :func:`raw_root`)."""
    return raw_root() / resolve_dataset(identifier, [raw_root()])


def plans_file_name(plans_name: str | None = None) -> str:
    """The file of the plans called ``plans_name`` in a preprocessed dataset folder.

    The default plans (``hiennuPlans``) live in ``plans.json``; any other name in ``NAME.json``
    (nnU-Net's ``-p NAME``). Names are letters, digits, ``_`` and ``-`` without ``__`` (the model
    folder ``TRAINER__PLANS__CONFIG`` splits on it), and not a file name the folder already uses.
    """
    name = plans_name or DEFAULT_PLANS_NAME
    if (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name) or "__" in name
            or name.lower() in _RESERVED_PLANS_NAMES):
        raise HiennuError(
            f"plans name {name!r} is not allowed: use letters, digits, '_' or '-' without '__', and not one of "
            f"{', '.join(sorted(_RESERVED_PLANS_NAMES))}")
    return "plans.json" if name == DEFAULT_PLANS_NAME else f"{name}.json"


def preprocessed_data_name(plans_name: str | None, configuration: str) -> str:
    """The folder of a configuration's preprocessed cases: ``CONFIG`` for the default plans,
    ``NAME_CONFIG`` for plans ``NAME``, so edited plans never overwrite the original's data."""
    name = plans_name or DEFAULT_PLANS_NAME
    return configuration if name == DEFAULT_PLANS_NAME else f"{name}_{configuration}"


def splits_file_name(split_seed: int | None = None) -> str:
    """The folds file of a preprocessed dataset: ``splits_final.json`` (the default split, written by
    ``hiennu_plan_and_preprocess`` with seed 12345) for None, ``splits_seed{S}.json`` for another
    split seed ``S``; the default file is never rewritten for another seed."""
    if split_seed is None:
        return "splits_final.json"
    if isinstance(split_seed, bool) or int(split_seed) != split_seed or split_seed < 0:
        raise HiennuError(f"split seed must be a whole number >= 0, got {split_seed!r}")
    return f"splits_seed{int(split_seed)}.json"


def split_seed_folder(split_seed: int) -> str:
    """The folder under a dataset's results that holds models trained on the folds of ``split_seed``
    (``split_seed_{S}/TRAINER__PLANS__CONFIG``), apart from the default split's models."""
    return f"split_seed_{int(split_seed)}"


def model_dir_name(trainer: str, plans: str, configuration: str) -> str:
    """``TRAINER__PLANS__CONFIG``, the nnU-Net naming of a model folder."""
    return f"{trainer}__{plans}__{configuration}"


@dataclass(frozen=True)
class ModelDirName:
    """The parts of a model folder name ``TRAINER__PLANS__CONFIG``."""

    trainer: str
    plans: str
    configuration: str


def parse_model_dir_name(name: str) -> ModelDirName | None:
    """``TRAINER__PLANS__CONFIG`` -> :class:`ModelDirName`; anything else (not three non-empty parts) -> None."""
    parts = name.split("__")
    return ModelDirName(parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


PLANS_FILE = "plans.json"
DATASET_FILE = "dataset.json"
POSTPROCESSING_FILE = "postprocessing.json"
RULE_DIR = "baseline_zadc"  # the rule ZADC < -2's own post-processing record: DatasetNNN_Name/baseline_zadc/
PROGRESS_FILE = "progress.json"
VALIDATION_DIR = "validation"
SUMMARY_FILE = "summary.json"
PROBABILITIES_ENDING = ".npz"  # a validation case's probabilities: CASE.npz (nnU-Net's --npz)


@dataclass(frozen=True)
class ModelFolder:
    """The layout of a trained-model folder ``TRAINER__PLANS__CONFIG/`` (see the module docstring): every
    file name training, post-processing selection, prediction, model zips and the study use."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> ModelDirName | None:
        return parse_model_dir_name(self.path.name)

    @property
    def plans(self) -> Path:
        return self.path / PLANS_FILE

    @property
    def dataset_json(self) -> Path:
        return self.path / DATASET_FILE

    @property
    def postprocessing(self) -> Path:
        return self.path / POSTPROCESSING_FILE

    def fold_dir(self, fold: int | str) -> Path:
        return self.path / f"fold_{fold}"

    def fold_plans(self, fold: int | str) -> Path:
        return self.fold_dir(fold) / PLANS_FILE

    def progress(self, fold: int | str) -> Path:
        return self.fold_dir(fold) / PROGRESS_FILE

    def validation_dir(self, fold: int | str) -> Path:
        return self.fold_dir(fold) / VALIDATION_DIR

    def validation_summary(self, fold: int | str) -> Path:
        return self.validation_dir(fold) / SUMMARY_FILE

    def validation_probabilities(self, fold: int | str, case_id: str) -> Path:
        """``fold_K/validation/CASE.npz``: the case's sigmoid probabilities kept by ``hiennu_train --npz``."""
        return self.validation_dir(fold) / f"{case_id}{PROBABILITIES_ENDING}"


#: what :func:`train_command` asks of ``hiennu_train``
TRAIN, VALIDATE, CONTINUE, RETRAIN = "train", "validate", "continue", "retrain"


def train_command(model_dir: str | os.PathLike, fold: int | str, mode: str = TRAIN, npz: bool = True,
                  best: bool = False, dataset: str | None = None) -> str:
    """The ``hiennu_train`` line that makes fold ``fold`` of the model folder ``model_dir`` what an error asks for,
    ready to paste: ``hiennu_train BONBID TrainerDiceFocal 3 -c 2d --val --npz`` (``-p`` for other plans,
    ``--checkpoint best`` with ``best`` when validating, ``--trainer-module M`` for a trainer of the user's own
    module ``M``, as a fold of the folder records it: :func:`recorded_trainer_module`).

    mode: :data:`TRAIN` a fold not trained yet; :data:`VALIDATE` (``--val``) its validation again; :data:`CONTINUE`
    (``--continue``) a training cut short, to its end; :data:`RETRAIN` a fold trained otherwise, from scratch: since
    ``hiennu_train`` refuses to start over in a folder that holds a training, the line moves the fold folder aside
    first (``mv FOLD FOLD.old && hiennu_train ...``). dataset: ``DatasetNNN_Name`` or its name (default: the model
    folder's parent, or the one above ``split_seed_S/``, whose models train with ``--split-seed S``); the line names
    the dataset by its name."""
    if mode not in (TRAIN, VALIDATE, CONTINUE, RETRAIN):
        raise ValueError(f"mode must be one of {TRAIN}, {VALIDATE}, {CONTINUE}, {RETRAIN}, got {mode!r}")
    model_dir = Path(model_dir)
    parent = model_dir.resolve().parent
    seed = re.fullmatch(r"split_seed_(\d+)", parent.name)  # split_seed_folder: a model of another split's folds
    dataset = dataset or (parent.parent.name if seed else parent.name)
    parsed = parse_dataset_folder_name(dataset)
    parts = parse_model_dir_name(model_dir.name)
    words = ["hiennu_train", parsed[1] if parsed else dataset]
    if parts is None:
        words += ["TRAINER", str(fold)]
    else:
        words += [parts.trainer, str(fold), "-c", parts.configuration]
        if parts.plans != DEFAULT_PLANS_NAME:
            words += ["-p", parts.plans]
        module = recorded_trainer_module(model_dir)
        if module:
            words += ["--trainer-module", module]
    words += {VALIDATE: ["--val"], CONTINUE: ["--continue"]}.get(mode, []) + (["--npz"] if npz else [])
    if best and mode == VALIDATE:
        words += ["--checkpoint", "best"]
    if seed:
        words += ["--split-seed", seed.group(1)]
    line = " ".join(words)
    fold_dir = ModelFolder(model_dir).fold_dir(fold)
    if mode == RETRAIN and fold_dir.exists():
        line = f"mv {shlex.quote(str(fold_dir))} {shlex.quote(str(fold_dir) + '.old')} && {line}"
    return line


def recorded_trainer_module(model_dir: str | os.PathLike) -> str | None:
    """The module of the user's own trainer that trained a fold of ``model_dir`` (``debug.json``'s
    ``trainer_module``), or None for hiennu's built-in trainers, for a folder with no readable record, and for a
    trainer defined in a script run as ``__main__`` (no module can name it). ``hiennu_train`` finds only built-in
    trainers without ``--trainer-module``, so a pasted line needs it for any other."""
    for record in sorted(Path(model_dir).glob("fold_*/debug.json")):
        try:
            module = json.loads(record.read_text()).get("trainer_module")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(module, str) and module:
            return None if module == "__main__" or module.split(".")[0] == "hiennu" else module
    return None


def check_dataset_id_free(dataset_folder: str, roots: Sequence[Path], source: str | Path) -> None:
    """Refuse when another dataset under ``roots`` uses ``dataset_folder``'s number under another name.

    ``-d NNN`` must stay unambiguous across the three roots, as nnU-Net keeps an id taken in any of them: installing
    ``Dataset950_A`` beside ``Dataset950_B``, or converting ``Dataset080_BONBID`` while results of ``Dataset080_Foo``
    exist, made every later command refuse the number as ambiguous. ``source``: what is being installed or written.
    """
    parsed = parse_dataset_folder_name(dataset_folder)
    if parsed is None:
        return
    clashes = sorted({f"{p}" for root in roots if Path(root).is_dir() for p in Path(root).iterdir()
                      if p.is_dir() and p.name != dataset_folder
                      and (parse_dataset_folder_name(p.name) or (None,))[0] == parsed[0]})
    if clashes:
        raise HiennuError(f"{source}: its dataset {dataset_folder} has id {parsed[0]:03d}, which is already used by "
                          f"{', '.join(clashes)}; choose another id, use roots without that dataset (set hiennu_results, "
                          f"hiennu_raw, hiennu_preprocessed), or rename one of them so each number names one dataset")


def named_path(path: str | os.PathLike) -> Path:
    """``path`` absolute, with its parent resolved on disk and its own name kept: a model folder reached through a
    link keeps the link's name (which names its trainer, plans and configuration), while ``..`` after a link and
    ``.``, ``..`` or ``""`` as the folder itself are followed as the file system follows them."""
    path = Path(path).expanduser()
    if path.name in ("", ".", ".."):
        return path.resolve()
    return Path(os.path.realpath(path.parent)) / path.name


INFERENCE_INFORMATION_FILE = "inference_information.json"
ENSEMBLES_DIR = "ensembles"
ENSEMBLE_MEMBERS_FILE = "members.json"
_ENSEMBLE_PREFIX, _ENSEMBLE_SEPARATOR = "ensemble", "___"


#: The longest file name most file systems take (bytes; ext4, XFS, APFS, NTFS): an ensemble folder's name lists its
#: members when they fit in it.
MAX_FILE_NAME_BYTES = 255
_HASHED_ENSEMBLE_RE = re.compile(r"^ensemble___(\d+)-models-([0-9a-f]{16})$")


def ensemble_dir_name(model_dir_names: list[str]) -> str:
    """The ensemble folder's name for the member model folder names (sorted, so the order given does not matter).

    ``ensemble___M1___M2...`` when that fits in :data:`MAX_FILE_NAME_BYTES` (with BONBID's model names, up to five
    or six members); else ``ensemble___N-models-H``, N the number of members and H the first 16 hex digits of the
    SHA-256 of their sorted names, one per line. Why a digest: the listing would be longer than a file name may
    be, and a digest of the members keeps the name a function of them, so a ``members.json`` that disagrees with
    its folder is still caught (:func:`hiennu.inference.ensemble_members.load_ensemble_members`); such a folder's
    members are read from its ``members.json`` only."""
    names = sorted(str(n) for n in model_dir_names)
    if len(names) < 2 or len(set(names)) != len(names) or any(parse_model_dir_name(n) is None for n in names):
        raise HiennuError(f"an ensemble needs two or more different model folders named TRAINER__PLANS__CONFIG, "
                          f"got {names}")
    name = _ENSEMBLE_SEPARATOR.join([_ENSEMBLE_PREFIX, *names])
    if len(name.encode()) <= MAX_FILE_NAME_BYTES:
        return name
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return f"{_ENSEMBLE_PREFIX}{_ENSEMBLE_SEPARATOR}{len(names)}-models-{digest}"


def parse_ensemble_dir_name(name: str) -> list[str] | None:
    """``ensemble___M1___M2...`` -> the member model folder names it lists; a digest name
    (``ensemble___N-models-H``, see :func:`ensemble_dir_name`) or anything else -> None."""
    parts = name.split(_ENSEMBLE_SEPARATOR)
    if parts[0] != _ENSEMBLE_PREFIX or len(parts) < 3 or any(parse_model_dir_name(p) is None for p in parts[1:]):
        return None
    return parts[1:]


def is_ensemble_dir_name(name: str) -> bool:
    """Whether ``name`` has the form of an ensemble folder's name: listing its members, or a digest of them."""
    return parse_ensemble_dir_name(name) is not None or _HASHED_ENSEMBLE_RE.match(name) is not None


@dataclass(frozen=True)
class EnsembleFolder:
    """The layout of ``DatasetNNN_Name/ensembles/ensemble___M1___M2/`` (see the module docstring)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, dataset_results_dir: str | Path, model_dir_names: list[str]) -> "EnsembleFolder":
        return cls(Path(dataset_results_dir) / ENSEMBLES_DIR / ensemble_dir_name(model_dir_names))

    @property
    def members(self) -> Path:
        return self.path / ENSEMBLE_MEMBERS_FILE

    @property
    def postprocessing(self) -> Path:
        return self.path / POSTPROCESSING_FILE

    @property
    def validation_dir(self) -> Path:
        return self.path / VALIDATION_DIR

    @property
    def validation_summary(self) -> Path:
        return self.validation_dir / SUMMARY_FILE


@contextlib.contextmanager
def use_roots(raw: str | os.PathLike, preprocessed: str | os.PathLike,
              results: str | os.PathLike) -> Iterator[None]:
    """Point the three roots at the given folders for the duration of a ``with`` block.

    Sets the environment variables (so worker processes started inside the block inherit them)
    and restores the previous values afterwards.
    """
    saved = {env: os.environ.get(env) for env in (RAW_ENV, PREPROCESSED_ENV, RESULTS_ENV)}
    for env, value in ((RAW_ENV, raw), (PREPROCESSED_ENV, preprocessed), (RESULTS_ENV, results)):
        Path(value).mkdir(parents=True, exist_ok=True)
        os.environ[env] = str(Path(value).resolve())
    try:
        yield
    finally:
        for env, value in saved.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value
