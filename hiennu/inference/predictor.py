"""The trained-model predictor: plans' preprocessing, fold ensemble, back to the native grid.

For each case: the channels are preprocessed with exactly the plans' steps
(:func:`hiennu.preprocessing.preprocessor.preprocess_case`: brain crop and resampling to the
target spacing, or resampling to the fixed grid; per-channel normalization), every chosen fold
predicts (with mirroring test-time augmentation unless disabled; a patch configuration slides a
window of the patch size with 50 % overlap and Gaussian weighting,
:mod:`~hiennu.inference.sliding_window`, or takes a case that overhangs the patch in one window when the plans'
``inference_window`` is ``case`` and that is cheaper, :func:`hiennu.windows.case_window`), the sigmoid probabilities are averaged
(:class:`~hiennu.inference.ensemble.FoldEnsemble`), the mean probability map is taken back to the
case's native grid with the configuration's ``prediction_interpolation`` (``linear`` or
``nearest``; a cropped case is un-cropped into zeros, :func:`~hiennu.geometry.cropping.restore_to_native`)
on the device, and thresholded there at 0.5 (``p >= 0.5`` is lesion). Components
smaller than ``min_component_voxels`` are then removed, and, when the model folder (or zip) holds a
``postprocessing.json`` chosen by cross-validation (:mod:`hiennu.postprocessing`), its choice is
applied: its ADC cap, its component size (the larger of it and the plans' ``min_component_voxels``:
:func:`hiennu.postprocessing.record.with_size_rule`), keeping only the components that touch the rule
``ZADC < -2`` and its lesion filter, whichever it chose.

Mirroring axes: the axes the plans trained with (``augmentation.mirror_axes`` when
``augmentation.p_mirror > 0``); when the plans trained without mirroring (the paper's setting),
all three spatial axes (8 passes per fold), as nnU-Net does; a ``2d`` configuration mirrors in-plane only
(y and x; z neither in its training nor in nnU-Net's 2d).

Usage from Python::

    predictor = Predictor.from_model_dir("hiennu_results/Dataset001_BONBID/TrainerTverskyHDT__hiennuPlans__3d_fullres",
                                         folds=[0, 1, 2, 3, 4])
    mask, prob = predictor.predict_case([adc, zadc], geometry)       # arrays (z, y, x)
    predictor.predict_folder("in/", "out/")
    mask_image = predictor.predict_files("case_adc.mha", "case_zadc.mha")   # SimpleITK image
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hiennu.device import resolve_device
from hiennu.errors import HiennuError
from hiennu.geometry.cropping import CropRecord, restore_to_native
from hiennu.geometry.resampling import resample_probabilities_to_native
from hiennu.inference.baseline import make_baseline, rule_predictor
from hiennu.inference.ensemble import FoldEnsemble
from hiennu.inference.ensemble_members import is_ensemble_dir
from hiennu.inference.folder_prediction import CasePredictor, check_postprocessing_channels
from hiennu.inference.model_registry import default_checkpoint, fold_sort_key, resolve_models, select_folds
from hiennu.inference.model_zip import LoadedModel, is_ensemble_zip, is_rule_zip, load_model_zip, load_rule_zip
from hiennu.inference.network_builder import (NETWORK_BUILDER_KEY, NetworkFactory, agreed_builder, network_factory,
                                              plans_network)
from hiennu.inference.sliding_window import sliding_window_predict
from hiennu.inference.trained_configuration import check_trained_configuration
from hiennu.io.checkpoint import load_checkpoint
from hiennu.io.dataset_json import DatasetJson, load_dataset_json
from hiennu.io.image import Geometry
from hiennu.log import get_logger
from hiennu.paths import ModelFolder, named_path, parse_model_dir_name
from hiennu.plans import ENUMERATED_FIELDS, PLANS_NAME, Configuration, Plans, load_plans
from hiennu.postprocessing.record import PostProcessing, load_postprocessing, load_record_file, with_size_rule
from hiennu.postprocessing.rule_folder import is_rule_dir, load_rule_folder
from hiennu.preprocessing.preprocessor import preprocess_case

logger = get_logger(__name__)

THRESHOLD = 0.5


@dataclass
class PreparedCase:
    """A case after the plans' preprocessing: data ``(C, z, y, x)`` float32 and, for a patch
    configuration, the crop record that takes its predictions back to the native grid."""

    data: np.ndarray
    crop: CropRecord | None


def threshold_probabilities(prob: torch.Tensor, need_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mask uint8 {0, 1}, probabilities float32 or None)`` as numpy ``(z, y, x)`` from a native probability
    map on any device: ``p >= 0.5`` is lesion (thresholded on the device, the map copied only when asked)."""
    mask = (prob >= THRESHOLD).to(torch.uint8).cpu().numpy()
    return mask, prob.cpu().numpy().astype(np.float32, copy=False) if need_probabilities else None


def tta_mirror_axes(configuration: Configuration) -> tuple[int, ...]:
    """Spatial axes (0 = z) for mirroring TTA: the trained mirror axes, or all three when none were trained.

    A 2D configuration mirrors in-plane only (y, x; nnU-Net's 2d does the same): its training mirrors only
    those (:func:`hiennu.training.augmentation.build_transforms`), a flip along z changes nothing for a network
    that sees one slice at a time but doubles the passes, and a 2.5D network would see its neighbours in an
    order it never trained on.
    """
    aug = configuration.augmentation
    axes = sorted(set(int(a) for a in aug.mirror_axes)) if aug.p_mirror > 0 and aug.mirror_axes else [0, 1, 2]
    return tuple(a for a in axes if a > 0) if configuration.is_2d else tuple(axes)


class Predictor(CasePredictor):
    """Predicts lesion masks with the folds of one trained model.

    fold_weights: fold name -> network state dict; device: None takes the first available of
    ``cuda`` > ``mps`` > ``cpu`` (:mod:`hiennu.device`);
    use_mirroring: mirroring TTA; batch_size: cases per forward pass (None: 4 on CUDA, 1 else);
    min_component_voxels: None takes the larger of the configuration's value and ``postprocessing``'s;
    a number replaces both. postprocessing: the cross-validated choice (``postprocessing.json``;
    None: only the component removal above). cpu_bf16: bfloat16 autocast on a CPU too (faster on
    CPUs with native bf16; :mod:`hiennu.device`).
    """

    def __init__(self, plans: Plans, configuration: Configuration, dataset: DatasetJson | None,
                 fold_weights: dict[str, dict[str, torch.Tensor]], device: str | torch.device | None = None,
                 use_mirroring: bool = True, batch_size: int | None = None,
                 min_component_voxels: int | None = None, name: str = "model",
                 postprocessing: PostProcessing | None = None, cpu_bf16: bool = False,
                 network_for: NetworkFactory = plans_network):
        if not fold_weights:
            raise HiennuError(f"{name}: no fold weights to predict with")
        self.plans, self.configuration, self.name = plans, configuration, name
        self.channel_names = tuple(dataset.channel_names if dataset is not None else plans.channel_names)
        if len(self.channel_names) != configuration.network.in_channels:
            raise HiennuError(f"{name}: dataset.json names {len(self.channel_names)} channels, but the network "
                              f"takes {configuration.network.in_channels}")
        self.device = resolve_device(device)
        self.folds = sorted(fold_weights, key=fold_sort_key)
        networks = []
        for fold in self.folds:
            net = network_for(configuration)
            try:
                net.load_state_dict(fold_weights[fold], strict=True)
            except RuntimeError as e:
                built = "plans.json describes" if network_for is plans_network else "its trainer's network_for builds"
                raise HiennuError(f"{name} fold {fold}: the weights do not fit the network that {built} "
                                  f"(configuration {configuration.name!r}): "
                                  f"{str(e).splitlines()[0]}; were the plans edited after training?") from None
            networks.append(net)
        self.use_mirroring = use_mirroring
        self.ensemble = FoldEnsemble(networks, self.device, tta_mirror_axes(configuration) if use_mirroring else (),
                                     cpu_bf16=cpu_bf16)
        self.batch_size = int(batch_size) if batch_size else (4 if self.device.type == "cuda" else 1)
        self.postprocessing = with_size_rule(postprocessing, configuration.min_component_voxels, min_component_voxels)
        check_postprocessing_channels(self.postprocessing, self.channel_names, name)
        allowed = ENUMERATED_FIELDS["prediction_interpolation"]
        if configuration.prediction_interpolation not in allowed:
            raise HiennuError(f"{name}: plans prediction_interpolation {configuration.prediction_interpolation!r} "
                              f"must be one of {', '.join(allowed)}")
        logger.info("model %s, configuration %s, folds %s, device %s, %s, post-processing: %s", name,
                    configuration.name, ", ".join(self.folds), self.device,
                    f"mirroring over axes {tta_mirror_axes(configuration)}" if use_mirroring else "no mirroring",
                    self.postprocessing.name)

    # ---------------------------------------------------------------------------------- construction

    @classmethod
    def from_model_dir(cls, path: str | Path, folds: Sequence[int | str] | None = None,
                       checkpoint: str | None = None, device: str | torch.device | None = None,
                       use_mirroring: bool = True, use_postprocessing: bool = True, **kwargs) -> "Predictor":
        """Load ``TRAINER__PLANS__CONFIG/`` (plans.json, dataset.json, fold_K/<checkpoint>, and
        ``postprocessing.json`` when present and ``use_postprocessing``; cross-validation predictions
        are made without it, since they are what it is chosen on).

        folds: fold numbers or ``"all"`` (default: the numbered folds, :func:`~hiennu.inference.model_registry.select_folds`,
        which refuses a fold whose training has not finished). The
        configuration is the folder name's CONFIG part (else the plans' default). A fold whose
        checkpoint records another configuration than these plans is refused, naming the field
        (:func:`~hiennu.inference.trained_configuration.check_trained_configuration`).
        """
        path = Path(path).expanduser()
        if not path.is_dir():
            raise HiennuError(f"model folder {path} not found")
        path = named_path(path)  # "." has no name to read the configuration from; a link keeps its own
        checkpoint = checkpoint or default_checkpoint(path, folds)
        plans = load_plans(path)
        parts = parse_model_dir_name(path.name)
        configuration = plans.configuration(parts.configuration if parts else None)
        dataset = load_dataset_json(path) if ModelFolder(path).dataset_json.is_file() else None
        chosen = select_folds(path, folds, checkpoint, "-chk NAME")
        logger.info("%s: folds %s, %s", path.name, ", ".join(chosen), checkpoint)
        states = {}
        for fold in chosen:
            ckpt_path = path / f"fold_{fold}" / checkpoint
            state = load_checkpoint(ckpt_path)
            check_trained_configuration(state, configuration, str(ckpt_path), ModelFolder(path).plans,
                                        ModelFolder(path).fold_plans(fold))
            states[fold] = state
        name = f"{path.parent.name}/{path.name}"
        post = load_postprocessing(path) if use_postprocessing else None
        builder = agreed_builder({f: s.get(NETWORK_BUILDER_KEY) for f, s in states.items()}, str(path))
        return cls(plans, configuration, dataset, {f: s["network_weights"] for f, s in states.items()}, device=device,
                   use_mirroring=use_mirroring, name=name, postprocessing=post,
                   network_for=network_factory(builder, str(path)), **kwargs)

    @classmethod
    def from_zip(cls, path: str | Path, folds: Sequence[int | str] | None = None,
                 device: str | torch.device | None = None, use_mirroring: bool = True,
                 use_postprocessing: bool = True, **kwargs) -> CasePredictor:
        """Load a zip written by ``hiennu_export_model`` (verified; nothing is extracted), with the
        ``postprocessing.json`` it holds (when present and ``use_postprocessing``). A zip of an ensemble
        of configurations gives its :class:`~hiennu.inference.configuration_ensemble.ConfigurationEnsemble`."""
        if is_ensemble_zip(path):
            from hiennu.inference.configuration_ensemble import ConfigurationEnsemble
            forced = kwargs.pop("min_component_voxels", None)
            return ConfigurationEnsemble.from_zip(path, folds, use_postprocessing, forced, device=device,
                                                  use_mirroring=use_mirroring, **kwargs)
        return cls.from_loaded(load_model_zip(path, folds), device=device, use_mirroring=use_mirroring,
                               use_postprocessing=use_postprocessing, **kwargs)

    @classmethod
    def from_loaded(cls, model: LoadedModel, use_postprocessing: bool = True, **kwargs) -> "Predictor":
        """A model read from a zip (:class:`~hiennu.inference.model_zip.LoadedModel`), with its post-processing
        when ``use_postprocessing``; ``kwargs`` as for the constructor."""
        return cls(model.plans, model.plans.configuration(model.configuration), model.dataset, model.weights,
                   name=model.name, postprocessing=model.postprocessing if use_postprocessing else None,
                   network_for=network_factory(model.network_builder, model.name), **kwargs)

    @classmethod
    def from_path(cls, path: str | Path, folds: Sequence[int | str] | None = None,
                  checkpoint: str | None = None, **kwargs) -> CasePredictor:
        """A model folder or a model zip, whichever ``path`` is (checkpoint None: the folder's default,
        :func:`~hiennu.inference.model_registry.default_checkpoint`). An ensemble folder or ensemble zip
        gives its :class:`~hiennu.inference.configuration_ensemble.ConfigurationEnsemble`."""
        if Path(path).is_file():
            return cls.from_zip(path, folds, **kwargs)
        if is_ensemble_dir(path):
            from hiennu.inference.configuration_ensemble import ConfigurationEnsemble
            forced = kwargs.pop("min_component_voxels", None)
            return ConfigurationEnsemble.from_ensemble_dir(path, folds, checkpoint, min_component_voxels=forced,
                                                           **kwargs)
        return cls.from_model_dir(path, folds, checkpoint, **kwargs)

    # ---------------------------------------------------------------------------------- prediction

    def prepare(self, images: list[np.ndarray], geometry: Geometry) -> PreparedCase:
        """The plans' preprocessing of one case (the reader thread's work)."""
        data, _, crop = preprocess_case(images, self.configuration, spacing_zyx=geometry.spacing_zyx)
        return PreparedCase(data, crop)

    def predict_prepared(self, prepared: list[PreparedCase], geometries: list[Geometry],
                         need_probabilities: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return [threshold_probabilities(prob, need_probabilities)
                for prob in self.native_probabilities(prepared, geometries)]

    def native_probabilities(self, prepared: list[PreparedCase], geometries: list[Geometry]) -> list[torch.Tensor]:
        """The mean probability map (over folds and mirrorings) of each prepared case on its native grid:
        float32 ``(z, y, x)`` tensors of ``geometry.size_zyx``, on the device (an ensemble of configurations
        averages these, :mod:`~hiennu.inference.configuration_ensemble`)."""
        if self.configuration.is_patch_based:
            return [self._predict_patches(case) for case in prepared]
        batch = torch.from_numpy(np.stack([case.data for case in prepared]).astype(np.float32, copy=False))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        probs = self.ensemble.predict_probabilities(batch)
        return [resample_probabilities_to_native(probs[i], geometry.size_zyx,
                                                 mode=self.configuration.prediction_interpolation)
                for i, geometry in enumerate(geometries)]

    def _predict_patches(self, case: PreparedCase) -> torch.Tensor:
        """Sliding-window probabilities of one cropped case, back on its native grid (a tensor on the device)."""
        data = torch.from_numpy(np.ascontiguousarray(case.data, dtype=np.float32)).to(self.device)
        window = self.configuration.inference_window_zyx(data.shape[1:])
        prob = sliding_window_predict(self.ensemble.predict_probabilities, data, window,
                                      windows_per_batch=self.batch_size)
        assert case.crop is not None
        return restore_to_native(prob, case.crop, self.configuration.prediction_interpolation)


def build_predictor(model: str | Path | Sequence[str | Path] | None = None, dataset: str | int | None = None,
                    trainer: str | Sequence[str] | None = None, configuration: str | Sequence[str] | None = None,
                    folds: Sequence[int | str] | None = None, checkpoint: str | None = None,
                    device: str | None = None, use_mirroring: bool = True, baseline: str | None = None,
                    min_component_voxels: int | None = None, batch_size: int | None = None,
                    plans_name: str | Sequence[str] = PLANS_NAME, cpu_bf16: bool = False,
                    baseline_postprocessing: str | Path | None = None) -> CasePredictor:
    """The predictor that ``hiennu_predict``'s options name.

    ``baseline`` (``zadc``) needs no model; otherwise the model is ``model`` (folder or zip; several
    for an ensemble of configurations), the model(s) of ``dataset``/``trainer``/``configuration``/``plans_name``
    (several configurations, trainers or plans: an ensemble), or the default model, which may be an
    ensemble (:func:`hiennu.inference.model_registry.resolve_models`). checkpoint: a file name, or None for
    each model's default (:func:`~hiennu.inference.model_registry.default_checkpoint`; an ensemble folder's
    ``members.json`` names its own). baseline_postprocessing: a ``postprocessing.json`` the baseline applies
    (``hiennu_determine_postprocessing --rule`` writes one); a model applies its own. A rule folder or rule zip
    (:mod:`hiennu.postprocessing.rule_folder`) named or installed as the default predicts the rule with its own
    post-processing (:func:`hiennu.inference.baseline.rule_predictor`); it cannot be ensembled with models.
    """
    if baseline is not None:
        if model is not None or dataset is not None:
            raise HiennuError("--baseline predicts without a model; drop -m/-d/-tr/-c")
        post = None if baseline_postprocessing is None else load_record_file(baseline_postprocessing)
        return make_baseline(baseline, min_component_voxels, post)
    if baseline_postprocessing is not None:
        raise HiennuError("--postprocessing is for --baseline; a model applies its own postprocessing.json (choose "
                          "it with hiennu_determine_postprocessing)")
    paths = resolve_models(model, dataset, trainer, configuration, plans_name)
    rules = [p for p in paths if is_rule_dir(p) or (Path(p).is_file() and is_rule_zip(p))]
    if rules:
        if len(paths) > 1:
            raise HiennuError(f"{rules[0]} is the rule ZADC < -2 with its post-processing, which cannot be ensembled "
                              f"with models; predict with it alone (-m {rules[0]})")
        if folds or checkpoint is not None:
            raise HiennuError(f"{paths[0]} is the rule ZADC < -2 with its post-processing, which has no folds or "
                              f"checkpoints; predict with it without -f/-chk")
        rule = load_rule_folder(paths[0]) if is_rule_dir(paths[0]) else load_rule_zip(paths[0])
        return rule_predictor(rule, min_component_voxels)
    kwargs = dict(device=device, use_mirroring=use_mirroring, batch_size=batch_size, cpu_bf16=cpu_bf16)
    if len(paths) > 1:
        from hiennu.inference.configuration_ensemble import ConfigurationEnsemble
        return ConfigurationEnsemble.from_paths(paths, folds, checkpoint, min_component_voxels=min_component_voxels,
                                                **kwargs)
    return Predictor.from_path(paths[0], folds, checkpoint, min_component_voxels=min_component_voxels, **kwargs)
