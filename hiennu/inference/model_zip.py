"""Sharing trained models as zip files: export, verify, load and install.

A model zip holds one model folder and a manifest::

    manifest.json                                  format, model, checkpoint, folds, SHA-256 of every file
    DatasetNNN_Name/TRAINER__PLANS__CONFIG/plans.json
    DatasetNNN_Name/TRAINER__PLANS__CONFIG/dataset.json
    DatasetNNN_Name/TRAINER__PLANS__CONFIG/postprocessing.json                 (when the model folder has one)
    DatasetNNN_Name/TRAINER__PLANS__CONFIG/fold_K/checkpoint_final.pth  {"network_weights": ..., "epoch": ...}

The exported checkpoint is ``checkpoint_final.pth`` by default, as nnU-Net ships (``checkpoint_best.pth``
was chosen on the fold's own validation cases); the manifest names it.

Exported checkpoints keep only the network weights and plain values (no optimizer state), in
float32 or, with ``half=True``, float16 (floating-point tensors only; integer buffers such as
``num_batches_tracked`` stay as they are). Loading casts them back to float32.

A zip from someone else is untrusted input. Before anything is extracted or loaded,
:func:`verify_model_zip` refuses members with absolute paths, ``..`` components, drive letters,
backslashes or symbolic links, members outside the model folder, a missing or malformed manifest,
files the manifest does not list (or lists but the zip lacks), any SHA-256 mismatch, and archives
that unpack to more than :data:`MAX_UNPACKED_BYTES`. Checkpoints are only ever read with
``torch.load(..., weights_only=True)``, so a pickle that would run code is refused, not run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import torch

from hiennu.errors import HiennuError
from hiennu.inference.model_registry import describe_model_dir, fold_sort_key, model_folds, set_default_model
from hiennu.inference.trained_configuration import check_trained_configuration
from hiennu.io.atomic import atomic_path
from hiennu.io.checkpoint import FINAL, load_checkpoint
from hiennu.io.dataset_json import DatasetJson, load_dataset_json
from hiennu.log import get_logger
from hiennu.paths import (DATASET_FILE, PLANS_FILE, POSTPROCESSING_FILE, ModelFolder, parse_dataset_folder_name,
                          parse_model_dir_name, preprocessed_root, raw_root, results_root)
from hiennu.plans import Plans, load_plans
from hiennu.postprocessing.record import PostProcessing, load_postprocessing, postprocessing_from_record

logger = get_logger(__name__)

MANIFEST = "manifest.json"
FORMAT = "hiennu-model"
FORMAT_VERSION = 1
MAX_UNPACKED_BYTES = 4 * 1024 ** 3
_PLAIN = (int, float, str, bool, type(None))


class ModelZipError(HiennuError):
    """A model zip that is malformed, tampered with or unsafe."""


@dataclass
class ModelZipContents:
    """A verified model zip. model: ``DatasetNNN_Name/TRAINER__PLANS__CONFIG``; folds: fold names."""

    path: Path
    model: str
    checkpoint: str
    folds: list[str]
    half_precision: bool
    files: dict[str, str]

    @property
    def configuration(self) -> str:
        return parse_model_dir_name(self.model.split("/")[1]).configuration

    def member(self, relative: str) -> str:
        return f"{self.model}/{relative}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- export

def export_model_zip(model_dir: str | Path, out_zip: str | Path, folds: Sequence[str | int] | None = None,
                     checkpoint: str = FINAL, half: bool = False) -> Path:
    """Write ``model_dir``'s plans, dataset.json, postprocessing.json (when present) and the chosen
    folds' weights to ``out_zip`` (atomically).

    folds: fold names or numbers (default: every fold holding ``checkpoint``); checkpoint: the file name
    in each ``fold_K/`` (default ``checkpoint_final.pth``).
    Returns the zip's path.
    """
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
    available = model_folds(model_dir, checkpoint)
    chosen = [str(f) for f in folds] if folds else available
    missing = [f for f in chosen if f not in available]
    if missing or not chosen:
        raise HiennuError(f"{model_dir}: no {checkpoint} for fold(s) {', '.join(missing) or '(any)'}; folds with "
                          f"{checkpoint}: {', '.join(available) or 'none'} (pick another with --checkpoint best|final)")
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
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": prefix, "checkpoint": checkpoint,
                "folds": sorted(chosen, key=fold_sort_key), "half_precision": bool(half),
                "files": {name: sha256_bytes(data) for name, data in members.items()}}
    out_zip = Path(out_zip)
    if out_zip.is_dir():
        raise HiennuError(f"-o {out_zip} is a folder; give the zip file to write, e.g. {out_zip / (model_dir.name + '.zip')}")
    with atomic_path(out_zip, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2))
            for name, data in members.items():
                zf.writestr(name, data)
    logger.info("exported %s (folds %s, %s) to %s (%.1f MB)", prefix, ", ".join(manifest["folds"]),
                "float16" if half else "float32", out_zip, out_zip.stat().st_size / 1e6)
    return out_zip


# ---------------------------------------------------------------------------------------------- verify

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


def verify_model_zip(path: str | Path) -> ModelZipContents:
    """Check a model zip without extracting or unpickling anything; raises :class:`ModelZipError`."""
    path = Path(path)
    if not path.is_file():
        raise HiennuError(f"model zip {path} not found")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelZipError(f"{path}: not a readable zip file ({e})") from None
    with zf:
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
            files = {str(k): str(v) for k, v in manifest["files"].items()}
            model, checkpoint = str(manifest["model"]), str(manifest["checkpoint"])
            folds = [str(f) for f in manifest["folds"]]
            half = bool(manifest.get("half_precision", False))
            fmt = manifest.get("format")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelZipError(f"{path}: refused: {MANIFEST} is malformed ({e!r})") from None
        if fmt != FORMAT:
            raise ModelZipError(f"{path}: refused: {MANIFEST} format is {fmt!r}, expected {FORMAT!r}")
        parts = model.split("/")
        if (len(parts) != 2 or not parse_dataset_folder_name(parts[0]) or not parse_model_dir_name(parts[1])
                or any(p in ("", ".", "..") for p in parts)):
            raise ModelZipError(f"{path}: refused: manifest model {model!r} is not DatasetNNN_Name/TRAINER__PLANS__CONFIG")
        if not checkpoint.endswith(".pth") or "/" in checkpoint or "\\" in checkpoint:
            raise ModelZipError(f"{path}: refused: manifest checkpoint {checkpoint!r} is not a plain .pth name")
        content = set(names) - {MANIFEST}
        outside = sorted(n for n in content if not n.startswith(model + "/"))
        if outside:
            raise ModelZipError(f"{path}: refused: member(s) outside the model folder {model}/: {', '.join(outside[:5])}")
        unlisted = sorted(content - set(files))
        absent = sorted(set(files) - content)
        if unlisted:
            raise ModelZipError(f"{path}: refused: file(s) not listed in {MANIFEST}: {', '.join(unlisted[:5])}")
        if absent:
            raise ModelZipError(f"{path}: refused: file(s) listed in {MANIFEST} but missing: {', '.join(absent[:5])}")
        expected = {f"{model}/{PLANS_FILE}", f"{model}/{DATASET_FILE}"} | {f"{model}/fold_{f}/{checkpoint}" for f in folds}
        if not expected <= content:
            raise ModelZipError(f"{path}: refused: incomplete model, missing "
                                f"{', '.join(sorted(expected - content))}")
        for name in sorted(content):
            digest = hashlib.sha256()
            with zf.open(name) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != files[name].lower():
                raise ModelZipError(f"{path}: refused: {name} does not match its SHA-256 in {MANIFEST} "
                                    f"(tampered with or corrupted); get a fresh copy of the model")
    return ModelZipContents(path, model, checkpoint, folds, half, files)


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


def _float32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_model_zip(path: str | Path, folds: Sequence[str | int] | None = None) -> LoadedModel:
    """Verify ``path`` and read its plans, dataset.json and weights into memory (nothing is extracted)."""
    contents = verify_model_zip(path)
    chosen = [str(f) for f in folds] if folds else contents.folds
    missing = [f for f in chosen if f not in contents.folds]
    if missing:
        raise HiennuError(f"{path}: holds folds {', '.join(contents.folds)}, not {', '.join(missing)}")
    with zipfile.ZipFile(contents.path) as zf:
        try:
            plans = Plans.from_dict(json.loads(zf.read(contents.member(PLANS_FILE))),
                                    source=f"{path}:{contents.member(PLANS_FILE)}")
            dataset = DatasetJson.from_dict(json.loads(zf.read(contents.member(DATASET_FILE))),
                                            source=f"{path}:{contents.member(DATASET_FILE)}")
            post_member = contents.member(POSTPROCESSING_FILE)
            post = (postprocessing_from_record(json.loads(zf.read(post_member)), f"{path}:{post_member}")
                    if post_member in contents.files else None)
        except ValueError as e:
            raise ModelZipError(f"{path}: plans.json, dataset.json or {POSTPROCESSING_FILE} is not valid JSON "
                                f"({e})") from None
        weights = {}
        for fold in chosen:
            member = contents.member(f"fold_{fold}/{contents.checkpoint}")
            ckpt = load_checkpoint(io.BytesIO(zf.read(member)), f"{path}:{member}")
            check_trained_configuration(ckpt, plans.configuration(contents.configuration), f"{path}:{member}",
                                        f"{path}:{contents.member(PLANS_FILE)}")
            weights[fold] = _float32(ckpt["network_weights"])
    return LoadedModel(contents.model, plans, dataset, contents.configuration, weights, post)


def check_dataset_id_free(dataset_folder: str, roots: Sequence[Path], source: str | Path) -> None:
    """Refuse when another dataset under ``roots`` uses ``dataset_folder``'s number under another name.

    ``-d NNN`` must stay unambiguous (as :func:`hiennu.datasets.staging.check_target` ensures for
    converted datasets); installing ``Dataset950_A`` beside ``Dataset950_B`` would break it.
    """
    parsed = parse_dataset_folder_name(dataset_folder)
    if parsed is None:
        return
    clashes = sorted({f"{p}" for root in roots if Path(root).is_dir() for p in Path(root).iterdir()
                      if p.is_dir() and p.name != dataset_folder
                      and (parse_dataset_folder_name(p.name) or (None,))[0] == parsed[0]})
    if clashes:
        raise HiennuError(f"{source}: its dataset {dataset_folder} has id {parsed[0]:03d}, which is already used by "
                          f"{', '.join(clashes)}; install it under a root without that dataset (set hiennu_results, "
                          f"hiennu_raw, hiennu_preprocessed), or rename one of them so each number names one dataset")


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


def install_model_zip(path: str | Path, root: str | Path | None = None, overwrite: bool = False,
                      make_default: bool = False) -> Path:
    """Verify ``path``, check every checkpoint loads as plain weights, and extract it under the results root.

    The model lands in ``ROOT/DatasetNNN_Name/TRAINER__PLANS__CONFIG`` (moved into place in one
    rename). An existing model folder of that name is only replaced with ``overwrite=True``, except
    when it already holds this model (:func:`holds_model`, for example the training folder the zip was
    exported from): then nothing is copied or removed, so its training history (progress, validation,
    other checkpoints) stays. ``make_default`` records it in ``ROOT/default_model.json``. Returns the
    installed folder.
    """
    root = Path(root) if root is not None else results_root()
    contents = verify_model_zip(path)
    loaded = load_model_zip(path)  # every checkpoint must load with weights_only=True before anything is written
    target = root / contents.model
    check_dataset_id_free(contents.model.split("/")[0], [root, raw_root(), preprocessed_root()], path)
    if target.exists() and holds_model(target, contents, loaded):
        logger.info("%s already holds this model (same plans, dataset.json, post-processing and weights of "
                    "folds %s); nothing copied", target, ", ".join(contents.folds))
        if make_default:
            set_default_model(target, root)
            logger.info("%s is now the default model", contents.model)
        return target
    if target.exists() and not overwrite:
        raise HiennuError(f"{target} already exists and holds another model (its plans, dataset.json, "
                          f"post-processing or weights differ); pass --overwrite to replace that whole folder, "
                          f"its training history too, with the model in {path}, or install under another "
                          f"hiennu_results")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".installing", dir=target.parent))
    try:
        with zipfile.ZipFile(contents.path) as zf:
            for name in contents.files:
                relative = name[len(contents.model) + 1:]
                dest = staging / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        if target.exists():
            old = target.with_name(f".{target.name}.replaced")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("installed %s (folds %s) into %s", contents.model, ", ".join(contents.folds), target)
    if make_default:
        set_default_model(target, root)
        logger.info("%s is now the default model", contents.model)
    return target
