"""Builders the tests share: tiny datasets, options, model folders and zips, case images.

Imported by the test modules (``from helpers import ...``) and by ``conftest.py`` for its fixtures.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import torch

from hiennu.inference.model_zip import MANIFEST, export_model_zip, sha256_bytes
from hiennu.inference.predictor import Predictor
from hiennu.io.atomic import write_json, write_npy
from hiennu.io.checkpoint import BEST, FINAL
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import Geometry, write_image
from hiennu.networks.unet import build_network
from hiennu.plans import (AugmentationPlan, ChannelNormalization, Configuration, NetworkPlan, Plans,
                                   TrainingPlan, save_plans)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/NAME.py`` as a module (the benchmarks are scripts, not a package), registered in
    ``sys.modules`` so that its dataclasses and pickling work; ``benchmarks/`` joins ``sys.path`` as it does for
    a script run from there, so that one benchmark can import another's parts."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- a tiny preprocessed dataset and its training

DATASET = "Dataset001_Tiny"
GRID_ZYX = (16, 32, 32)
PATCH_ZYX = (8, 16, 16)


def make_tiny_dataset(preprocessed_root: Path, n_cases: int = 6, dropout: float = 0.1,
                      deep_supervision: bool = False, augment: bool = True, patch: bool = False) -> Path:
    """A preprocessed dataset of ``n_cases`` synthetic 2-channel cases on a 16x32x32 grid.

    Each case holds a bright ellipsoid lesion (in ADC-like channel 0 darker, channel 1 negative),
    except the last case, which has none. Returns the dataset folder. ``patch``: the configuration is
    a patch configuration (as the planner's ``3d_fullres``) training on 8x16x16 patches with a
    sliding-window validation, and each case's properties hold its lesion voxel positions.
    """
    root = preprocessed_root / DATASET
    config = Configuration(
        name="3d_fullres", target_size_xyz=None if patch else list(reversed(GRID_ZYX)),
        grid_policy="spacing" if patch else "forced",
        # 2 mm: the raw tiny cases (2.5 x 1.1 x 1.2 mm) validate in 24 windows of 8x16x16 a case, not 300 at 1 mm
        target_spacing_zyx=[2.0, 2.0, 2.0] if patch else None, crop_to_brain=patch,
        patch_size_zyx=list(PATCH_ZYX) if patch else None,
        normalization=[ChannelNormalization("ADC", "zscore_image"), ChannelNormalization("ZADC", "atlas_zscore")],
        network=NetworkPlan(features_per_stage=[4, 8, 16, 32], dropout_per_stage=[dropout] * 4,
                            deep_supervision=deep_supervision),
        training=TrainingPlan(batch_size=4, num_workers=0),
        augmentation=AugmentationPlan() if augment else AugmentationPlan(
            p_noise=0, p_lowres=0, p_blur=0, p_gamma=0, p_elastic=0))
    save_plans(Plans(dataset_name=DATASET, channel_names=["ADC", "ZADC"],
                     configurations={"3d_fullres": config}), root / "plans.json")
    save_dataset_json(DatasetJson(name="Tiny", num_training=n_cases), root / "dataset.json")
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(s) for s in GRID_ZYX], indexing="ij")
    ids = [f"case_{i:03d}" for i in range(n_cases)]
    for i, case in enumerate(ids):
        c = rng.uniform([5, 10, 10], [11, 22, 22])
        r = rng.uniform([2, 3, 3], [4, 7, 7])
        lesion = (((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2) <= 1
        if i == n_cases - 1:
            lesion[:] = False
        data = rng.normal(0, 0.3, (2,) + GRID_ZYX).astype(np.float32)
        data[0][lesion] -= 2.0
        data[1][lesion] -= 3.0
        write_npy(data, root / "3d_fullres" / f"{case}.npy")
        write_npy(lesion[None].astype(np.uint8), root / "3d_fullres" / f"{case}_seg.npy")
        props = {"case_id": case, "has_lesion": bool(lesion.any()), "lesion_voxels": int(lesion.sum())}
        if patch:
            props["lesion_locations"] = np.argwhere(lesion).tolist()
        write_json(props, root / "3d_fullres" / f"{case}.json")
    folds = [ids[k::5] for k in range(5)]
    write_json([{"train": [c for c in ids if c not in folds[k]], "val": folds[k]} for k in range(5)],
               root / "splits_final.json")
    return root


def options(**kw):
    from hiennu.training.options import TrainingOptions
    base = dict(dataset="Tiny", fold=0, epochs=2, device="cpu", num_workers=0, final_validation=False, seed=7)
    base.update(kw)
    return TrainingOptions(**base)


def fold_dir(results: Path, trainer: str, fold: int | str = 0) -> Path:
    return results / DATASET / f"{trainer}__hiennuPlans__3d_fullres" / f"fold_{fold}"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_module(folder: Path, name: str, source: str) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return name


# ---------------------------------------------------------------- trained-model folders and zips

MODEL = "Dataset001_Tiny/TrainerTest__hiennuPlans__3d_fullres"


def tiny_plans(size_xyz=(16, 16, 8), interpolation="linear", min_component_voxels=0) -> Plans:
    net = NetworkPlan(features_per_stage=[4, 8, 16], pool_kernel_sizes=[[2, 2, 2]] * 2, dropout_per_stage=[0, 0, 0])
    config = Configuration("3d_fullres", list(size_xyz), "forced",
                           [ChannelNormalization("ADC", "zscore_image"), ChannelNormalization("ZADC", "zscore_image")],
                           network=net, prediction_interpolation=interpolation,
                           min_component_voxels=min_component_voxels)
    return Plans("Dataset001_Tiny", ["ADC", "ZADC"], {"3d_fullres": config})


def make_model_dir(results: Path, folds=(0, 1), checkpoint=(BEST, FINAL), seed=0,
                   trainer="TrainerTest", **plan_kwargs) -> Path:
    """A trained-model folder with freshly initialized weights per fold, saved under each name in
    ``checkpoint`` (a name or several; by default best and final, as a finished training leaves them)."""
    model_dir = results / "Dataset001_Tiny" / f"{trainer}__hiennuPlans__3d_fullres"
    plans = tiny_plans(**plan_kwargs)
    save_plans(plans, model_dir / "plans.json")
    save_dataset_json(DatasetJson("Tiny"), model_dir / "dataset.json")
    for k, fold in enumerate(folds):
        torch.manual_seed(seed + k)
        net = build_network(plans.configuration().network)
        (model_dir / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        for name in (checkpoint,) if isinstance(checkpoint, str) else checkpoint:
            torch.save({"network_weights": net.state_dict(), "epoch": 3, "trainer_name": trainer,
                        "optimizer_state": {"lr": torch.tensor(1e-3)}}, model_dir / f"fold_{fold}" / name)
    return model_dir


def zip_with(path: Path, members: dict[str, bytes], manifest: dict | None = "auto") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        if manifest == "auto":
            manifest = {"format": "hiennu-model", "format_version": 1, "model": MODEL,
                        "checkpoint": BEST, "folds": ["0"], "half_precision": False,
                        "files": {n: sha256_bytes(d) for n, d in members.items()}}
        if manifest is not None:
            zf.writestr(MANIFEST, json.dumps(manifest))
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def good_members(tmp_path: Path) -> dict[str, bytes]:
    out = export_model_zip(make_model_dir(tmp_path / "src", folds=(0,)), tmp_path / "good.zip", checkpoint=BEST)
    with zipfile.ZipFile(out) as zf:
        return {n: zf.read(n) for n in zf.namelist() if n != MANIFEST}


# ---------------------------------------------------------------- case images on an oblique grid

_C, _S = float(np.cos(0.1)), float(np.sin(0.1))
OBLIQUE = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)
GEOM = Geometry((20, 18, 7), (1.25, 1.25, 4.0), (-10.5, 3.25, 7.0), OBLIQUE)


def case_arrays(geometry: Geometry = GEOM, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    adc = rng.uniform(800, 1600, geometry.size_zyx).astype(np.float32)
    adc[:, :2] = 0
    zadc = rng.normal(0, 2, geometry.size_zyx).astype(np.float32)
    return [adc, zadc]


# ---------------------------------------------------------------- a raw dataset of varied cases

def make_varied_raw_dataset(raw_root, num_cases: int = 5, name: str = "Dataset009_TINY", seed: int = 0):
    """A raw dataset of small ADC/ZADC/label volumes of varying size and geometry."""
    rng = np.random.default_rng(seed)
    folder = raw_root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(num_cases):
        size_zyx = (6 + i % 3, 14 + 2 * i, 12 + i)
        geo = Geometry(tuple(reversed(size_zyx)), (1.2, 1.1, 3.0 + i), (float(i), -2.0, 5.0),
                       (1, 0, 0, 0, 1, 0, 0, 0, 1))
        z, y, x = np.indices(size_zyx)
        brain = ((y - size_zyx[1] / 2) ** 2 + (x - size_zyx[2] / 2) ** 2) < (min(size_zyx[1:]) / 2.5) ** 2
        adc = np.where(brain, rng.normal(1400, 200, size_zyx), 0).astype(np.float32)
        label = np.zeros(size_zyx, np.uint8)
        if i % 2:
            label[1:3, 5:8, 5:7] = 1
            adc[label > 0] = 600
        zadc = np.where(brain, (adc - 1400) / 200, 0).astype(np.float32)
        cid = f"case{i:02d}"
        write_image(adc, geo, folder / "imagesTr" / f"{cid}_0000.mha")
        write_image(zadc, geo, folder / "imagesTr" / f"{cid}_0001.mha")
        write_image(label, geo, folder / "labelsTr" / f"{cid}.mha")
    save_dataset_json(DatasetJson(name="TINY", num_training=num_cases), folder)
    return folder


TINY_FOLD_CASES = {0: ["case00", "case01", "case02"], 1: ["case03", "case04", "case05"]}


def tiny_model_with_validation_probabilities(roots: dict) -> tuple[Path, Path]:
    """(raw dataset, model folder) under ``roots`` (the ``hiennu_roots`` fixture): six varied cases, whose lesion
    cases (1, 3, 5) each get one brighter lesion voxel (ADC 1100) so that the ADC cap lies above the rule's false
    specks (ADC < 1000), and a two-fold model whose validation kept each case's probabilities (``CASE.npz``), folds
    as :data:`TINY_FOLD_CASES`."""
    from hiennu.io.image import read_image
    from hiennu.training.native_validation import predict_and_score_validation

    raw = make_varied_raw_dataset(roots["hiennu_raw"], num_cases=6, name="Dataset001_Tiny")
    for i in (1, 3, 5):
        path = raw / "imagesTr" / f"case{i:02d}_0000.mha"
        adc, geometry = read_image(path)
        adc[1, 5, 5] = 1100.0
        write_image(adc, geometry, path)
    model_dir = make_model_dir(roots["hiennu_results"], folds=tuple(TINY_FOLD_CASES))
    for fold, cases in TINY_FOLD_CASES.items():
        predict_and_score_validation(model_dir, fold, cases, "Dataset001_Tiny", "cpu", save_probabilities=True)
    return raw, model_dir


# ---------------------------------------------------------------- post-processing choice and a stubbed network

IDENTITY_GEOMETRY = Geometry((12, 12, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
def raw_and_model_with_false_positives(tmp_path):
    """A raw dataset of 4 cases and a model folder whose 2 folds' validation masks hold a true lesion
    (on the rule) plus a 3-voxel false positive off the rule."""
    raw = tmp_path / "raw"
    save_dataset_json(DatasetJson("Tiny", num_training=4), raw / "dataset.json")
    model = tmp_path / "results" / "Dataset001_Tiny" / "TrainerX__hiennuPlans__3d_fullres"
    shape = IDENTITY_GEOMETRY.size_zyx
    for i in range(4):
        case = f"case_{i}"
        label = np.zeros(shape, np.uint8)
        label[2:4, 3:7, 3:7] = 1
        adc = np.full(shape, 1000.0, np.float32)
        zadc = np.zeros(shape, np.float32)
        zadc[label == 1] = -4.0
        pred = label.copy()
        pred[5, 10, 9:12] = 1      # false positive, 3 voxels, ZADC 0 there
        write_image(adc, IDENTITY_GEOMETRY, raw / "imagesTr" / f"{case}_0000.mha")
        write_image(zadc, IDENTITY_GEOMETRY, raw / "imagesTr" / f"{case}_0001.mha")
        write_image(label, IDENTITY_GEOMETRY, raw / "labelsTr" / f"{case}.mha")
        write_image(pred, IDENTITY_GEOMETRY, model / f"fold_{i % 2}" / "validation" / f"{case}.mha")
    return raw, model


def network_mask() -> np.ndarray:
    """What the (stubbed) network predicts on GEOM: one blob on the rule region, one off it, one stray voxel."""
    mask = np.zeros(GEOM.size_zyx, np.uint8)
    mask[2:4, 9:12, 5:9] = 1       # touches the rule region (y >= 8)
    mask[2:4, 2:5, 5:9] = 1        # off the rule
    mask[6, 15, 18] = 1            # a stray voxel on the rule
    return mask


def stub_network(predictor: Predictor) -> Predictor:
    predictor.predict_prepared = lambda prepared, geometries, need: [
        (network_mask(), network_mask().astype(np.float32)) for _ in prepared]
    return predictor


def expect_workers_end_with(main: subprocess.Popen, workers: list[int], within: float = 15.0) -> None:
    """SIGKILL ``main`` (which leaves it no chance to stop anything) and assert that every process of ``workers``
    ends within ``within`` seconds, as their watch on it makes them; whatever still runs is killed afterwards."""
    import os
    import signal
    import time

    from hiennu.parallel import process_alive
    try:
        assert workers and all(process_alive(w) for w in workers), workers
        main.send_signal(signal.SIGKILL)
        main.wait()
        deadline = time.time() + within
        while any(process_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(process_alive(w) for w in workers)
    finally:
        main.kill()
        for w in workers:
            if process_alive(w):
                os.kill(w, signal.SIGKILL)

