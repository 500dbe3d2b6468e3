"""The patch configuration (``3d_fullres``) on real cases: step time, prediction time, and how
probabilities should go back to the native grid.

Three parts, each optional:

- ``--step``: one training step of the plans' network and patch (batch from the plans, the loss of
  ``--loss``, AdamW, gradient clipping), timed over ``--steps`` steps after 2 warm-up steps, on
  random data (the time does not depend on the values). Prints median and quartiles, fp32.
- ``--predict MODEL_DIR``: ``Predictor.predict_folder`` end to end (read, crop, resample, normalise,
  sliding window with mirroring TTA, un-crop, resample back, threshold, write) over ``--cases`` raw
  cases copied to a temporary folder; per-case wall time = total / cases (the reader and writer
  threads overlap cases, as in real use). The model's trained weights are used.
- ``--interpolation MODEL_DIR --fold K``: for each validation case of fold K, the fold's probability
  map (no TTA) is taken back to the native grid with ``linear`` and with ``nearest`` interpolation
  and thresholded at 0.5; mean Dice against the native label is printed per mode. Also the label
  round trip (perfect probabilities) for every case, both modes.

    python benchmarks/bench_patch_config.py -d BONBID --step --steps 10
    python benchmarks/bench_patch_config.py -d BONBID --predict $hiennu_results/Dataset001_BONBID/TrainerTverskyHDT__hiennuPlans__3d_fullres --cases 8
    python benchmarks/bench_patch_config.py -d BONBID --interpolation MODEL_DIR --fold 0

Uses the environment's hiennu roots (``hiennu_raw``, ``hiennu_preprocessed``) and the dataset's plans.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hiennu import losses
from hiennu.geometry.cropping import crop_and_resample, crop_and_resample_label, restore_to_native
from hiennu.inference.predictor import Predictor
from hiennu.inference.sliding_window import sliding_window_predict
from hiennu.io.atomic import read_json
from hiennu.io.image import read_image
from hiennu.masks import dice
from hiennu.networks.unet import build_network
from hiennu.paths import parse_model_dir_name, preprocessed_root, raw_root, resolve_dataset
from hiennu.plans import load_plans
from hiennu.preprocessing.preprocessor import preprocess_case


def _machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def time_steps(dataset: str, loss_name: str, steps: int) -> None:
    plans = load_plans(preprocessed_root() / dataset / "plans.json")
    config = plans.configuration()
    net = build_network(config.network)
    loss = getattr(losses, loss_name)()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    batch = config.training.batch_size
    x = torch.randn(batch, config.network.in_channels, *config.patch_size_zyx)
    y = (torch.rand(batch, 1, *config.patch_size_zyx) > 0.995).float()
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        value = loss(net(x), y)
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    params = sum(p.numel() for p in net.parameters())
    print(f"training step, {config.name} planned for {config.planned_for}: patch {config.patch_size_zyx} (z y x), "
          f"batch {batch}, {params / 1e6:.2f} M parameters, loss of {loss_name}: median {statistics.median(times):.2f} s "
          f"(quartiles {q[0]:.2f}-{q[2]:.2f} s, {len(times)} steps) on {_machine()}")


def time_prediction(dataset: str, model_dir: Path, cases: int) -> None:
    raw = raw_root() / dataset / "imagesTr"
    ids = sorted({p.name.rsplit("_", 1)[0] for p in raw.glob("*_0000.*")})[:cases]
    predictor = Predictor.from_model_dir(model_dir, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for case in ids:
            for p in raw.glob(f"{case}_000*"):
                shutil.copy(p, src / p.name)
        start = time.perf_counter()
        report = predictor.predict_folder(src, Path(tmp) / "out")
        wall = time.perf_counter() - start
    print(f"prediction end to end with mirroring TTA over axes {predictor.ensemble.flips}, folds {predictor.folds}: "
          f"{len(report.predicted)} cases in {wall:.1f} s = {wall / max(1, len(report.predicted)):.2f} s per case "
          f"on {_machine()}")


def interpolation_study(dataset: str, model_dir: Path, fold: int) -> None:
    raw = raw_root() / dataset
    plans = load_plans(model_dir / f"fold_{fold}" / "plans.json") if (model_dir / f"fold_{fold}" / "plans.json").is_file() \
        else load_plans(model_dir)
    config = plans.configuration(parse_model_dir_name(model_dir.name).configuration)
    predictor = Predictor.from_model_dir(model_dir, folds=[fold], device="cpu", use_mirroring=False)
    debug = read_json(model_dir / f"fold_{fold}" / "debug.json")
    model_scores: dict[str, list[float]] = {"linear": [], "nearest": []}
    for case in debug["val_cases"]:
        adc, geometry = read_image(raw / "imagesTr" / f"{case}_0000.mha")
        zadc, _ = read_image(raw / "imagesTr" / f"{case}_0001.mha")
        label, _ = read_image(raw / "labelsTr" / f"{case}.mha", dtype=np.uint8)
        data, _, crop = preprocess_case([adc, zadc], config, spacing_zyx=geometry.spacing_zyx)
        prob = sliding_window_predict(predictor.ensemble.predict_probabilities, torch.from_numpy(data),
                                      config.patch_size_zyx)
        for mode in model_scores:
            mask = restore_to_native(prob, crop, mode) >= 0.5
            model_scores[mode].append(dice(label, mask.numpy()))
    print(f"trained model {model_dir.name} fold {fold}, {len(debug['val_cases'])} validation cases, probabilities "
          f"back to native: " + ", ".join(f"{m} mean Dice {np.mean(v):.4f}" for m, v in model_scores.items()))
    trip: dict[str, list[float]] = {"linear": [], "nearest": []}
    for label_file in sorted((raw / "labelsTr").glob("*.mha")):
        case = label_file.name[:-4]
        adc, geometry = read_image(raw / "imagesTr" / f"{case}_0000.mha")
        label, _ = read_image(label_file, dtype=np.uint8)
        _, record = crop_and_resample(adc[None], geometry.spacing_zyx, config.target_spacing_zyx)
        soft = crop_and_resample_label(label, record).astype(np.float32)
        for mode in trip:
            trip[mode].append(dice(label, restore_to_native(soft, record, mode) >= 0.5))
    print(f"label round trip (perfect probabilities), {len(trip['linear'])} cases: " +
          ", ".join(f"{m} mean Dice {np.mean(v):.4f} (worst {np.min(v):.4f})" for m, v in trip.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--step", action="store_true", help="time training steps of the plans' network and patch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--loss", default="TverskyHDTLoss", help="loss class of hiennu.losses the step uses")
    p.add_argument("--predict", type=Path, default=None, help="model folder to time prediction with")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--interpolation", type=Path, default=None, help="model folder for the linear/nearest study")
    p.add_argument("--fold", type=int, default=0)
    args = p.parse_args()
    dataset = resolve_dataset(args.dataset)
    if args.step:
        time_steps(dataset, args.loss, args.steps)
    if args.predict:
        time_prediction(dataset, args.predict, args.cases)
    if args.interpolation:
        interpolation_study(dataset, args.interpolation, args.fold)


if __name__ == "__main__":
    main()
