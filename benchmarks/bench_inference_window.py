"""Prediction on a CPU with nnU-Net's patch windows against one window over the case, and torch's instance norm
against hiennu's group-norm route, side by side in one run.

Three arms of ``Predictor.predict_folder`` on the same cases, same folds, the model's mirroring, interleaved (the arm
order rotates every round):

- ``patch``: the plans' ``inference_window`` set to ``patch`` (nnU-Net's windows of the training patch, half overlap)
  and torch's instance norm (:func:`hiennu.networks.unet._group_norm_applies` answering False);
- ``case``: ``inference_window`` ``case`` (:func:`hiennu.windows.case_window`), torch's instance norm;
- ``hiennu``: ``case`` and the group-norm route, the package as it ships.

Reported: seconds a case per arm and round, the ratios of the medians (``patch`` / ``case``, ``case`` / ``hiennu``,
``patch`` / ``hiennu``), each case's windows under both policies, and the mask voxels that differ between the arms
(``case`` against ``hiennu`` should be none: the norms agree within 1e-6). glibc's malloc thresholds are fixed first,
as ``hiennu_predict`` does.

    python benchmarks/bench_inference_window.py -m $hiennu_results/Dataset001_BONBID/TrainerDiceFocal__hiennuPlans__3d_fullres \\
        -i $hiennu_raw/Dataset001_BONBID/imagesTr --cases 13 --rounds 1 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import SimpleITK as sitk
import torch

import hiennu.networks.unet as unet
from hiennu.inference.layouts import discover_input_cases
from hiennu.inference.predictor import Predictor
from hiennu.io.image import read_image
from hiennu.memory import keep_freed_memory
from hiennu.windows import window_count

from bench_inference_convolutions import cpu_header

ARMS = ("patch", "case", "hiennu")


def torch_instance_norm():
    """hiennu's instance norms with their group-norm route switched off: torch's instance norm everywhere."""
    return mock.patch.object(unet, "_group_norm_applies", lambda norm, x: False)


@contextlib.contextmanager
def arm(predictor: Predictor, name: str):
    """The predictor as arm ``name`` predicts (its configuration and the norm route restored after)."""
    saved = predictor.configuration
    predictor.configuration = dataclasses.replace(saved, inference_window="patch" if name == "patch" else "case")
    try:
        with torch_instance_norm() if name in ("patch", "case") else contextlib.nullcontext():
            yield
    finally:
        predictor.configuration = saved


def case_windows(predictor: Predictor, images: Path, case_ids: list[str]) -> list[dict]:
    """Each case's preprocessed shape, its patch windows and the case window with its voxels in patches."""
    config = predictor.configuration
    cases = {c.case_id: c for c in discover_input_cases(images, predictor.channel_names)}
    rows = []
    for case_id in case_ids:
        read = [read_image(path) for path in cases[case_id].files]
        shape = tuple(predictor.prepare([array for array, _ in read], read[0][1]).data.shape[1:])
        patch = dataclasses.replace(config, inference_window="patch").inference_window_zyx(shape)
        window = dataclasses.replace(config, inference_window="case").inference_window_zyx(shape)
        rows.append({"case": case_id, "shape_zyx": list(shape), "patch_windows": window_count(shape, patch),
                     "case_window_zyx": list(window), "case_window_patches": math.prod(window) / math.prod(patch)})
    return rows


def predict_arms(predictor: Predictor, images: Path, case_ids: list[str], rounds: int) -> dict:
    seconds: dict[str, list[float]] = {a: [] for a in ARMS}
    masks: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in ARMS[r % 3:] + ARMS[:r % 3]:
                out = Path(tmp) / f"{name}_{r}"
                start = time.perf_counter()
                with arm(predictor, name):
                    predictor.predict_folder(images, out, case_ids=case_ids)
                seconds[name].append((time.perf_counter() - start) / len(case_ids))
                masks.setdefault(name, out)
        differing = {}
        for a, b in (("patch", "case"), ("case", "hiennu"), ("patch", "hiennu")):
            voxels = cases = 0
            for case in case_ids:
                x = sitk.GetArrayFromImage(sitk.ReadImage(str(next(masks[a].glob(f"{case}.*")))))
                y = sitk.GetArrayFromImage(sitk.ReadImage(str(next(masks[b].glob(f"{case}.*")))))
                n = int(np.count_nonzero(x != y))
                voxels, cases = voxels + n, cases + bool(n)
            differing[f"{a}_vs_{b}"] = {"voxels": voxels, "cases": cases}
    median = {a: statistics.median(v) for a, v in seconds.items()}
    return {"rounds": rounds, "s_per_case": seconds, "median_s_per_case": median,
            "ratio_patch_over_case": median["patch"] / median["case"],
            "ratio_case_over_hiennu": median["case"] / median["hiennu"],
            "ratio_patch_over_hiennu": median["patch"] / median["hiennu"], "mask_differences": differing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", type=Path, required=True, help="a trained model folder (or zip) of a patch "
                                                                       "configuration")
    parser.add_argument("-i", "--images", type=Path, required=True, help="a folder of cases to predict")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds (default: the model's own)")
    parser.add_argument("--cases", type=int, default=None, help="the first N cases by name (default: all)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each arm once a round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", type=Path, help="write everything measured here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as hiennu_predict does first
    predictor = Predictor.from_path(args.model, args.folds, device="cpu")
    if not predictor.configuration.is_patch_based:
        parser.error(f"{args.model}: a whole-volume configuration has no sliding window")
    found = sorted(c.case_id for c in discover_input_cases(args.images, predictor.channel_names))
    chosen = found[:args.cases] if args.cases else found
    result = {"header": cpu_header(args.threads) | {"model": str(args.model), "cases": len(chosen),
                                                    "folds": predictor.folds}}
    print(json.dumps(result["header"]))
    result["windows"] = rows = case_windows(predictor, args.images, chosen)
    patch_total = sum(r["patch_windows"] for r in rows)
    case_total = sum(min(r["patch_windows"], r["case_window_patches"]) for r in rows)
    print(f"windows: {patch_total} patch windows, the case windows' voxels are {case_total:.1f} patches "
          f"({sum(r['patch_windows'] > 1 for r in rows)} of {len(rows)} cases overhang the patch)")
    result["prediction"] = p = predict_arms(predictor, args.images, chosen, args.rounds)
    m = p["median_s_per_case"]
    print(f"predict_folder, {len(chosen)} cases x {p['rounds']} round(s): patch {m['patch']:.2f} s a case, case "
          f"{m['case']:.2f} s, hiennu (case + group norm) {m['hiennu']:.2f} s; ratios patch/case "
          f"{p['ratio_patch_over_case']:.2f}, case/hiennu {p['ratio_case_over_hiennu']:.2f}, patch/hiennu "
          f"{p['ratio_patch_over_hiennu']:.2f}")
    for pair, d in p["mask_differences"].items():
        print(f"mask voxels differing, {pair.replace('_vs_', ' vs ')}: {d['voxels']} in {d['cases']} case(s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
