"""Finding trained models under ``$hiennu_results`` and choosing the one to predict with.

A model folder is ``$hiennu_results/DatasetNNN_Name/TRAINER__PLANS__CONFIG/`` holding
``plans.json``, ``dataset.json`` and ``fold_K/checkpoint_*.pth`` (``K`` a number or ``all``).
The *default model* is the one recorded in ``$hiennu_results/default_model.json`` (written by
``hiennu_install_model --default``); without that file it is the only trained model under the
root. :func:`resolve_model` turns the options of ``hiennu_predict`` into one model folder (or zip, or
ensemble folder, or rule folder); :func:`resolve_models` into the one or more a configuration ensemble names.

``default_model.json`` is ``{"model_dir": "DatasetNNN_Name/TRAINER__PLANS__CONFIG"}`` for one model, or, for
an ensemble of configurations, ``{"ensemble_dir": "DatasetNNN_Name/ensembles/ensemble___M1___M2",
"model_dirs": ["DatasetNNN_Name/M1", "DatasetNNN_Name/M2"]}``, or, for the rule ZADC < -2 with its post-processing
(:mod:`hiennu.postprocessing.rule_folder`), ``{"rule_dir": "DatasetNNN_Name/baseline_zadc"}`` (paths relative to
the root when inside it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json, write_json
from hiennu.inference.ensemble_members import (check_ensemble_complete, is_ensemble_dir, load_ensemble_members,
                                               member_dirs)
from hiennu.io.checkpoint import BEST, CHECKPOINT_PATTERN, FINAL, checkpoint_file
from hiennu.paths import (RESULTS_ENV, RULE_DIR, named_path, parse_dataset_folder_name, parse_model_dir_name,
                          resolve_dataset, results_root)
from hiennu.plans import PLANS_NAME
from hiennu.postprocessing.rule_folder import is_rule_dir, load_rule_folder

DEFAULT_MODEL_FILE = "default_model.json"
_FOLD_RE = re.compile(r"^fold_(?P<fold>\d+|all)$")


@dataclass(frozen=True)
class TrainedModel:
    """A model folder and what it holds. folds: fold names (``"0"``, ``"all"`` ...) with a checkpoint."""

    path: Path
    dataset: str
    trainer: str
    plans: str
    configuration: str
    folds: tuple[str, ...]

    def describe(self) -> str:
        return (f"{self.dataset}/{self.path.name} (folds {', '.join(self.folds)}): "
                f"-d {self.dataset} -tr {self.trainer} -c {self.configuration}")


def fold_sort_key(fold: str) -> tuple[int, int]:
    return (1, 0) if fold == "all" else (0, int(fold))


def model_folds(model_dir: Path, checkpoint: str | None = None) -> list[str]:
    """Fold names under ``model_dir`` that hold ``checkpoint`` (any ``checkpoint_*.pth`` if None), sorted."""
    folds = []
    if Path(model_dir).is_dir():
        for p in Path(model_dir).iterdir():
            m = _FOLD_RE.match(p.name)
            if not (m and p.is_dir()):
                continue
            has = (p / checkpoint).is_file() if checkpoint else any(p.glob(CHECKPOINT_PATTERN))
            if has:
                folds.append(m.group("fold"))
    return sorted(folds, key=fold_sort_key)


def describe_model_dir(model_dir: Path) -> TrainedModel | None:
    """The :class:`TrainedModel` in ``model_dir``, or None if it is not a trained model folder."""
    model_dir = Path(model_dir)
    parts = parse_model_dir_name(model_dir.name)
    folds = model_folds(model_dir)
    if parts is None or not folds or not (model_dir / "plans.json").is_file():
        return None
    return TrainedModel(model_dir, model_dir.parent.name, parts.trainer, parts.plans, parts.configuration,
                        tuple(folds))


def find_trained_models(root: Path | None = None) -> list[TrainedModel]:
    """Every trained model folder under the results root, sorted by dataset and folder name."""
    root = Path(root) if root is not None else results_root()
    models = []
    if root.is_dir():
        for ds in sorted(root.iterdir()):
            if not (ds.is_dir() and parse_dataset_folder_name(ds.name)):
                continue
            for sub in sorted(ds.iterdir()):
                if sub.is_dir():
                    model = describe_model_dir(sub)
                    if model:
                        models.append(model)
    return models


def default_model_file(root: Path | None = None) -> Path:
    return (Path(root) if root is not None else results_root()) / DEFAULT_MODEL_FILE


def _stored(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return str(path)


def set_default_model(model_dir: Path, root: Path | None = None) -> Path:
    """Record ``model_dir`` (a model folder, an ensemble folder with its members, or a rule folder, read first so a
    malformed one is refused) as the default model (relative to the root when inside it); returns the file."""
    root = Path(root) if root is not None else results_root()
    model_dir = Path(model_dir).resolve()
    if is_ensemble_dir(model_dir):
        members = _checked_members(model_dir, "cannot make it the default model")
        record = {"ensemble_dir": _stored(model_dir, root), "model_dirs": [_stored(m, root) for m in members]}
    elif is_rule_dir(model_dir):
        load_rule_folder(model_dir)
        record = {"rule_dir": _stored(model_dir, root)}
    elif describe_model_dir(model_dir) is None:
        raise HiennuError(f"{model_dir} is not a trained model folder (TRAINER__PLANS__CONFIG with plans.json "
                          f"and fold_K/checkpoint_*.pth), an ensemble folder nor a rule folder; cannot make it the "
                          f"default model")
    else:
        record = {"model_dir": _stored(model_dir, root)}
    path = default_model_file(root)
    write_json(record, path)
    return path


def _checked_members(ensemble_dir: Path, consequence: str) -> list[Path]:
    """The member model folders of an ensemble folder, each a trained model folder, else a one-line error."""
    members = member_dirs(ensemble_dir, load_ensemble_members(ensemble_dir))
    for member in members:
        if describe_model_dir(member) is None:
            raise HiennuError(f"{ensemble_dir}: its member {member.name} is not a trained model folder at {member}; "
                              f"{consequence} (train or install it first)")
    return members


def read_default_model(root: Path | None = None) -> Path | None:
    """The recorded default model folder (or ensemble folder, or rule folder), or None when no default was installed.

    Every form of ``default_model.json`` loads (module docstring); the one-model form is the only one
    hiennu wrote before ensembles of configurations.
    """
    root = Path(root) if root is not None else results_root()
    path = default_model_file(root)
    if not path.is_file():
        return None
    again = f"delete {path} or install a default again with hiennu_install_model MODEL.zip --default"
    try:
        record = read_json(path)
        if "ensemble_dir" in record:
            stored = Path(record["ensemble_dir"])
            listed = [Path(m) for m in record["model_dirs"]]
        else:
            stored, listed = Path(record["rule_dir"] if "rule_dir" in record else record["model_dir"]), None
    except (ValueError, KeyError, TypeError) as e:
        raise HiennuError(f"{path}: cannot be read ({e!r}); delete it or re-run hiennu_install_model --default") from None
    model_dir = stored if stored.is_absolute() else root / stored
    if "rule_dir" in record:
        if not is_rule_dir(model_dir):
            raise HiennuError(f"{path} names {model_dir} as the default model, a rule folder, but it holds no "
                              f"rule.json (moved or deleted?); {again}")
        return model_dir
    if listed is not None:
        if not is_ensemble_dir(model_dir):
            raise HiennuError(f"{path} names {model_dir} as the default ensemble, but that is not an ensemble folder "
                              f"with members.json (moved or deleted?); {again}")
        members = _checked_members(model_dir, f"the default model cannot be used; {again}")
        listed = [m if m.is_absolute() else root / m for m in listed]
        if sorted(m.resolve() for m in members) != sorted(m.resolve() for m in listed):
            raise HiennuError(f"{path} lists the models {', '.join(map(str, listed))}, but {model_dir}/members.json "
                              f"names {', '.join(map(str, members))}; {again}")
        return model_dir
    if describe_model_dir(model_dir) is None:
        raise HiennuError(f"{path} names {model_dir} as the default model, but that is not a trained model folder "
                          f"(moved or deleted?); delete {path} or install a default again with "
                          f"hiennu_install_model MODEL.zip --default")
    return model_dir


def _listing(models: list[TrainedModel]) -> str:
    return "\n".join(f"  - {m.describe()}" for m in models)


def resolve_model(model: str | Path | None = None, dataset: str | int | None = None, trainer: str | None = None,
                  configuration: str | None = None, plans_name: str = PLANS_NAME) -> Path:
    """The model folder (or model zip) that the options name.

    - ``model``: a model folder, an ensemble folder, a rule folder (``DatasetNNN_Name/baseline_zadc``) or a
      ``.zip`` exported by ``hiennu_export_model``.
    - ``dataset`` [+ ``trainer``] [+ ``configuration``]: the one model of that dataset matching them.
    - nothing: the default model, else the only trained model under the results root.
    Raises :class:`HiennuError` listing the candidates and the options that pick one when the
    choice is empty or ambiguous.
    """
    if model is not None:
        if dataset is not None or trainer is not None:
            raise HiennuError("give either -m MODEL_DIR_OR_ZIP or -d/-tr/-c, not both")
        path = Path(model).expanduser()
        if path.is_dir():  # "-m ." or "-m ../M": the folder's own name says what it is (a link keeps its own name)
            path = named_path(path)
        if path.is_file() and path.suffix.lower() == ".zip":
            return path
        if path.is_dir():
            check_ensemble_complete(path)
            if is_ensemble_dir(path) or is_rule_dir(path):
                return path.resolve()   # their members and dataset are found beside the real folder
            if describe_model_dir(path) is None:
                raise HiennuError(f"{path} is not a trained model folder: expected TRAINER__PLANS__CONFIG/ with "
                                  f"plans.json, dataset.json and fold_K/checkpoint_*.pth (or an ensemble folder "
                                  f"with members.json, or a rule folder with rule.json: a {RULE_DIR}/ written before "
                                  f"rule folders existed holds only postprocessing.json; run "
                                  f"hiennu_determine_postprocessing --rule again to complete it)")
            return path
        raise HiennuError(f"model {path} not found (neither a model folder nor a .zip file)")
    root = results_root()
    if dataset is None:
        if trainer is not None or configuration is not None:
            raise HiennuError("-tr/-c need -d DATASET as well")
        default = read_default_model(root)
        if default is not None:
            return default
        models = find_trained_models(root)
        if len(models) == 1:
            return models[0].path
        if not models:
            raise HiennuError(f"no trained model under {root} (${RESULTS_ENV}), and no default model installed. "
                              f"Train one with hiennu_train, install one with hiennu_install_model MODEL.zip "
                              f"--default, or name one with -m MODEL_DIR_OR_ZIP")
        raise HiennuError(f"{len(models)} trained models under {root} and no default model; pick one with "
                          f"the options shown, or -m MODEL_DIR, or make one the default "
                          f"(hiennu_install_model MODEL.zip --default):\n{_listing(models)}")
    ds = resolve_dataset(dataset, [root])
    models = [m for m in find_trained_models(root) if m.dataset == ds and m.plans == plans_name
              and (trainer is None or m.trainer == trainer)
              and (configuration is None or m.configuration == configuration)]
    if len(models) == 1:
        return models[0].path
    asked = f"-d {dataset}" + (f" -tr {trainer}" if trainer else "") + (f" -c {configuration}" if configuration else "")
    others = [m for m in find_trained_models(root) if m.dataset == ds]
    if not models:
        raise HiennuError(f"no trained model matches {asked} under {root / ds}. Trained models of {ds}:\n"
                          + (_listing(others) if others else "  (none)"))
    raise HiennuError(f"{len(models)} trained models match {asked}; add -tr/-c to pick one:\n{_listing(models)}")


def _as_list(value: str | Sequence[str] | None) -> list[str | None]:
    if value is None:
        return [None]
    return [value] if isinstance(value, (str, Path)) else list(value)


def resolve_models(model: str | Path | Sequence[str | Path] | None = None, dataset: str | int | None = None,
                   trainer: str | Sequence[str] | None = None, configuration: str | Sequence[str] | None = None,
                   plans_name: str | Sequence[str] = PLANS_NAME) -> list[Path]:
    """The model folders (or zips, or one ensemble folder) that ``hiennu_predict``'s options name: one path
    for one model (:func:`resolve_model`), two or more for an ensemble of configurations.

    ``model``: one or more folders or zips. Else ``dataset`` with ``trainer``, ``configuration`` and
    ``plans_name`` each given once (the same for every model) or once per model, e.g. ``-c 2d 3d_fullres``
    with one ``-tr`` and one ``-p``.
    """
    if model is not None and not isinstance(model, (str, Path)):
        models = list(model)
        if not models:
            raise HiennuError("-m needs at least one model folder or zip")
        if dataset is not None or trainer is not None or configuration is not None:
            raise HiennuError("give either -m MODEL_DIR_OR_ZIP ... or -d/-tr/-c, not both")
        return [resolve_model(m) for m in models]
    trainers, configurations, plans = _as_list(trainer), _as_list(configuration), _as_list(plans_name)
    counts = {flag: len(values) for flag, values in (("-tr", trainers), ("-c", configurations), ("-p", plans))}
    if len(set(counts.values()) - {1}) > 1:
        raise HiennuError("-tr, -c and -p each take one value (for every model) or one per model, but "
                          + ", ".join(f"{flag} names {k}" for flag, k in counts.items() if k > 1)
                          + "; give the same number to each, or one")
    n = max(counts.values())
    if model is not None and (n > 1 or configuration is not None):
        raise HiennuError("give either -m MODEL_DIR_OR_ZIP ... or -d/-tr/-c, not both")
    if n == 1:
        return [resolve_model(model, dataset, trainers[0], configurations[0], plans[0] or PLANS_NAME)]
    if dataset is None:
        raise HiennuError("several -tr/-c/-p name an ensemble; give -d DATASET as well")
    def pick(values: list, i: int):
        return values[i] if len(values) > 1 else values[0]

    return [resolve_model(None, dataset, pick(trainers, i), pick(configurations, i), pick(plans, i) or PLANS_NAME)
            for i in range(n)]


def default_folds(model_dir: Path, checkpoint: str | None = None) -> list[str]:
    """The folds a model folder predicts with when none are named: its numbered folds holding ``checkpoint`` (any
    checkpoint if None), and ``all`` only when it is the only one (nnU-Net's auto-detection leaves ``fold_all`` out
    too: it was trained on every case, the numbered folds on parts of them)."""
    folds = model_folds(Path(model_dir), checkpoint)
    return [f for f in folds if f != "all"] or folds


def default_checkpoint(model_dir: Path, folds: Sequence[str | int] | None = None) -> str:
    """The checkpoint a model folder predicts with when none is named: ``checkpoint_final.pth`` unless none of the
    folds (``folds``, else every fold, ``fold_all`` included) holds it, then ``checkpoint_best.pth`` (models exported or
    installed before final became the default). When some hold final and others only other checkpoints (a training not
    finished), final: :func:`select_folds` then names the unfinished folds instead of switching every fold to best.
    A rule folder has no checkpoint: ``checkpoint_final.pth``, as for a zip (any answer does)."""
    if is_rule_dir(model_dir):
        return FINAL
    with_final = set(model_folds(Path(model_dir), FINAL))
    if folds:  # the folds asked for: best when none of them holds final
        return BEST if not with_final.intersection(str(f) for f in folds) else FINAL
    return BEST if model_folds(Path(model_dir)) and not with_final else FINAL


def select_folds(model_dir: Path, folds: Sequence[str | int] | None, checkpoint: str, fix: str) -> list[str]:
    """The folds to load from ``model_dir``: ``folds`` when given, else :func:`default_folds`; each must hold
    ``checkpoint``. Without ``folds`` a numbered fold that holds other checkpoints but not this one (a training not
    finished) is refused, naming it, rather than left out without a word, as nnU-Net refuses a missing fold.
    fix: how to name another checkpoint in the caller's options (``-chk best``)."""
    model_dir = Path(model_dir)
    available = model_folds(model_dir, checkpoint)
    if folds:
        chosen = [str(f) for f in folds]
    else:
        chosen = default_folds(model_dir, checkpoint)
        unfinished = [f for f in default_folds(model_dir) if f not in available]
        if unfinished and chosen:
            raise HiennuError(f"{model_dir}: fold(s) {', '.join(unfinished)} hold no {checkpoint} (training not "
                              f"finished?), fold(s) {', '.join(chosen)} do; wait for them, name the finished folds "
                              f"(-f {' '.join(chosen)}), or another checkpoint ({fix})")
    missing = [f for f in chosen if f not in available]
    if missing or not chosen:
        others = sorted({p.name for p in model_dir.glob(f"fold_*/{CHECKPOINT_PATTERN}")})
        raise HiennuError(f"{model_dir}: no {checkpoint} for fold(s) {', '.join(missing) or '(any)'}; folds with "
                          f"{checkpoint}: {', '.join(available) or 'none'}; checkpoints present: "
                          f"{', '.join(others) or 'none'} (pick one with {fix})")
    return chosen


def model_checkpoint(choice: str | None, model: str | Path | None = None, dataset: str | int | None = None,
                     trainer: str | None = None, configuration: str | None = None,
                     plans_name: str = PLANS_NAME) -> str:
    """The checkpoint file ``hiennu_predict`` loads: ``choice`` (``final``, ``best`` or a file name,
    :func:`hiennu.io.checkpoint.checkpoint_file`) when given, else :func:`default_checkpoint` of the model
    the other options name (:func:`resolve_model`; a zip names its own and a rule folder has none, so any answer
    does; an ensemble folder's ``members.json`` names its own)."""
    if choice is not None:
        return checkpoint_file(choice)
    path = resolve_model(model, dataset, trainer, configuration, plans_name)
    if path.is_file() or is_rule_dir(path):
        return FINAL
    return load_ensemble_members(path).checkpoint if is_ensemble_dir(path) else default_checkpoint(path)
