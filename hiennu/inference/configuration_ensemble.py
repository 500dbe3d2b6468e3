"""Ensembles of configurations: two or more trained models (say a ``2d`` and a ``3d_fullres``) predicting together.

For each case, every member model (a :class:`~hiennu.inference.predictor.Predictor` with its own plans,
folds, checkpoint and mirroring TTA) preprocesses the case its own way from the same images (read once)
and predicts its mean probability map over its folds and mirrorings, taken back to the case's native
grid. The members' maps are averaged with an equal weight per member (nnU-Net's ensembling; the members
built from folders or zips use the same folds, and a member built by hand with more folds would still
count once) and thresholded there at 0.5 (``p >= 0.5`` is lesion).
No member applies post-processing of its own: each member's ``postprocessing.json`` was chosen for that
model alone. The ensemble's own ``postprocessing.json`` (chosen by ``hiennu_find_best_configuration`` on the
ensemble's cross-validation masks, in its :class:`~hiennu.paths.EnsembleFolder`) is applied instead, through
the same code as a single model's (:meth:`~hiennu.inference.folder_prediction.CasePredictor.postprocess`).

The plans' ``min_component_voxels`` (a prediction-only size rule, 0 unless edited) meets that record as
for one model (:func:`hiennu.postprocessing.record.with_size_rule`); when the members' plans carry
different sizes, the largest applies (:func:`ensemble_min_component_voxels`): each plans file asks that
no smaller component survive, and the ensemble's mask must not break any member's rule.

Members must read the same input channels (``channel_names`` of their ``dataset.json``) and come from one
dataset; the ensemble's masks, like a single model's, have each input's exact size, spacing, origin and
direction (uint8).

Usage from Python::

    ensemble = ConfigurationEnsemble.from_paths(["hiennu_results/Dataset001_BONBID/T__hiennuPlans__2d",
                                                 "hiennu_results/Dataset001_BONBID/T__hiennuPlans__3d_fullres"])
    ensemble.predict_folder("in/", "out/")
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from hiennu.errors import HiennuError
from hiennu.inference.ensemble_members import (check_ensemble_complete, is_ensemble_dir, load_ensemble_members,
                                               member_dirs)
from hiennu.inference.folder_prediction import CasePredictor, check_postprocessing_channels
from hiennu.inference.model_registry import default_checkpoint, describe_model_dir, model_folds, select_folds
from hiennu.inference.model_zip import ModelZipContents, load_ensemble_zip, load_model_zip, verify_model_zip
from hiennu.inference.predictor import PreparedCase, Predictor, threshold_probabilities
from hiennu.io.image import Geometry
from hiennu.log import get_logger
from hiennu.paths import EnsembleFolder, parse_dataset_folder_name, parse_model_dir_name
from hiennu.plans import Configuration, load_plans
from hiennu.postprocessing.record import PostProcessing, load_postprocessing, with_size_rule

logger = get_logger(__name__)


def ensemble_min_component_voxels(configurations: Iterable[Configuration]) -> int:
    """The plans' size rule of an ensemble: the largest ``min_component_voxels`` among its members' configurations."""
    return max((int(c.min_component_voxels) for c in configurations), default=0)


def find_best_configuration_command(model_names: Sequence[str], dataset: str,
                                    folds: Sequence[str] | None = None) -> str:
    """The ``hiennu_find_best_configuration`` call that scores these models and writes their ensemble folder; with
    ``-f`` when the models hold other cross-validation folds than its default 0-4 (``fold_all`` is no CV fold)."""
    parts = [parse_model_dir_name(n) for n in model_names]

    def unique(values: Iterable[str]) -> str:
        return " ".join(dict.fromkeys(values))  # in order, each once

    numbered = [str(f) for f in folds or () if str(f).isdigit()]
    return (f"hiennu_find_best_configuration -d {dataset} -c {unique(p.configuration for p in parts)} "
            f"-tr {unique(p.trainer for p in parts)} -p {unique(p.plans for p in parts)}"
            + (f" -f {' '.join(numbered)}" if numbered and numbered != ["0", "1", "2", "3", "4"] else ""))


class ConfigurationEnsemble(CasePredictor):
    """Predicts lesion masks with two or more trained models, their probabilities averaged (module docstring).

    members: one :class:`Predictor` per model (their own post-processing is not applied);
    postprocessing: the ensemble's cross-validated choice (None: only the plans' size rule);
    min_component_voxels: None takes the larger of the members' plans' value and ``postprocessing``'s;
    a number replaces both.
    """

    def __init__(self, members: Sequence[Predictor], postprocessing: PostProcessing | None = None,
                 min_component_voxels: int | None = None, name: str | None = None):
        if len(members) < 2:
            raise HiennuError(f"an ensemble of configurations needs two or more models, got {len(members)}")
        first = members[0]
        for other in members[1:]:
            if tuple(other.channel_names) != tuple(first.channel_names):
                raise HiennuError(
                    f"{first.name} reads channels {', '.join(first.channel_names)} but {other.name} reads "
                    f"{', '.join(other.channel_names)}; the models of an ensemble must read the same input channels "
                    f"(channel_names in their dataset.json): ensemble models of one dataset")
        self.members = list(members)
        self.name = name or " + ".join(m.name for m in members)
        self.channel_names = tuple(first.channel_names)
        self.batch_size = min(m.batch_size for m in members)
        self.postprocessing = with_size_rule(postprocessing, ensemble_min_component_voxels(
            m.configuration for m in members), min_component_voxels)
        check_postprocessing_channels(self.postprocessing, self.channel_names, self.name)
        logger.info("ensemble of %d models (%s), probabilities averaged, post-processing: %s", len(members),
                    ", ".join(m.name for m in members), self.postprocessing.name)

    # ---------------------------------------------------------------------------------- construction

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], folds: Sequence[int | str] | None = None,
                   checkpoint: str | None = None, use_postprocessing: bool = True,
                   min_component_voxels: int | None = None, **kwargs) -> "ConfigurationEnsemble":
        """Two or more model folders or single-model zips, or one ensemble folder or ensemble zip.

        Model folders find their ensemble's post-processing in ``EnsembleFolder.of(their parent folder,
        their names)``: its ``members.json`` gives the folds and checkpoint unless ``folds``/``checkpoint``
        are given, its ``postprocessing.json`` is applied (when ``use_postprocessing``). Without that folder
        the ensemble predicts without post-processing of its own and says how to choose it; folds then
        default to those every member holds (members holding different folds are refused). ``kwargs`` go to
        each member :class:`Predictor` (device, use_mirroring, batch_size, cpu_bf16).
        """
        paths = [Path(p).expanduser() for p in paths]
        if len(paths) == 1 and paths[0].is_dir() and is_ensemble_dir(paths[0]):
            return cls.from_ensemble_dir(paths[0], folds, checkpoint, use_postprocessing, min_component_voxels,
                                         **kwargs)
        members = [_Member.of(p, alone=len(paths) == 1) for p in paths]  # each zip verified (hashed) here, once
        if len(members) == 1 and members[0].contents is not None and members[0].contents.is_ensemble:
            return cls.from_zip(paths[0], folds, use_postprocessing, min_component_voxels,
                                verified=members[0].contents, **kwargs)
        _check_members(members)
        names = [m.name for m in members]
        folder = (EnsembleFolder.of(paths[0].resolve().parent, names)
                  if all(m.is_dir for m in members) and len({p.resolve().parent for p in paths}) == 1 else None)
        post = None
        command = find_best_configuration_command(names, members[0].dataset)
        if folder is not None:
            check_ensemble_complete(folder.path, command)
        if folder is not None and is_ensemble_dir(folder.path):
            record = load_ensemble_members(folder.path)
            folds = folds or list(record.folds)
            checkpoint = checkpoint or record.checkpoint
            post = load_postprocessing(folder.path) if use_postprocessing else None
            if post is None and use_postprocessing:
                logger.warning("%s holds no postprocessing.json: predicting without ensemble post-processing; "
                               "choose it with %s", folder.path, command)
        elif use_postprocessing:
            where = (f"{folder.path} not found" if folder is not None
                     else "the models are not model folders side by side")
            held = [str(f) for f in folds] if folds else _common_folds(members, checkpoint)
            logger.warning("no ensemble post-processing for %s (%s): predicting without it; choose it with %s",
                           " + ".join(names), where, find_best_configuration_command(names, members[0].dataset, held))
        folds = [str(f) for f in folds] if folds else _common_folds(members, checkpoint)
        for m in members:
            m.check_folds(folds, checkpoint)
        predictors = [m.predictor(folds, checkpoint, **kwargs) for m in members]
        return cls(predictors, post, min_component_voxels,
                   name=folder.path.name if folder is not None else None)

    @classmethod
    def from_ensemble_dir(cls, path: str | Path, folds: Sequence[int | str] | None = None,
                          checkpoint: str | None = None, use_postprocessing: bool = True,
                          min_component_voxels: int | None = None, **kwargs) -> "ConfigurationEnsemble":
        """An ensemble folder ``DatasetNNN_Name/ensembles/ensemble___M1___M2/``: the members its ``members.json``
        names (beside ``ensembles/``), with its folds and checkpoint unless given, and its ``postprocessing.json``."""
        path = Path(path)
        record = load_ensemble_members(path)
        dirs = member_dirs(path, record)
        for d in dirs:
            if describe_model_dir(d) is None:
                raise HiennuError(f"{path}: its member {d.name} is not a trained model folder at {d}; train it, or "
                                  f"install the ensemble's zip again (hiennu_install_model ENSEMBLE.zip)")
        return cls.from_paths(dirs, folds or list(record.folds), checkpoint or record.checkpoint,
                              use_postprocessing, min_component_voxels, **kwargs)

    @classmethod
    def from_zip(cls, path: str | Path, folds: Sequence[int | str] | None = None, use_postprocessing: bool = True,
                 min_component_voxels: int | None = None, verified: ModelZipContents | None = None,
                 **kwargs) -> "ConfigurationEnsemble":
        """An ensemble zip written by ``hiennu_export_model -m A B`` (verified, unless ``verified`` is the
        caller's fresh verification of it; nothing is extracted)."""
        loaded = load_ensemble_zip(path, folds, verified=verified)
        if loaded.postprocessing is None and use_postprocessing:
            logger.info("%s holds no ensemble postprocessing.json; predicting without it", path)
        predictors = [Predictor.from_loaded(m, use_postprocessing=False, **kwargs) for m in loaded.members]
        return cls(predictors, loaded.postprocessing if use_postprocessing else None, min_component_voxels,
                   name=loaded.name)

    # ---------------------------------------------------------------------------------- prediction

    def prepare(self, images: list[np.ndarray], geometry: Geometry) -> list[PreparedCase]:
        """Each member's preprocessing of the same images (read once, by the reader thread)."""
        return [member.prepare(images, geometry) for member in self.members]

    def predict_prepared(self, prepared: list[list[PreparedCase]], geometries: list[Geometry],
                         need_probabilities: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return [threshold_probabilities(prob, need_probabilities)
                for prob in self.native_probabilities(prepared, geometries)]

    def native_probabilities(self, prepared: list[list[PreparedCase]],
                             geometries: list[Geometry]) -> list[torch.Tensor]:
        """The members' native probability maps averaged with equal weights: float32 ``(z, y, x)`` per case."""
        total: list[torch.Tensor] | None = None
        for k, member in enumerate(self.members):
            probs = member.native_probabilities([case[k] for case in prepared], geometries)
            total = probs if total is None else [t + p.to(t.device) for t, p in zip(total, probs)]
        assert total is not None
        return [t / len(self.members) for t in total]


# ---------------------------------------------------------------------------------------- members on disk

class _Member:
    """A member model given by path (folder or single-model zip): its name, dataset and folds, before loading.
    contents: a zip's verification (None for a folder), made once here and reused for its folds and its loading,
    so that the zip is read and hashed once."""

    def __init__(self, path: Path, name: str, dataset: str, is_dir: bool, contents: ModelZipContents | None = None):
        self.path, self.name, self.dataset, self.is_dir = path, name, dataset, is_dir
        self.contents = contents

    @classmethod
    def of(cls, path: Path, alone: bool = False) -> "_Member":
        """``alone``: the only path given, so an ensemble zip is allowed (the caller loads it whole)."""
        if path.is_file():
            contents = verify_model_zip(path)
            if contents.is_ensemble and not alone:
                raise HiennuError(f"{path} holds an ensemble ({contents.model}); give it alone (-m {path}), not "
                                  f"with other models")
            dataset, name = contents.model.split("/")[0], contents.model.split("/")[-1]
            return cls(path, name, dataset, False, contents)
        if describe_model_dir(path) is None:
            raise HiennuError(f"{path} is not a trained model folder: expected TRAINER__PLANS__CONFIG/ with plans.json, "
                              f"dataset.json and fold_K/checkpoint_*.pth")
        dataset = path.resolve().parent.name
        if parse_dataset_folder_name(dataset) is None:
            dataset = load_plans(path).dataset_name
        return cls(path, path.name, dataset, True)

    def folds(self, checkpoint: str | None) -> list[str]:
        if self.contents is not None:
            return list(self.contents.folds)
        return select_folds(self.path, None, checkpoint or default_checkpoint(self.path), "-chk NAME")

    def predictor(self, folds: Sequence[str], checkpoint: str | None, **kwargs) -> Predictor:
        """The member's predictor without its own post-processing (the ensemble applies its own): a folder's as
        :meth:`Predictor.from_path` loads it, a zip's from its verification made in :meth:`of`."""
        if self.contents is not None:
            return Predictor.from_loaded(load_model_zip(self.path, folds, verified=self.contents),
                                         use_postprocessing=False, **kwargs)
        return Predictor.from_path(self.path, folds, checkpoint, use_postprocessing=False, **kwargs)

    def check_folds(self, folds: Sequence[str], checkpoint: str | None) -> None:
        if not self.is_dir:
            return  # the zip loader names its own missing folds
        ckpt = checkpoint or default_checkpoint(self.path)
        have = model_folds(self.path, ckpt)
        missing = [f for f in folds if f not in have]
        if missing:
            parts = parse_model_dir_name(self.name)
            raise HiennuError(
                f"ensemble member {self.path}: no {ckpt} in fold(s) {', '.join(missing)} (it has "
                f"{', '.join(have) or 'none'}); train them (hiennu_train {self.dataset} {parts.trainer} FOLD -c "
                f"{parts.configuration} -p {parts.plans}) or predict with the folds every member has (-f ...)")


def _check_members(members: list[_Member]) -> None:
    if len(members) < 2:
        raise HiennuError("an ensemble of configurations needs two or more models")
    datasets = {m.dataset for m in members}
    if len(datasets) > 1:
        raise HiennuError("models of different datasets cannot be ensembled: " + ", ".join(
            f"{m.path} ({m.dataset})" for m in members) + "; give models trained on one dataset")
    names = [m.name for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise HiennuError(f"model {', '.join(twice)} is named twice; an ensemble needs different models")


def _common_folds(members: list[_Member], checkpoint: str | None) -> list[str]:
    """The folds every member holds, when they all hold the same ones; else a one-line error."""
    held = {m.name: m.folds(checkpoint) for m in members}
    if len({tuple(f) for f in held.values()}) > 1:
        raise HiennuError("the ensemble's models hold different folds (" + "; ".join(
            f"{name}: {', '.join(f) or 'none'}" for name, f in held.items()) +
            "); train the missing folds, or pick the folds they share with -f")
    return next(iter(held.values()))
