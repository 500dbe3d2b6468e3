"""Time one case end to end through the predictor, side by side with the same steps in MONAI,
and measure linear vs nearest resampling of probability maps back to the native grid.

Part 1 (timing): read ADC + ZADC, preprocess with the plans' steps, predict with the paper's
U-Net (fresh weights; time does not depend on their values), resample the probability map back
to the native grid, threshold, write the mask. hiennu: ``Predictor.predict_folder`` on a folder
holding the case (so the reader/writer threads are included), plus a per-stage breakdown. Peer:
the same steps run one after the other with MONAI's ``Resize`` and ``NormalizeIntensity`` (the
paper's code used MONAI) around the same network, reading and writing with SimpleITK (MONAI's ITK
reader needs the ``itk`` package). MONAI is optional.

Part 2 (``--interpolation-study``): for every real dev case, a label-derived soft map (the native
label resampled trilinearly to the grid, i.e. what a perfect network's probabilities would look
like) is resampled back to the native grid with ``linear`` and with ``nearest`` interpolation and
thresholded at 0.5; Dice against the native label is reported per grid.

    python benchmarks/bench_predict.py                       # timing, grid 192x192x32, 3 cases
    python benchmarks/bench_predict.py --interpolation-study
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hiennu.device import autocast
from hiennu.geometry.resampling import resample_image_to_grid, resample_probabilities_to_native
from hiennu.inference.layouts import discover_input_cases, read_case
from hiennu.inference.predictor import Predictor
from hiennu.io.checkpoint import BEST
from hiennu.io.dataset_json import DatasetJson, save_dataset_json
from hiennu.io.image import read_image, write_image
from hiennu.networks.unet import build_network
from hiennu.plans import ChannelNormalization, Configuration, NetworkPlan, Plans, save_plans
from hiennu.preprocessing.preprocessor import preprocess_case

DATA = Path(os.environ.get("BONBID_SRC") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data" /
            "BONBID2023_Train_dev")


def make_model(root: Path, size_xyz: list[int]) -> Path:
    config = Configuration("3d_fullres", list(size_xyz), "forced",
                           [ChannelNormalization("ADC", "zscore_image"), ChannelNormalization("ZADC", "zscore_image")],
                           network=NetworkPlan())
    model_dir = root / "Dataset001_Bench" / "TrainerBench__hiennuPlans__3d_fullres"
    save_plans(Plans("Dataset001_Bench", ["ADC", "ZADC"], {"3d_fullres": config}), model_dir / "plans.json")
    save_dataset_json(DatasetJson("Bench"), model_dir / "dataset.json")
    (model_dir / "fold_0").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"network_weights": build_network(config.network).state_dict()}, model_dir / "fold_0" / BEST)
    return model_dir


def time_hiennu(predictor: Predictor, case_dir: Path, out_root: Path, repeats: int) -> float:
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        report = predictor.predict_folder(case_dir, out_root / f"hiennu_{r}")
        times.append(time.perf_counter() - t0)
        assert report.ok
    return float(np.median(times))


def stage_times(predictor: Predictor, case_dir: Path, out: Path) -> dict[str, float]:
    (case,) = discover_input_cases(case_dir)
    t = {}
    t0 = time.perf_counter()
    images, geometry = read_case(case)
    t["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data, _, _ = preprocess_case(images, predictor.configuration, spacing_zyx=geometry.spacing_zyx)
    t["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob = predictor.ensemble.predict_probabilities(torch.from_numpy(data[None]))
    if prob.is_cuda:
        torch.cuda.synchronize()
    t["predict"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    native = resample_probabilities_to_native(prob[0], geometry.size_zyx, predictor.configuration.prediction_interpolation)
    mask = (native >= 0.5).to(torch.uint8).cpu().numpy()
    t["resample back + threshold"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_image(mask, geometry, out / "stage.mha")
    t["write"] = time.perf_counter() - t0
    return t


def time_monai(network: torch.nn.Module, case_dir: Path, out_root: Path, size_xyz: list[int], repeats: int) -> float | None:
    """The same steps, sequentially, with MONAI's Resize / NormalizeIntensity (SimpleITK reads and writes:
    MONAI's own ITK reader needs the ``itk`` package, which is not installed here)."""
    try:
        from monai.transforms import NormalizeIntensity, Resize
    except ImportError:
        return None
    import SimpleITK as sitk
    (case,) = discover_input_cases(case_dir)
    to_grid = Resize(spatial_size=tuple(reversed(size_xyz)), mode="trilinear")  # arrays (C, z, y, x)
    norm = NormalizeIntensity()
    network.eval()
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        images = [sitk.ReadImage(str(f)) for f in case.files]
        arrays = [torch.from_numpy(sitk.GetArrayFromImage(i).astype(np.float32))[None] for i in images]
        native_zyx = tuple(arrays[0].shape[1:])
        x = torch.cat([torch.as_tensor(norm(to_grid(a))) for a in arrays])
        device = next(network.parameters()).device
        with torch.inference_mode(), autocast(device):  # bf16 on CUDA, as hiennu's predictor runs it
            prob = torch.sigmoid(network(x[None].to(device))[0].float()).cpu()
        back = torch.as_tensor(Resize(spatial_size=native_zyx, mode="trilinear")(prob))
        out = sitk.GetImageFromArray((back[0] >= 0.5).to(torch.uint8).numpy())
        out.CopyInformation(images[0])
        (out_root / f"monai_{r}").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(out, str(out_root / f"monai_{r}" / f"{case.case_id}.mha"), True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def timing(args) -> None:
    cases = sorted((DATA / "1ADC_ss").glob("*.mha"))[: args.cases]
    if not cases:
        sys.exit(f"real dev cases not found at {DATA}")
    print(f"device {args.device}; machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}; grid {args.grid} (x, y, z); paper U-Net 32-64-128-256, 1 fold, "
          f"TTA {'on (8 mirrorings)' if args.tta else 'off'}; median of {args.repeats} runs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        predictor = Predictor.from_model_dir(make_model(tmp / "results", args.grid), device=args.device,
                                         use_mirroring=args.tta)
        print(f"{'case':24s} {'native (x,y,z)':>16s} {'hiennu s':>9s} {'monai s':>8s} {'ratio':>6s}   hiennu stages (s)")
        ratios = []
        for adc in cases:
            case_id = adc.name.replace("-ADC_ss.mha", "")
            case_dir = tmp / "in" / case_id
            case_dir.mkdir(parents=True)
            (case_dir / adc.name).symlink_to(adc)
            zadc = DATA / "2Z_ADC" / f"Zmap_{case_id}-ADC_smooth2mm_clipped10.mha"
            (case_dir / zadc.name).symlink_to(zadc)
            ours = time_hiennu(predictor, case_dir, tmp / "out" / case_id, args.repeats)
            stages = stage_times(predictor, case_dir, tmp)
            peer = time_monai(predictor.ensemble.networks[0], case_dir, tmp / "out" / case_id, args.grid, args.repeats)
            size = read_image(adc)[1].size_xyz
            ratio = f"{peer / ours:5.2f}x" if peer else "  n/a"
            if peer:
                ratios.append(peer / ours)
            print(f"{case_id:24s} {str(size):>16s} {ours:9.2f} {peer if peer else float('nan'):8.2f} {ratio:>6s}   "
                  + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
        if ratios:
            print(f"MONAI time / hiennu time, mean over cases: {np.mean(ratios):.2f}x (above 1: hiennu faster)")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    if not a.any() and not b.any():
        return 1.0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def interpolation_study(args) -> None:
    labels = sorted((DATA / "3LABEL").glob("*.mha"))
    if not labels:
        sys.exit(f"real dev cases not found at {DATA}")
    grids = [(144, 144, 32), (192, 192, 32), (160, 160, 64)]
    print(f"{len(labels)} BONBID dev cases: native label -> grid (trilinear soft map) -> native "
          f"(linear | nearest) -> threshold 0.5; Dice vs native label")
    print(f"{'grid (x,y,z)':>14s} {'linear mean':>12s} {'linear worst':>13s} {'nearest mean':>13s} {'nearest worst':>14s}")
    loaded = [read_image(p)[0] for p in labels]
    for grid in grids:
        size_zyx = tuple(reversed(grid))
        scores = {"linear": [], "nearest": []}
        for label in loaded:
            soft = torch.from_numpy(resample_image_to_grid((label > 0).astype(np.float32), size_zyx))
            for mode in scores:
                back = resample_probabilities_to_native(soft, label.shape, mode).numpy()
                scores[mode].append(dice(back >= 0.5, label))
        print(f"{str(grid):>14s} {np.mean(scores['linear']):12.4f} {np.min(scores['linear']):13.4f} "
              f"{np.mean(scores['nearest']):13.4f} {np.min(scores['nearest']):14.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=3, help="how many real cases to time")
    p.add_argument("--grid", type=int, nargs=3, default=[192, 192, 32], help="target grid (x, y, z)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tta", action="store_true", help="mirroring TTA (8 passes) in hiennu's timing")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU figure)")
    p.add_argument("--interpolation-study", action="store_true")
    p.add_argument("--data", type=Path, default=None,
                   help="the BONBID dev cases (1ADC_ss/, 2Z_ADC/, 3LABEL/); default $BONBID_SRC, else "
                        "../shared/data/BONBID2023_Train_dev beside the checkout")
    args = p.parse_args()
    if args.data is not None:
        global DATA
        DATA = args.data
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.interpolation_study:
        interpolation_study(args)
    else:
        timing(args)


if __name__ == "__main__":
    main()
