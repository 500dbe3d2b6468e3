"""The default path (``hiennu_train_default_model``) on another split of the same cases, in roots of its own.

A 5-fold CV score is one draw of the split as well as of the training: on the 37 BONBID dev cases the shipped
recipe's margin over the rule moved from +0.023 to +0.061 Dice over five split seeds (results.md, sessions 35-39),
and whether choosing among ``2d``, ``3d_fullres`` and their ensemble beats always shipping the ``3d_fullres`` is a
question about the whole path on a fresh split (results.md session 49, recipe 42). This script makes such a run a
command instead of a hand-made set-up:

1. ``WORKDIR/preprocessed_seed{S}/DatasetNNN_Name``: the dataset's preprocessed folder (plans, cases, fingerprint)
   hard-linked file by file from ``$hiennu_preprocessed`` (no copy of the cases; hiennu writes a file by writing a
   new one and renaming it over the old, which replaces the link instead of writing through it), with
   ``splits_final.json`` replaced by the split of seed S (:func:`hiennu.study.split_seeds.ensure_seed_splits`, the folds ``hiennu_train
   --split-seed S`` trains on);
2. ``hiennu_train_default_model -d DATASET`` run with ``hiennu_preprocessed`` and ``hiennu_results`` pointing at
   ``WORKDIR/preprocessed_seed{S}`` and ``WORKDIR/results_seed{S}``: it trains every fold, chooses by CV with the
   fully nested estimate, exports and installs into those roots (``default_model.json`` there, not the user's).

Run it again to go on after an interruption (the default path is resumable; an existing root is reused as it is).
The dataset must be planned and preprocessed first (``hiennu_plan_and_preprocess -d DATASET``, or one run of the
default path). Why a script: the package trains other split seeds fold by fold (``--split-seed``) but its choice
and default path read ``splits_final.json``; a second set of roots keeps the user's own untouched.

    python benchmarks/default_path_on_split.py -d BONBID --split-seed 6 -o /work/hw/split_runs   # about 1 h (bf16; 1.5 h with the 2d)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hiennu.errors import HiennuError
from hiennu.paths import (PREPROCESSED_ENV, RESULTS_ENV, plans_file_name, preprocessed_root, resolve_dataset,
                          splits_file_name)
from hiennu.study.split_seeds import ensure_seed_splits

SPLITS_FINAL = splits_file_name(None)


def split_roots(dataset: str, split_seed: int, workdir: Path) -> tuple[Path, Path, str]:
    """(preprocessed root, results root, dataset folder name) of ``split_seed`` under ``workdir``, the preprocessed
    one made when absent (hard links, ``splits_final.json`` = the seed's split; made in a temporary folder and
    renamed, so an interrupted set-up leaves nothing half made)."""
    if split_seed is None or int(split_seed) < 0:
        raise HiennuError(f"--split-seed must be a whole number >= 0, got {split_seed}")
    name = resolve_dataset(dataset)
    source = preprocessed_root() / name
    if not (source / plans_file_name()).is_file():
        raise HiennuError(f"{source}: no {plans_file_name()}; plan and preprocess {name} first (hiennu_plan_and_preprocess "
                          f"-d {dataset}), then run this again")
    pre, results = workdir / f"preprocessed_seed{split_seed}", workdir / f"results_seed{split_seed}"
    if not (pre / name / SPLITS_FINAL).is_file():
        staging = workdir / f".preprocessed_seed{split_seed}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging / name, copy_function=os.link)
        (staging / name / SPLITS_FINAL).unlink()  # a link to the user's split: never written through
        splits = ensure_seed_splits(name, split_seed, splits_dir=staging)
        os.replace(splits, staging / name / SPLITS_FINAL)
        if pre.exists():
            shutil.rmtree(pre)
        os.replace(staging, pre)
    return pre, results, name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--dataset", required=True, help="dataset name, folder name or number (planned already)")
    p.add_argument("--split-seed", type=int, required=True, help="seed of the split (splits_seed{S}.json)")
    p.add_argument("-o", "--workdir", type=Path, required=True,
                   help="where the split's preprocessed and results roots live (made when absent)")
    p.add_argument("extra", nargs=argparse.REMAINDER,
                   help="after --: options passed to hiennu_train_default_model (e.g. -- --device cpu)")
    args = p.parse_args(argv)
    try:
        pre, results, name = split_roots(args.dataset, args.split_seed, args.workdir)
    except HiennuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    env = dict(os.environ, **{PREPROCESSED_ENV: str(pre), RESULTS_ENV: str(results)})
    command = [sys.executable, "-m", "hiennu.cli.train_default_model", "-d", name, *extra]
    print(f"split seed {args.split_seed}: {PREPROCESSED_ENV}={pre} {RESULTS_ENV}={results} "
          f"hiennu_train_default_model -d {name} {' '.join(extra)}".rstrip(), flush=True)
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
