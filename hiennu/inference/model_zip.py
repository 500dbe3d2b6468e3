"""Sharing trained models (and the rule folder) as zip files: export, verify, load and install.

A model zip holds one model folder and a manifest::

    manifest.json                                  format, model, checkpoint, folds, SHA-256 of every file
    DatasetNNN_Name/TRAINER__PLANS__CONFIG/plans.json
    DatasetNNN_Name/TRAINER__PLANS__CONFIG/dataset.json
    DatasetNNN_Name/TRAINER__PLANS__CONFIG/postprocessing.json                 (when the model folder has one)
    DatasetNNN_Name/TRAINER__PLANS__CONFIG/fold_K/checkpoint_final.pth  {"network_weights": ..., "epoch": ...}

A zip of an ensemble of configurations (``hiennu_export_model -m A B``) holds every member model folder
as above (the same folds and checkpoint each) and the ensemble folder, under a manifest of format
``hiennu-ensemble`` that lists them::

    manifest.json                                  format, ensemble, models, checkpoint, folds, SHA-256 of every file
    DatasetNNN_Name/T__P__2d/...                   as above, one folder per member
    DatasetNNN_Name/T__P__3d_fullres/...
    DatasetNNN_Name/ensembles/ensemble___T__P__2d___T__P__3d_fullres/members.json         members, folds, checkpoint
    DatasetNNN_Name/ensembles/ensemble___T__P__2d___T__P__3d_fullres/postprocessing.json  (when the ensemble has one)

A single model's zip keeps the format above exactly, so zips written before ensembles existed still load.

A rule folder (:mod:`hiennu.postprocessing.rule_folder`: the rule ZADC < -2 with the post-processing chosen for it,
no weights) ships as a zip of format ``hiennu-rule`` (:func:`export_rule_zip`; it cannot be ensembled with models)::

    manifest.json                                  format, format_version, rule, SHA-256 of every file
    DatasetNNN_Name/baseline_zadc/rule.json
    DatasetNNN_Name/baseline_zadc/dataset.json
    DatasetNNN_Name/baseline_zadc/postprocessing.json                          (when the rule folder has one)

:func:`verify_rule_zip` and :func:`load_rule_zip` read it; :func:`install_model_zip` installs it like a model.
Each loader refuses the other kind by name (a rule zip given to :func:`load_model_zip`, a model zip given to
:func:`load_rule_zip`).

The exported checkpoint is ``checkpoint_final.pth`` by default, as nnU-Net ships (``checkpoint_best.pth``
was chosen on the fold's own validation cases); the manifest names it.

Exported checkpoints keep only the network weights and plain values (no optimizer state), in
float32 or, with ``half=True``, float16 (floating-point tensors only; integer buffers such as
``num_batches_tracked`` stay as they are). Loading casts them back to float32.

A zip from someone else is untrusted input. Before anything is extracted or loaded,
:func:`verify_model_zip` refuses members with absolute paths, ``..`` components, drive letters,
backslashes or symbolic links, members outside the model folder (or, for an ensemble, outside its
member and ensemble folders), a missing or malformed manifest, a ``members.json`` that disagrees with it,
files the manifest does not list (or lists but the zip lacks), any SHA-256 mismatch, and archives
that unpack to more than :data:`MAX_UNPACKED_BYTES`; :func:`verify_rule_zip` makes the same checks (the shared
ones in :func:`_checked_zip` and :func:`_check_files`), with members only ``rule.json``, ``dataset.json`` and
``postprocessing.json`` inside the rule folder. Checkpoints are only ever read with
``torch.load(..., weights_only=True)``, so a pickle that would run code is refused, not run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import torch

from hiennu.errors import HiennuError
from hiennu.inference.ensemble_members import (EnsembleMembers, check_ensemble_complete, is_ensemble_dir,
                                               load_ensemble_members, member_dirs)
from hiennu.inference.model_registry import (default_checkpoint, default_folds, describe_model_dir, fold_sort_key,
                                             resolve_models, select_folds, set_default_model)
from hiennu.inference.network_builder import NETWORK_BUILDER_KEY, agreed_builder
from hiennu.inference.trained_configuration import check_trained_configuration
from hiennu.io.atomic import atomic_path, interrupts_deferred, staging_dir
from hiennu.io.checkpoint import FINAL, checkpoint_file, load_checkpoint
from hiennu.io.folders import INSIDE, IS, folder_relation
from hiennu.io.dataset_json import DatasetJson, load_dataset_json
from hiennu.log import get_logger
from hiennu.paths import (DATASET_FILE, ENSEMBLE_MEMBERS_FILE, ENSEMBLES_DIR, PLANS_FILE, POSTPROCESSING_FILE,
                          RULE_DIR, EnsembleFolder, ModelFolder, check_dataset_id_free, ensemble_dir_name,
                          parse_dataset_folder_name, parse_model_dir_name, preprocessed_root, raw_root, results_root)
from hiennu.plans import Plans, load_plans
from hiennu.postprocessing.record import PostProcessing, load_postprocessing, postprocessing_from_record
from hiennu.postprocessing.rule_folder import (RULE_FILE, RuleFolder, RuleSpec, check_rule_dataset,
                                               check_rule_postprocessing,
                                               is_rule_dir, load_rule_folder)

logger = get_logger(__name__)

MANIFEST = "manifest.json"
FORMAT = "hiennu-model"
FORMAT_VERSION = 1
ENSEMBLE_FORMAT = "hiennu-ensemble"  # its own name, so an older hiennu refuses it by name instead of misreading it
ENSEMBLE_FORMAT_VERSION = 1
RULE_ZIP_FORMAT = "hiennu-rule"  # a rule folder (hiennu.postprocessing.rule_folder)
RULE_ZIP_FORMAT_VERSION = 1
_RULE_MEMBERS = (RULE_FILE, DATASET_FILE, POSTPROCESSING_FILE)
MAX_UNPACKED_BYTES = 4 * 1024 ** 3
_PLAIN = (int, float, str, bool, type(None))


class ModelZipError(HiennuError):
    """A model zip that is malformed, tampered with or unsafe."""


@dataclass
class ModelZipContents:
    """A verified model zip. model: ``DatasetNNN_Name/TRAINER__PLANS__CONFIG`` (for an ensemble: its folder
    ``DatasetNNN_Name/ensembles/ensemble___M1___M2``); models: the model folders it holds (``[model]`` for one
    model, the members for an ensemble); folds: fold names, the same for every model."""

    path: Path
    model: str
    checkpoint: str
    folds: list[str]
    half_precision: bool
    files: dict[str, str]
    models: list[str] = field(default_factory=list)
    is_ensemble: bool = False

    def __post_init__(self) -> None:
        self.models = list(self.models) or [self.model]

    @property
    def configuration(self) -> str:
        """The configuration of a single-model zip (an ensemble has one per member)."""
        if self.is_ensemble:
            raise HiennuError(f"{self.path} holds an ensemble of {', '.join(self.models)}, not one configuration")
        return parse_model_dir_name(self.model.split("/")[1]).configuration

    def member(self, relative: str) -> str:
        return f"{self.model}/{relative}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def member_sha256(zf: zipfile.ZipFile, name: str) -> str:
    """The SHA-256 of one member of an open zip, read in 1 MiB chunks. :func:`verify_model_zip` is the only caller:
    a load verifies once and hands the answer (:class:`ModelZipContents`) down, so each file of a zip is hashed
    once per load, however many loaders it passes through (a zip's checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with zf.open(name) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- export

def _model_members(model_dir: Path, folds: Sequence[str | int] | None, checkpoint: str,
                   half: bool) -> tuple[str, list[str], dict[str, bytes]]:
    """What a zip holds of one model folder: ``(DatasetNNN_Name/TRAINER__PLANS__CONFIG, folds, {member: bytes})``."""
    model_dir = Path(model_dir).resolve()
    model = describe_model_dir(model_dir)
    if model is None or not parse_dataset_folder_name(model_dir.parent.name):
        raise HiennuError(f"{model_dir} is not a trained model folder "
                          f"($hiennu_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG with plans.json and fold_K/)")
    for needed in (PLANS_FILE, DATASET_FILE):
        if not (model_dir / needed).is_file():
            raise HiennuError(f"{model_dir / needed}: missing; a model folder needs plans.json and dataset.json")
    plans = load_plans(model_dir)
    load_dataset_json(model_dir)
    chosen = select_folds(model_dir, folds, checkpoint, "--checkpoint best|final")
    prefix = f"{model_dir.parent.name}/{model_dir.name}"
    folder = ModelFolder(model_dir)
    members: dict[str, bytes] = {f"{prefix}/{PLANS_FILE}": folder.plans.read_bytes(),
                                 f"{prefix}/{DATASET_FILE}": folder.dataset_json.read_bytes()}
    if load_postprocessing(model_dir) is not None:  # checked before it travels
        members[f"{prefix}/{POSTPROCESSING_FILE}"] = folder.postprocessing.read_bytes()
    for fold in sorted(chosen, key=fold_sort_key):
        src = folder.fold_dir(fold) / checkpoint
        ckpt = load_checkpoint(src)
        weights = {k: (v.half() if half and v.is_floating_point() else v.float() if v.is_floating_point() else v)
                   for k, v in ckpt["network_weights"].items()}
        slim = {k: v for k, v in ckpt.items() if k != "network_weights" and isinstance(v, _PLAIN)}
        if isinstance(ckpt.get("configuration"), dict):  # what the fold was trained with, checked at load
            check_trained_configuration(ckpt, plans.configuration(model.configuration), str(src),
                                        folder.plans, folder.fold_plans(fold))
            slim["configuration"] = ckpt["configuration"]
        slim["network_weights"] = weights
        buffer = io.BytesIO()
        torch.save(slim, buffer)
        members[f"{prefix}/fold_{fold}/{checkpoint}"] = buffer.getvalue()
    return prefix, sorted(chosen, key=fold_sort_key), members


def _write_zip(out_zip: Path, manifest: dict, members: dict[str, bytes], example_name: str,
               sources: Sequence[Path]) -> None:
    """Write the zip atomically; ``-o`` may be neither a folder nor inside a folder it is exported from
    (``sources``), where it could replace a checkpoint, ``rule.json`` or ``members.json`` it was made from."""
    if out_zip.is_dir():
        raise HiennuError(f"-o {out_zip} is a folder; give the zip file to write, e.g. {out_zip / example_name}")
    for source in sources:
        if folder_relation(out_zip.parent, source) in (IS, INSIDE):
            raise HiennuError(f"-o {out_zip} lies inside {source}, which it is exported from; write the zip elsewhere, "
                              f"e.g. {Path.cwd() / example_name}")
    with atomic_path(out_zip, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2))
            for name, data in members.items():
                zf.writestr(name, data)


def export_model_zip(model_dir: str | Path, out_zip: str | Path, folds: Sequence[str | int] | None = None,
                     checkpoint: str = FINAL, half: bool = False) -> Path:
    """Write ``model_dir``'s plans, dataset.json, postprocessing.json (when present) and the chosen
    folds' weights to ``out_zip`` (atomically).

    folds: fold names or numbers (default: the numbered folds, every one holding ``checkpoint``:
    :func:`~hiennu.inference.model_registry.select_folds`); checkpoint: the file name
    in each ``fold_K/`` (default ``checkpoint_final.pth``).
    Returns the zip's path.
    """
    prefix, chosen, members = _model_members(Path(model_dir), folds, checkpoint, half)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": prefix, "checkpoint": checkpoint,
                "folds": chosen, "half_precision": bool(half),
                "files": {name: sha256_bytes(data) for name, data in members.items()}}
    out_zip = Path(out_zip)
    _write_zip(out_zip, manifest, members, Path(model_dir).name + ".zip", [Path(model_dir)])
    logger.info("exported %s (folds %s, %s) to %s (%.1f MB)", prefix, ", ".join(manifest["folds"]),
                "float16" if half else "float32", out_zip, out_zip.stat().st_size / 1e6)
    return out_zip


def export_ensemble_zip(model_dirs: Sequence[str | Path], out_zip: str | Path,
                        folds: Sequence[str | int] | None = None, checkpoint: str | None = None,
                        half: bool = False) -> Path:
    """Write an ensemble of configurations to one zip (atomically): every member model folder (as
    :func:`export_model_zip` writes one; the same folds and checkpoint for each) and the ensemble folder
    ``DatasetNNN_Name/ensembles/ensemble___M1___M2/`` (``members.json`` with the exported folds and checkpoint,
    ``postprocessing.json`` when the ensemble folder beside the models has one).

    folds: default the ensemble folder's ``members.json`` folds, else the folds every member holds
    (members holding different folds are refused: name them with ``folds``). checkpoint: default the
    ``members.json`` checkpoint (its post-processing was chosen on that checkpoint's CV masks), else
    ``checkpoint_final.pth``; another one than ``members.json`` names is refused, since the stored
    post-processing would then ship with weights it was not chosen for. Returns the zip's path.
    """
    dirs = [Path(d).resolve() for d in model_dirs]
    for d in dirs:
        if describe_model_dir(d) is None or not parse_dataset_folder_name(d.parent.name):
            raise HiennuError(f"{d} is not a trained model folder "
                              f"($hiennu_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG with plans.json and fold_K/)")
    if len({d.parent for d in dirs}) != 1:
        raise HiennuError("models of different datasets cannot be ensembled: " + ", ".join(
            f"{d.name} ({d.parent.name})" for d in dirs) + "; give models trained on one dataset")
    folder = EnsembleFolder.of(dirs[0].parent, [d.name for d in dirs])  # refuses fewer than two, or one twice
    post_bytes = None
    check_ensemble_complete(folder.path)
    if is_ensemble_dir(folder.path):
        record = load_ensemble_members(folder.path)
        folds = folds or list(record.folds)
        if checkpoint is not None and checkpoint != record.checkpoint:
            raise HiennuError(f"{folder.members}: the ensemble was scored and its post-processing chosen with "
                              f"{record.checkpoint}, not {checkpoint}; export with -chk {record.checkpoint}, or run "
                              f"hiennu_find_best_configuration on {checkpoint}'s CV masks first")
        checkpoint = record.checkpoint
        if load_postprocessing(folder.path) is not None:  # checked before it travels
            post_bytes = folder.postprocessing.read_bytes()
    checkpoint = checkpoint or FINAL
    if post_bytes is None:
        logger.warning("%s: no ensemble postprocessing.json; the zip predicts without ensemble post-processing "
                       "(choose it with hiennu_find_best_configuration, then export again)", folder.path)
    if not folds:
        held = {d.name: select_folds(d, None, checkpoint, "--checkpoint best|final") for d in dirs}
        if len({tuple(f) for f in held.values()}) > 1:
            raise HiennuError(f"the ensemble's models hold different folds with {checkpoint} (" + "; ".join(
                f"{name}: {', '.join(f) or 'none'}" for name, f in held.items()) + "); name the folds to export with -f")
        folds = next(iter(held.values()))
    members: dict[str, bytes] = {}
    prefixes = []
    for d in dirs:
        prefix, chosen, files = _model_members(d, folds, checkpoint, half)
        prefixes.append(prefix)
        members.update(files)
    record = EnsembleMembers(tuple(d.name for d in dirs), tuple(chosen), checkpoint)
    ensemble = f"{dirs[0].parent.name}/{ENSEMBLES_DIR}/{record.dir_name}"
    members[f"{ensemble}/{ENSEMBLE_MEMBERS_FILE}"] = json.dumps(record.to_dict(), indent=2).encode()
    if post_bytes is not None:
        members[f"{ensemble}/{POSTPROCESSING_FILE}"] = post_bytes
    manifest = {"format": ENSEMBLE_FORMAT, "format_version": ENSEMBLE_FORMAT_VERSION, "ensemble": ensemble,
                "models": sorted(prefixes), "checkpoint": checkpoint, "folds": chosen, "half_precision": bool(half),
                "files": {name: sha256_bytes(data) for name, data in members.items()}}
    out_zip = Path(out_zip)
    _write_zip(out_zip, manifest, members, record.dir_name + ".zip", [*dirs, folder.path])
    logger.info("exported the ensemble %s (folds %s, %s) to %s (%.1f MB)", ensemble, ", ".join(chosen),
                "float16" if half else "float32", out_zip, out_zip.stat().st_size / 1e6)
    return out_zip


def export_rule_zip(rule_dir: str | Path, out_zip: str | Path) -> Path:
    """Write a rule folder (``DatasetNNN_Name/baseline_zadc``: ``rule.json``, ``dataset.json`` and
    ``postprocessing.json`` when it has one) to ``out_zip`` (atomically), under a manifest of format
    ``hiennu-rule``. The folder is read first (:func:`~hiennu.postprocessing.rule_folder.load_rule_folder`), so a
    malformed one is refused before anything is written; it lands as ``DatasetNNN_Name/baseline_zadc`` whatever
    its own name. Returns the zip's path."""
    rule_dir = Path(rule_dir).resolve()
    loaded = load_rule_folder(rule_dir)
    if not parse_dataset_folder_name(rule_dir.parent.name):
        raise HiennuError(f"{rule_dir}: a rule folder is exported from its dataset's results folder "
                          f"($hiennu_results/DatasetNNN_Name/{RULE_DIR}), not from {rule_dir.parent}; move it there")
    prefix = f"{rule_dir.parent.name}/{RULE_DIR}"
    names = [RULE_FILE, DATASET_FILE] + ([POSTPROCESSING_FILE] if loaded.postprocessing is not None else [])
    members = {f"{prefix}/{name}": (rule_dir / name).read_bytes() for name in names}
    manifest = {"format": RULE_ZIP_FORMAT, "format_version": RULE_ZIP_FORMAT_VERSION, "rule": prefix,
                "files": {name: sha256_bytes(data) for name, data in members.items()}}
    out_zip = Path(out_zip)
    _write_zip(out_zip, manifest, members, f"{rule_dir.parent.name}_{RULE_DIR}.zip", [rule_dir])
    logger.info("exported the rule %s (threshold %g, post-processing %s) to %s", prefix, loaded.spec.threshold,
                loaded.postprocessing.name if loaded.postprocessing else "none", out_zip)
    return out_zip


def export_models(model: str | Path | Sequence[str | Path] | None, dataset: str | int | None,
                  trainer: str | Sequence[str] | None, configuration: str | Sequence[str] | None,
                  plans_name: str | Sequence[str], out_zip: str | Path, folds: Sequence[str | int] | None = None,
                  checkpoint: str | None = None, half: bool = False) -> Path:
    """``hiennu_export_model``: the model (:func:`export_model_zip`), the ensemble of configurations
    (:func:`export_ensemble_zip`: two or more models, or one ensemble folder) or the rule folder
    (:func:`export_rule_zip`, alone) that the options name (:func:`~hiennu.inference.model_registry.resolve_models`),
    as one zip. checkpoint: ``final``, ``best`` or a file name; default: an ensemble's ``members.json`` checkpoint,
    else ``checkpoint_final.pth``."""
    paths = resolve_models(model, dataset, trainer, configuration, plans_name)
    if any(is_rule_dir(p) for p in paths):
        return _export_rule(paths, out_zip, folds, checkpoint)
    checkpoint = None if checkpoint is None else checkpoint_file(checkpoint)
    if len(paths) == 1 and is_ensemble_dir(paths[0]):
        return export_ensemble_zip(member_dirs(paths[0]), out_zip, folds, checkpoint, half)
    if len(paths) == 1:
        return export_model_zip(paths[0], out_zip, folds, checkpoint or FINAL, half)
    return export_ensemble_zip(paths, out_zip, folds, checkpoint, half)


def _export_rule(paths: list[Path], out_zip: str | Path, folds: Sequence[str | int] | None,
                 checkpoint: str | None) -> Path:
    """:func:`export_models` for a rule folder: alone, and without folds or a checkpoint (it has no weights)."""
    rule = next(p for p in paths if is_rule_dir(p))
    if len(paths) > 1:
        raise HiennuError(f"{rule} is the rule ZADC < -2 with its post-processing; the rule cannot be ensembled with "
                          f"models; export it alone (-m {rule})")
    if folds or checkpoint is not None:
        raise HiennuError(f"{rule} is a rule folder, which has no folds or checkpoints; export it without -f/-chk")
    return export_rule_zip(rule, out_zip)


# ---------------------------------------------------------------------------------------------- verify

def _manifest_format(path: str | Path) -> str | None:
    """The format a zip's manifest names (a cheap look at the manifest only; the loaders verify everything), or
    None when the zip or its manifest cannot be read, so the single-model loader reports it."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(MANIFEST)).get("format")
    except (OSError, KeyError, ValueError, AttributeError, EOFError, zipfile.BadZipFile, zlib.error):
        return None


def is_ensemble_zip(path: str | Path) -> bool:
    """Whether ``path`` is a zip whose manifest says it holds an ensemble (:func:`_manifest_format`)."""
    return _manifest_format(path) == ENSEMBLE_FORMAT


def is_rule_zip(path: str | Path) -> bool:
    """Whether ``path`` is a zip whose manifest says it holds a rule folder (:func:`_manifest_format`)."""
    return _manifest_format(path) == RULE_ZIP_FORMAT


def _unsafe_name_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if not name or "\x00" in name:
        return "empty name or NUL character"
    if "\\" in name:
        return "backslash in the name"
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "absolute path"
    if len(name) > 1 and name[1] == ":":
        return "drive letter"
    if any(part == ".." for part in name.split("/")):
        return "'..' component (path traversal)"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return None


def _member_clash(names: list[str]) -> str | None:
    """Two file members that cannot both be extracted: one is a folder of the other, or the names
    differ only in letter case (one file on case-insensitive file systems). None when they all fit."""
    files = set(names)
    lowered: dict[str, str] = {}
    for name in sorted(names):
        parts = PurePosixPath(name).parts
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in files:
                return f"{parent!r} is a file but also the folder of {name!r}"
        other = lowered.setdefault(name.lower(), name)
        if other != name:
            return f"{other!r} and {name!r} differ only in letter case"
    return None


@contextmanager
def _checked_zip(path: Path) -> Iterator[tuple[zipfile.ZipFile, set[str], dict]]:
    """Open the zip ``path`` and make the checks every format shares: safe member names, the unpacked size, no
    name twice, no clashing names and a manifest that is a JSON object. Yields the open zip, its file members
    other than the manifest, and the manifest; raises :class:`ModelZipError`."""
    if not path.is_file():
        raise HiennuError(f"model zip {path} not found")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelZipError(f"{path}: not a readable zip file ({e})") from None
    with zf, _corrupt_data_refused(path):
        infos = zf.infolist()
        for info in infos:
            reason = _unsafe_name_reason(info)
            if reason:
                raise ModelZipError(f"{path}: refused: member {info.filename!r} has an unsafe name ({reason}); "
                                    f"nothing was extracted")
        if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
            raise ModelZipError(f"{path}: refused: it would unpack to more than {MAX_UNPACKED_BYTES / 1024 ** 3:.0f} GiB")
        names = [i.filename for i in infos if not i.is_dir()]
        if len(set(names)) != len(names):
            raise ModelZipError(f"{path}: refused: some member names occur twice")
        clash = _member_clash(names)
        if clash:
            raise ModelZipError(f"{path}: refused: members clash ({clash}); nothing was extracted")
        if MANIFEST not in names:
            raise ModelZipError(f"{path}: refused: no {MANIFEST} (a zip written by hiennu_export_model has one "
                                f"listing the SHA-256 of every file); re-export the model")
        try:
            manifest = json.loads(zf.read(MANIFEST))
        except ValueError as e:
            raise ModelZipError(f"{path}: refused: {MANIFEST} is malformed ({e!r})") from None
        if not isinstance(manifest, dict):
            raise ModelZipError(f"{path}: refused: {MANIFEST} is malformed (it holds {type(manifest).__name__}, "
                                f"not an object)")
        yield zf, set(names) - {MANIFEST}, manifest


@contextmanager
def _corrupt_data_refused(path: Path) -> Iterator[None]:
    """A member whose compressed data is damaged (a bad CRC, a broken deflate stream, cut short) raises
    :class:`ModelZipError` naming the zip, as a tampered one does, instead of zipfile's or zlib's own error."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise ModelZipError(f"{path}: refused: its data is corrupted ({e}); nothing was extracted; get a fresh copy "
                            f"of the zip or export it again") from None


def _check_files(path: Path, zf: zipfile.ZipFile, content: set[str], files: dict[str, str], folders: list[str],
                 expected: set[str], kind: str) -> None:
    """The checks of a zip's files every format shares: each inside one of ``folders``, listed in the manifest
    (``files``) and present, the ``expected`` ones among them, and each matching its SHA-256. kind: ``model`` or
    ``rule``, for the messages."""
    outside = sorted(n for n in content if not any(n.startswith(f + "/") for f in folders))
    if outside:
        raise ModelZipError(f"{path}: refused: member(s) outside the {kind} folder{'s' if len(folders) > 1 else ''} "
                            f"{', '.join(f + '/' for f in folders)}: {', '.join(outside[:5])}")
    unlisted = sorted(content - set(files))
    absent = sorted(set(files) - content)
    if unlisted:
        raise ModelZipError(f"{path}: refused: file(s) not listed in {MANIFEST}: {', '.join(unlisted[:5])}")
    if absent:
        raise ModelZipError(f"{path}: refused: file(s) listed in {MANIFEST} but missing: {', '.join(absent[:5])}")
    if not expected <= content:
        raise ModelZipError(f"{path}: refused: incomplete {kind}, missing {', '.join(sorted(expected - content))}")
    for name in sorted(content):
        if member_sha256(zf, name) != files[name].lower():
            raise ModelZipError(f"{path}: refused: {name} does not match its SHA-256 in {MANIFEST} "
                                f"(tampered with or corrupted); get a fresh copy of the {kind}")


def verify_model_zip(path: str | Path) -> ModelZipContents:
    """Check a model zip without extracting or unpickling anything; raises :class:`ModelZipError` (a rule zip
    too: :func:`verify_rule_zip` checks those)."""
    path = Path(path)
    with _checked_zip(path) as (zf, content, manifest):
        fmt = manifest.get("format")
        if fmt == RULE_ZIP_FORMAT:
            raise ModelZipError(f"{path} holds the rule {manifest.get('rule')!r} (format {RULE_ZIP_FORMAT!r}), not "
                                f"a trained model; predict with it by hiennu_predict -m {path}, install it with "
                                f"hiennu_install_model, or read it with load_rule_zip")
        try:
            files = {str(k): str(v) for k, v in manifest["files"].items()}
            checkpoint = str(manifest["checkpoint"])
            folds = [str(f) for f in manifest["folds"]]
            half = bool(manifest.get("half_precision", False))
            if fmt == ENSEMBLE_FORMAT:
                model, models = str(manifest["ensemble"]), [str(m) for m in manifest["models"]]
            else:
                model = str(manifest["model"])
                models = [model]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelZipError(f"{path}: refused: {MANIFEST} is malformed ({e!r})") from None
        if fmt not in (FORMAT, ENSEMBLE_FORMAT):
            raise ModelZipError(f"{path}: refused: {MANIFEST} format is {fmt!r}, expected {FORMAT!r} "
                                f"(or {ENSEMBLE_FORMAT!r} for an ensemble, {RULE_ZIP_FORMAT!r} for a rule)")
        for m in models:
            parts = m.split("/")
            if (len(parts) != 2 or not parse_dataset_folder_name(parts[0]) or not parse_model_dir_name(parts[1])
                    or any(p in ("", ".", "..") for p in parts)):
                raise ModelZipError(f"{path}: refused: manifest model {m!r} is not DatasetNNN_Name/TRAINER__PLANS__CONFIG")
        if fmt == ENSEMBLE_FORMAT:
            _check_ensemble_manifest(path, model, models)
        if not checkpoint.endswith(".pth") or "/" in checkpoint or "\\" in checkpoint:
            raise ModelZipError(f"{path}: refused: manifest checkpoint {checkpoint!r} is not a plain .pth name")
        expected = {f"{m}/{name}" for m in models for name in
                    [PLANS_FILE, DATASET_FILE] + [f"fold_{f}/{checkpoint}" for f in folds]}
        if fmt == ENSEMBLE_FORMAT:
            expected.add(f"{model}/{ENSEMBLE_MEMBERS_FILE}")
        _check_files(path, zf, content, files, models + ([model] if fmt == ENSEMBLE_FORMAT else []), expected,
                     "model")
        if fmt == ENSEMBLE_FORMAT:
            _check_ensemble_record(path, zf, model, models, folds, checkpoint)
    return ModelZipContents(path, model, checkpoint, folds, half, files, models, fmt == ENSEMBLE_FORMAT)


@dataclass
class RuleZipContents:
    """A verified rule zip. rule: ``DatasetNNN_Name/baseline_zadc``; files: member -> SHA-256."""

    path: Path
    rule: str
    files: dict[str, str]

    def member(self, relative: str) -> str:
        return f"{self.rule}/{relative}"


def verify_rule_zip(path: str | Path) -> RuleZipContents:
    """Check a rule zip (``format: hiennu-rule``) as :func:`verify_model_zip` checks a model zip, without
    extracting anything: the shared safety checks, a manifest naming ``DatasetNNN_Name/baseline_zadc``, only
    ``rule.json``, ``dataset.json`` (both required) and ``postprocessing.json`` in that folder, every SHA-256.
    A model or ensemble zip is refused by name; raises :class:`ModelZipError`."""
    path = Path(path)
    with _checked_zip(path) as (zf, content, manifest):
        fmt = manifest.get("format")
        if fmt != RULE_ZIP_FORMAT:
            raise ModelZipError(f"{path}: {MANIFEST} format is {fmt!r}, not a rule zip ({RULE_ZIP_FORMAT!r}); a "
                                f"model or ensemble zip loads with load_model_zip / load_ensemble_zip")
        if manifest.get("format_version") != RULE_ZIP_FORMAT_VERSION:
            raise ModelZipError(f"{path}: refused: rule zip version {manifest.get('format_version')!r}; this hiennu "
                                f"reads {RULE_ZIP_FORMAT_VERSION} (update hiennu, or export the rule again)")
        try:
            files = {str(k): str(v) for k, v in manifest["files"].items()}
            rule = str(manifest["rule"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelZipError(f"{path}: refused: {MANIFEST} is malformed ({e!r})") from None
        parts = rule.split("/")
        if len(parts) != 2 or not parse_dataset_folder_name(parts[0]) or parts[1] != RULE_DIR:
            raise ModelZipError(f"{path}: refused: manifest rule {rule!r} is not DatasetNNN_Name/{RULE_DIR}")
        unknown = sorted(n for n in content if n.startswith(rule + "/") and n[len(rule) + 1:] not in _RULE_MEMBERS)
        if unknown:
            raise ModelZipError(f"{path}: refused: unexpected member(s) {', '.join(unknown[:5])}; a rule zip holds "
                                f"only {', '.join(_RULE_MEMBERS)} in {rule}/")
        _check_files(path, zf, content, files, [rule], {f"{rule}/{RULE_FILE}", f"{rule}/{DATASET_FILE}"}, "rule")
    return RuleZipContents(path, rule, files)


def _check_ensemble_manifest(path: Path, ensemble: str, models: list[str]) -> None:
    """An ensemble manifest names ``DatasetNNN_Name/ensembles/NAME``, NAME the ensemble folder name of exactly its
    members (:func:`~hiennu.paths.ensemble_dir_name`: their listing, or their digest), of that dataset."""
    parts = ensemble.split("/")
    try:
        expected = ensemble_dir_name([m.split("/")[-1] for m in models])
    except HiennuError:
        expected = None
    if (len(parts) != 3 or parts[2] != expected or parts[1] != ENSEMBLES_DIR
            or not parse_dataset_folder_name(parts[0])
            or any(len(m.split("/")) != 2 or m.split("/")[0] != parts[0] for m in models)):
        raise ModelZipError(f"{path}: refused: manifest ensemble {ensemble!r} is not DatasetNNN_Name/{ENSEMBLES_DIR}/"
                            f"ensemble___M1___M2 naming exactly its models {', '.join(models)} of that dataset")


def _check_ensemble_record(path: Path, zf: zipfile.ZipFile, ensemble: str, models: list[str], folds: list[str],
                           checkpoint: str) -> None:
    """The zip's ``members.json`` (JSON only, never unpickled) names the manifest's members, folds and checkpoint."""
    member = f"{ensemble}/{ENSEMBLE_MEMBERS_FILE}"
    try:
        record = EnsembleMembers.from_dict(json.loads(zf.read(member)), f"{path}:{member}")
    except ValueError as e:  # HiennuError is not a ValueError; this is bad JSON
        raise ModelZipError(f"{path}: refused: {member} is not valid JSON ({e})") from None
    except HiennuError as e:
        raise ModelZipError(f"{path}: refused: {e}") from None
    expected = EnsembleMembers(tuple(m.split("/")[1] for m in models), tuple(folds), checkpoint)
    if record != expected:
        raise ModelZipError(f"{path}: refused: {member} ({record.to_dict()}) disagrees with {MANIFEST} "
                            f"({expected.to_dict()}); re-export the ensemble")


# ---------------------------------------------------------------------------------------------- load / install

@dataclass
class LoadedModel:
    """A model read into memory. weights: fold name -> state dict (float32 on the CPU);
    postprocessing: the zip's ``postprocessing.json`` choice (None when it has none)."""

    name: str
    plans: Plans
    dataset: DatasetJson
    configuration: str
    weights: dict[str, dict[str, torch.Tensor]]
    postprocessing: PostProcessing | None = None
    network_builder: str | None = None  # the trainer whose network_for builds the network (network_builder.py)


def _float32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _verified(path: str | Path, verified: ModelZipContents | RuleZipContents | None,
              verify: Callable[[str | Path], ModelZipContents | RuleZipContents] = verify_model_zip):
    """``verified`` when it is the verification of ``path`` a caller has just made, else a fresh one (``verify``:
    :func:`verify_model_zip` or :func:`verify_rule_zip`). Why: checking every SHA-256 reads the whole zip; a caller
    that had to verify first (to see what the zip holds) passes its answer down instead of having the zip read and
    hashed again."""
    if verified is None:
        return verify(path)
    if Path(verified.path).resolve() != Path(path).resolve():
        raise HiennuError(f"internal: the verification of {verified.path} was passed to load {path}")
    return verified


def load_model_zip(path: str | Path, folds: Sequence[str | int] | None = None,
                   model: str | None = None, verified: ModelZipContents | None = None) -> LoadedModel:
    """Verify ``path`` and read its plans, dataset.json and weights into memory (nothing is extracted).

    model: for an ensemble zip, the member to read (``TRAINER__PLANS__CONFIG`` or
    ``DatasetNNN_Name/TRAINER__PLANS__CONFIG``; :func:`load_ensemble_zip` reads them all); for a
    single-model zip None or its own name. verified: :func:`verify_model_zip`'s answer for ``path`` when the
    caller has just verified it (then it is not verified, so not hashed, again).
    """
    contents = _verified(path, verified)
    return _load_model(contents, _chosen_folds(contents, folds), _pick_model(contents, model))


def _chosen_folds(contents: ModelZipContents, folds: Sequence[str | int] | None) -> list[str]:
    numbered = [f for f in contents.folds if f != "all"]
    # an ensemble predicts with the folds its record names; a model with its numbered folds (fold_all only when it
    # is the only one), as the same model does once installed (model_registry.default_folds)
    default = contents.folds if contents.is_ensemble else (numbered or contents.folds)
    chosen = [str(f) for f in folds] if folds else default
    missing = [f for f in chosen if f not in contents.folds]
    if missing:
        raise HiennuError(f"{contents.path}: holds folds {', '.join(contents.folds)}, not {', '.join(missing)}")
    return chosen


def _pick_model(contents: ModelZipContents, model: str | None) -> str:
    if model is None and not contents.is_ensemble:
        return contents.model
    matches = [m for m in contents.models if model in (m, m.split("/")[1])]
    if len(matches) != 1:
        asked = f"not {model!r}" if model is not None else "name one with model=, or load them all with load_ensemble_zip"
        raise HiennuError(f"{contents.path} holds {'the ensemble of ' if contents.is_ensemble else ''}"
                          f"{', '.join(contents.models)}; {asked}")
    return matches[0]


def _load_model(contents: ModelZipContents, chosen: list[str], model: str) -> LoadedModel:
    """One model folder ``model`` of a verified zip, read into memory (folds ``chosen``)."""
    path = contents.path
    configuration = parse_model_dir_name(model.split("/")[1]).configuration
    with zipfile.ZipFile(contents.path) as zf:
        try:
            plans = Plans.from_dict(json.loads(zf.read(f"{model}/{PLANS_FILE}")), source=f"{path}:{model}/{PLANS_FILE}")
            dataset = DatasetJson.from_dict(json.loads(zf.read(f"{model}/{DATASET_FILE}")),
                                            source=f"{path}:{model}/{DATASET_FILE}")
            post_member = f"{model}/{POSTPROCESSING_FILE}"
            post = (postprocessing_from_record(json.loads(zf.read(post_member)), f"{path}:{post_member}")
                    if post_member in contents.files else None)
        except ValueError as e:
            raise ModelZipError(f"{path}: plans.json, dataset.json or {POSTPROCESSING_FILE} is not valid JSON "
                                f"({e})") from None
        weights, builders = {}, {}
        for fold in chosen:
            member = f"{model}/fold_{fold}/{contents.checkpoint}"
            ckpt = load_checkpoint(io.BytesIO(zf.read(member)), f"{path}:{member}")
            check_trained_configuration(ckpt, plans.configuration(configuration), f"{path}:{member}",
                                        f"{path}:{model}/{PLANS_FILE}")
            weights[fold] = _float32(ckpt["network_weights"])
            builders[fold] = ckpt.get(NETWORK_BUILDER_KEY)
    return LoadedModel(model, plans, dataset, configuration, weights, post,
                       agreed_builder(builders, f"{path}:{model}"))


@dataclass
class LoadedEnsemble:
    """An ensemble zip read into memory. name: ``DatasetNNN_Name/ensembles/ensemble___M1___M2``; members: one
    :class:`LoadedModel` per member (sorted by name); postprocessing: the ensemble's choice (None when it has none)."""

    name: str
    members: list[LoadedModel]
    record: EnsembleMembers
    postprocessing: PostProcessing | None = None


def load_ensemble_zip(path: str | Path, folds: Sequence[str | int] | None = None,
                      verified: ModelZipContents | None = None) -> LoadedEnsemble:
    """Verify an ensemble zip (``hiennu_export_model -m A B``) and read every member and the ensemble's
    ``members.json`` and ``postprocessing.json`` into memory (nothing is extracted). verified: as for
    :func:`load_model_zip`."""
    contents = _verified(path, verified)
    if not contents.is_ensemble:
        raise HiennuError(f"{path} holds one model ({contents.model}), not an ensemble; load it with load_model_zip")
    chosen = _chosen_folds(contents, folds)
    members = [_load_model(contents, chosen, m) for m in contents.models]
    post_member = contents.member(POSTPROCESSING_FILE)
    with zipfile.ZipFile(contents.path) as zf:
        record = EnsembleMembers.from_dict(json.loads(zf.read(contents.member(ENSEMBLE_MEMBERS_FILE))),
                                           f"{path}:{contents.member(ENSEMBLE_MEMBERS_FILE)}")
        try:
            post = (postprocessing_from_record(json.loads(zf.read(post_member)), f"{path}:{post_member}")
                    if post_member in contents.files else None)
        except ValueError as e:
            raise ModelZipError(f"{path}: {post_member} is not valid JSON ({e})") from None
    return LoadedEnsemble(contents.model, members, record, post)


def _zip_json(zf: zipfile.ZipFile, path: Path, member: str):
    """One JSON member of a verified zip, parsed; bad JSON is a one-line :class:`ModelZipError` naming it."""
    try:
        return json.loads(zf.read(member))
    except ValueError as e:
        raise ModelZipError(f"{path}: {member} is not valid JSON ({e}); get a fresh copy or export it again") from None


def load_rule_zip(path: str | Path, verified: RuleZipContents | None = None) -> RuleFolder:
    """Verify a rule zip (:func:`verify_rule_zip`) and read its rule, dataset.json (ADC and ZADC must be among its
    channels) and post-processing into memory (nothing is extracted); the :class:`RuleFolder`'s path is the zip.
    verified: as for :func:`load_model_zip`."""
    contents = _verified(path, verified, verify_rule_zip)
    path = contents.path
    with zipfile.ZipFile(path) as zf:
        source = f"{path}:{contents.member(RULE_FILE)}"
        spec = RuleSpec.from_dict(_zip_json(zf, path, contents.member(RULE_FILE)), source)
        source = f"{path}:{contents.member(DATASET_FILE)}"
        dataset = DatasetJson.from_dict(_zip_json(zf, path, contents.member(DATASET_FILE)), source=source)
        check_rule_dataset(dataset, source)
        post_member = contents.member(POSTPROCESSING_FILE)
        post = (postprocessing_from_record(_zip_json(zf, path, post_member), f"{path}:{post_member}")
                if post_member in contents.files else None)
        check_rule_postprocessing(post, f"{path}:{post_member}")
    return RuleFolder(Path(path), spec, dataset, post)


def holds_model(folder: Path, contents: ModelZipContents, loaded: LoadedModel) -> bool:
    """Whether ``folder`` already holds the zip's model: the same plans, dataset.json and post-processing
    (as loaded, so formatting does not matter; no post-processing in both counts as the same), and for
    every fold a checkpoint whose network weights equal the zip's in float32 (training checkpoints
    carry more than an exported one, so the files themselves differ). A file that cannot be read
    safely counts as different."""
    try:
        if (load_plans(folder) != loaded.plans or load_dataset_json(folder) != loaded.dataset
                or load_postprocessing(folder) != loaded.postprocessing):
            return False
        for fold, weights in loaded.weights.items():
            local = _float32(load_checkpoint(folder / f"fold_{fold}" / contents.checkpoint)["network_weights"])
            if local.keys() != weights.keys() or not all(torch.equal(local[k], weights[k]) for k in weights):
                return False
    except HiennuError:
        return False
    return True


def _predicts_otherwise(folder: Path, contents: ModelZipContents) -> str | None:
    """How a model folder that holds the zip's weights (:func:`holds_model`) predicts otherwise when no folds or
    checkpoint are named (it holds more folds, or another checkpoint is its default), or None when it predicts as the
    zip does."""
    checkpoint = default_checkpoint(folder)
    folds = sorted(default_folds(folder, checkpoint), key=fold_sort_key)
    zip_folds = sorted(_chosen_folds(contents, None), key=fold_sort_key)  # the zip predicts without fold_all too
    if checkpoint == contents.checkpoint and folds == zip_folds:
        return None
    return (f"without -f/-chk it predicts with folds {', '.join(folds)} and {checkpoint}, the zip with folds "
            f"{', '.join(zip_folds)} and {contents.checkpoint}")


def holds_ensemble(folder: Path, loaded: LoadedEnsemble) -> bool:
    """Whether the ensemble folder ``folder`` already holds the zip's ensemble: the same ``members.json`` and
    post-processing, as loaded (its cross-validation masks and scores, if any, stay)."""
    try:
        return load_ensemble_members(folder) == loaded.record and load_postprocessing(folder) == loaded.postprocessing
    except HiennuError:
        return False


def holds_rule(folder: Path, loaded: RuleFolder) -> bool:
    """Whether ``folder`` already holds the zip's rule: the same rule, dataset.json and post-processing, as loaded
    (so formatting does not matter). A folder that is not a readable rule folder counts as different."""
    try:
        local = load_rule_folder(folder)
    except HiennuError:
        return False
    return (local.spec, local.dataset, local.postprocessing) == (loaded.spec, loaded.dataset, loaded.postprocessing)


def install_model_zip(path: str | Path, root: str | Path | None = None, overwrite: bool = False,
                      make_default: bool = False) -> Path:
    """Verify ``path``, check every checkpoint loads as plain weights, and extract it under the results root.

    The model lands in ``ROOT/DatasetNNN_Name/TRAINER__PLANS__CONFIG`` (moved into place in one
    rename); an ensemble zip's members land so too, each in its folder, and its ensemble folder in
    ``ROOT/DatasetNNN_Name/ensembles/ensemble___M1___M2``. An existing folder of that name is only replaced
    with ``overwrite=True``, except when it already holds this model (:func:`holds_model`, for example the
    training folder the zip was exported from; :func:`holds_ensemble` for an ensemble folder): then nothing
    is copied or removed, so its training history (progress, validation, other checkpoints) stays. Every
    folder is checked before any is written. ``make_default`` records the model (or the ensemble) in
    ``ROOT/default_model.json``. Returns the installed model folder (or ensemble folder).

    A rule zip (:func:`export_rule_zip`) lands in ``ROOT/DatasetNNN_Name/baseline_zadc`` the same way
    (:func:`_install_rule_zip`).
    """
    root = Path(root) if root is not None else results_root()
    if is_rule_zip(path):
        return _install_rule_zip(Path(path), root, overwrite, make_default)
    contents = verify_model_zip(path)
    # every checkpoint must load with weights_only=True before anything is written
    ensemble = load_ensemble_zip(path, verified=contents) if contents.is_ensemble else None
    loaded = (dict(zip(contents.models, ensemble.members)) if ensemble
              else {contents.model: load_model_zip(path, contents.folds, verified=contents)})  # every fold compared
    check_dataset_id_free(contents.model.split("/")[0], [root, raw_root(), preprocessed_root()], path)
    holds = {name: holds_model(root / name, contents, model) if (root / name).exists() else False
             for name, model in loaded.items()}
    if ensemble is not None:
        holds[contents.model] = (root / contents.model).exists() and holds_ensemble(root / contents.model, ensemble)
    if ensemble is None and holds[contents.model]:
        other = _predicts_otherwise(root / contents.model, contents)
        if other and overwrite:
            holds[contents.model] = False  # replaced by exactly the zip's model, as --overwrite says
        elif other and make_default:
            raise HiennuError(f"{root / contents.model} already holds this model's weights, but {other}; as the "
                              f"default it would not predict as {path} does. Pass --overwrite to replace that folder "
                              f"with exactly the zip's model (its training history too), install under another "
                              f"hiennu_results, or predict from the folder with -m {root / contents.model} -f "
                              f"{' '.join(_chosen_folds(contents, None))} -chk {contents.checkpoint}")
        elif other:
            logger.warning("%s already holds this model's weights, but %s: predict from it with -f %s -chk %s to "
                           "predict as %s does", root / contents.model, other, " ".join(_chosen_folds(contents, None)),
                           contents.checkpoint, path)
    clashes = [root / name for name, same in holds.items() if not same and (root / name).exists()]
    if clashes and not overwrite:
        if len(clashes) == 1 and ensemble is None:
            raise HiennuError(f"{clashes[0]} already exists and holds another model (its plans, dataset.json, "
                              f"post-processing or weights differ, or it lacks a fold of the zip); pass --overwrite to "
                              f"replace that whole folder, "
                              f"its training history too, with the model in {path}, or install under another "
                              f"hiennu_results")
        raise HiennuError(f"{', '.join(map(str, clashes))} already exist(s) and hold(s) another model or ensemble "
                          f"(plans, dataset.json, members.json, post-processing or weights differ); pass --overwrite "
                          f"to replace those whole folders, their training history too, with the ones in {path}, or "
                          f"install under another hiennu_results")
    for name, same in holds.items():
        if same:
            logger.info("%s already holds this %s (folds %s); nothing copied", root / name,
                        "ensemble" if name == contents.model and ensemble else "model", ", ".join(contents.folds))
    written = [name for name, same in holds.items() if not same]
    _install_folders(contents, root, written)
    target = root / contents.model
    if written:
        logger.info("installed %s (folds %s) into %s", contents.model, ", ".join(contents.folds), target)
    if make_default:
        set_default_model(target, root)
        logger.info("%s is now the default model", contents.model)
    return target


def _install_rule_zip(path: Path, root: Path, overwrite: bool, make_default: bool) -> Path:
    """:func:`install_model_zip` for a rule zip: verify and read it, then unpack it into
    ``ROOT/DatasetNNN_Name/baseline_zadc`` in one rename, unless that folder already holds this rule
    (:func:`holds_rule`: nothing copied). Another rule there is only replaced with ``overwrite``."""
    contents = verify_rule_zip(path)
    loaded = load_rule_zip(path, verified=contents)
    check_dataset_id_free(contents.rule.split("/")[0], [root, raw_root(), preprocessed_root()], path)
    target = root / contents.rule
    same = target.exists() and holds_rule(target, loaded)
    if target.exists() and not same and not overwrite:
        raise HiennuError(f"{target} already exists and holds another rule (its rule.json, dataset.json or "
                          f"post-processing differ, or it is not a rule folder); pass --overwrite to replace that "
                          f"whole folder with the rule in {path}, or install under another hiennu_results")
    if same:
        logger.info("%s already holds this rule; nothing copied", target)
    else:
        _install_folders(contents, root, [contents.rule])
        logger.info("installed the rule %s into %s", contents.rule, target)
    if make_default:
        set_default_model(target, root)
        logger.info("the rule %s is now the default model", contents.rule)
    return target


def _swap_in(root: Path, staged: dict[str, Path]) -> None:
    """Rename every staged folder into place, all or nothing: each existing target is moved aside first; when a
    rename fails, the folders already swapped are taken out again and every moved-aside target is put back
    (:func:`_undo_swap`, which reads where each folder is from the disk, so a failure between a rename and its
    bookkeeping loses nothing), so the results folder holds either all the new folders or all the old ones.
    Ctrl-C and SIGTERM are held until the renames are done (:func:`interrupts_deferred`), the old copies' renames
    for removal included: an interrupt between the swap and those renames left the old model under its hidden
    set-aside name, which is never removed because it cannot be told from an original whose swap failed."""
    steps: list[tuple[Path, Path, Path | None]] = []  # (target, its staging, the folder it is moved aside into)
    trash: list[Path] = []
    try:
        with interrupts_deferred():
            try:
                for folder, staging in staged.items():
                    target = root / folder
                    # set aside under a short hidden name in the same folder (renamed onto an empty folder made for
                    # it): a name made from the target's own would pass the 255 bytes a file name may have for the
                    # longest ensemble names (paths.MAX_FILE_NAME_BYTES), and another parent folder would need write
                    # permission on the target itself (a read-only installed model)
                    aside = (staging_dir(target.parent, prefix=".hiennu-replaced-", holds_original=True)
                             if target.exists() else None)
                    steps.append((target, staging, aside))  # recorded before anything moves
                    if aside is not None:
                        os.replace(target, aside)
                    os.replace(staging, target)
            except BaseException:
                for target, staging, aside in reversed(steps):
                    _undo_swap(target, staging, aside)
                raise
            for target, _, aside in steps:
                if aside is not None:  # the old copy, now garbage: renamed to a staging name, so that a removal
                    trash.append(staging_dir(target.parent, prefix=".hiennu-installing-"))  # cut short is swept
                    os.replace(aside, trash[-1])  # by a later run
    finally:
        for folder in trash:
            shutil.rmtree(folder, ignore_errors=True)


def _undo_swap(target: Path, staging: Path, aside: Path | None) -> None:
    """Put ``target`` back as it was before :func:`_swap_in` touched it, from what lies on disk: the staging folder
    gone means the new folder was renamed in (removed again); an ``aside`` folder that is not the empty one made for
    it holds the original (renamed back); an empty one is only removed."""
    if not staging.exists() and target.exists():
        shutil.rmtree(target)
    if aside is None or not aside.exists():
        return
    if target.exists():  # never moved aside: the original is still in place, the folder made for it empty
        with contextlib.suppress(OSError):
            aside.rmdir()
        return
    os.replace(aside, target)


def _install_folders(contents: ModelZipContents | RuleZipContents, root: Path, folders: list[str]) -> None:
    """Unpack each of the zip's ``folders`` into a temporary folder beside its target, then rename them all
    into place (:func:`_swap_in`: all or nothing)."""
    staged: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(contents.path) as zf:
            for folder in folders:
                target = root / folder
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = staging_dir(target.parent, prefix=".hiennu-installing-")  # short: see _swap_in
                staged[folder] = staging
                for name in contents.files:
                    if name.startswith(folder + "/"):
                        dest = staging / name[len(folder) + 1:]
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(name) as src, open(dest, "wb") as out:
                            shutil.copyfileobj(src, out)
        _swap_in(root, staged)
    finally:
        for staging in staged.values():
            if staging.exists():
                shutil.rmtree(staging)
