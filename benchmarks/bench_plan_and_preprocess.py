"""Time ``hiennu_plan_and_preprocess`` against nnU-Net v2's ``nnUNetv2_plan_and_preprocess`` on the same data.

Both tools get the same converted raw dataset (hiennu's converter writes nnU-Net's layout and
dataset.json, so nnU-Net reads a copy of the same folder), the same configuration name
(``-c 3d_fullres``) and the same number of worker processes, and both check the dataset's
integrity first (nnU-Net with ``--verify_dataset_integrity``). Each command runs as a fresh
process, so start-up (imports) is part of its wall time. Runs alternate between the two tools.

    python benchmarks/bench_plan_and_preprocess.py [--src ../shared/data/BONBID2023_Train_dev] [-np 2] [--repeats 1]

nnU-Net v2 is an optional extra (``pip install nnunetv2``; check that it leaves your torch build alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SRC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "BONBID2023_Train_dev"
DATASET_ID = 901


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="official BONBID layout (1ADC_ss/, 2Z_ADC/, 3LABEL/)")
    ap.add_argument("-np", "--num-processes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    args = ap.parse_args()
    if shutil.which("nnUNetv2_plan_and_preprocess") is None:
        raise SystemExit("nnUNetv2_plan_and_preprocess not found: pip install nnunetv2 (optional extra)")

    from hiennu.datasets.bonbid import convert_bonbid

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_pp_"))
    try:
        roots = {k: work / k for k in ("hiennu_raw", "hiennu_preprocessed", "hiennu_results",
                                       "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        for p in roots.values():
            p.mkdir(parents=True, exist_ok=True)
        raw = convert_bonbid(args.src, DATASET_ID, "BONBID", raw_root=roots["hiennu_raw"], overwrite=True)
        nn_raw = roots["nnUNet_raw"] / raw.name
        if not nn_raw.exists():
            shutil.copytree(raw, nn_raw)
        env = {**os.environ, **{k: str(v) for k, v in roots.items()}}
        n_cases = len(list((raw / "labelsTr").glob("*.mha")))
        cmds = {
            "hiennu": ["hiennu_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres",
                       "-np", str(args.num_processes), "-q"],
            # -npfp too: nnU-Net's fingerprint and integrity check otherwise start 8 processes whatever -np says
            "nnU-Net v2": ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres",
                           "-np", str(args.num_processes), "-npfp", str(args.num_processes),
                           "--verify_dataset_integrity"],
        }
        outputs = {"hiennu": roots["hiennu_preprocessed"] / raw.name,
                   "nnU-Net v2": roots["nnUNet_preprocessed"] / raw.name}
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for r in range(args.repeats):
            for name, cmd in cmds.items():
                shutil.rmtree(outputs[name], ignore_errors=True)
                times[name].append(_timed(cmd, env))
                print(f"run {r + 1}: {name:<11} {times[name][-1]:7.1f} s", flush=True)
        print(f"\n{n_cases} cases from {args.src.resolve()}, -c 3d_fullres, -np {args.num_processes}, "
              f"{os.cpu_count()} CPU(s), load average before last run: {os.getloadavg()[0]:.1f}")
        for name in cmds:
            size = _folder_bytes(outputs[name]) / 1e6
            print(f"{name:<11} median wall {statistics.median(times[name]):7.1f} s  (runs: "
                  f"{', '.join(f'{t:.1f}' for t in times[name])}), output {size:.0f} MB")
        ratio = statistics.median(times["nnU-Net v2"]) / statistics.median(times["hiennu"])
        print(f"hiennu is {ratio:.2f}x the speed of nnU-Net v2 (nnU-Net wall / hiennu wall)")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
