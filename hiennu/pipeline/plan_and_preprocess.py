"""The whole step behind ``hiennu_plan_and_preprocess``: check -> fingerprint -> plans -> preprocessed cases.

Writes into ``$hiennu_preprocessed/DatasetNNN_Name/``: ``dataset.json`` (copied), ``dataset_fingerprint.json``,
``plans.json`` (``NAME.json`` with ``-p NAME``), ``splits_final.json`` (only if absent) and one folder per configuration. Nothing is
written when the raw dataset fails its integrity check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hiennu.datasets.integrity import verify_raw_dataset
from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json, write_json
from hiennu.io.cases import CaseFiles, discover_cases
from hiennu.io.dataset_json import load_dataset_json
from hiennu.log import get_logger
from hiennu.parallel import start_workers_early
from hiennu.paths import plans_file_name, preprocessed_data_name, preprocessed_root, raw_dataset_dir
from hiennu.planning.fingerprint import FINGERPRINT_FILE, compute_fingerprint, save_fingerprint
from hiennu.planning.planner import DEFAULT_GPU_MEMORY_GB, plan_experiment, record_roundtrip
from hiennu.planning.roundtrip import measure_crop_roundtrip, measure_roundtrip
from hiennu.planning.splits import SPLITS_FILE, write_splits_if_absent
from hiennu.plans import (DEFAULT_CONFIGURATION, LOSSLESS_CONFIGURATION, PAPER_CONFIGURATION, PLANS_NAME,
                          Plans, load_plans, save_plans)
from hiennu.preprocessing.preprocessor import preprocess_dataset

log = get_logger(__name__)


@dataclass
class PlanAndPreprocessOptions:
    """Options of one run (the command-line flags).

    configurations: which configurations to preprocess (None: every one in the plans).
    target_size_xyz: force this grid (x, y, z) on every configuration. grid_policy: ``memory`` or
    ``paper`` for ``3d_fullres``. gpu_memory_gb: budget of the memory policy (GiB).
    check_only: run the integrity check only. preprocess: False stops after writing the plans.
    keep_plans: preprocess with the existing ``plans.json`` (e.g. after editing it) instead of re-planning.
    plan_for: size ``3d_fullres``'s network and patch for ``cpu`` or ``gpu`` (None: ``gpu`` when CUDA is there).
    plans_name: the plans identifier (``-p``): written as ``NAME.json`` (the default ``hiennuPlans``
    as ``plans.json``), its cases into ``NAME_CONFIG/`` (``CONFIG/`` for the default), so edited plans
    and their data live beside the original's.
    """

    configurations: Sequence[str] | None = None
    num_processes: int = 2
    target_size_xyz: Sequence[int] | None = None
    grid_policy: str = "memory"
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB
    check_only: bool = False
    preprocess: bool = True
    keep_plans: bool = False
    plan_for: str | None = None
    plans_name: str = PLANS_NAME


def training_cases(raw_dir: Path) -> list[CaseFiles]:
    dj = load_dataset_json(raw_dir)
    return discover_cases(raw_dir / "imagesTr", dj.num_channels, raw_dir / "labelsTr", dj.file_ending)


def make_plans(raw_dir: Path, out_dir: Path, cases: list[CaseFiles], opts: PlanAndPreprocessOptions) -> Plans:
    """Fingerprint, plan, measure round-trip ceilings; writes fingerprint and plans."""
    dj = load_dataset_json(raw_dir)
    fp = compute_fingerprint(cases, raw_dir.name, dj.channel_names, opts.num_processes)
    save_fingerprint(fp, out_dir / FINGERPRINT_FILE)
    plans = plan_experiment(fp, opts.grid_policy, opts.gpu_memory_gb, opts.target_size_xyz, opts.plan_for)
    plans.plans_name = opts.plans_name
    labels = {c.case_id: c.label_file for c in cases if c.label_file is not None}
    with_adc = {c.case_id: (c.image_files[0], c.label_file) for c in cases if c.label_file is not None}
    for cfg in plans.configurations.values():
        if cfg.is_patch_based:
            trip = measure_crop_roundtrip(with_adc, cfg.target_spacing_zyx, cfg.prediction_interpolation,
                                          opts.num_processes)
        else:
            workers = opts.num_processes if cfg.label_interpolation == "sdf" else 1
            trip = measure_roundtrip(labels, cfg.target_size_zyx, cfg.label_interpolation, workers)
        record_roundtrip(cfg, trip)
    save_plans(plans, out_dir / plans_file_name(opts.plans_name))
    write_splits_if_absent(out_dir / SPLITS_FILE, {c.case_id: c.lesion_fraction for c in fp.cases})
    return plans


def plan_and_preprocess(dataset: str | int, opts: PlanAndPreprocessOptions | None = None) -> Path:
    """Run the step for ``dataset`` (name, folder name or number); returns the preprocessed folder."""
    opts = opts or PlanAndPreprocessOptions()
    if opts.num_processes < 1:
        raise HiennuError(f"-np must be at least 1, got {opts.num_processes}")
    planned = (DEFAULT_CONFIGURATION, LOSSLESS_CONFIGURATION, PAPER_CONFIGURATION)
    unknown = [c for c in (opts.configurations or []) if c not in planned and not opts.keep_plans]
    if unknown:
        raise HiennuError(f"unknown configuration(s) {', '.join(unknown)}; the planner writes {', '.join(planned)}")
    plans_file_name(opts.plans_name)  # refuse a bad -p before any work
    raw_dir = raw_dataset_dir(dataset)
    if not opts.check_only:
        start_workers_early(opts.num_processes)
    verify_raw_dataset(raw_dir)
    log.info("%s: integrity check passed", raw_dir)
    if opts.check_only:
        return raw_dir
    out_dir = preprocessed_root() / raw_dir.name
    cases = training_cases(raw_dir)
    if opts.keep_plans:
        plans = load_plans(out_dir / plans_file_name(opts.plans_name))
        log.info("using the existing %s", out_dir / plans_file_name(opts.plans_name))
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(read_json(raw_dir / "dataset.json"), out_dir / "dataset.json")
        plans = make_plans(raw_dir, out_dir, cases, opts)
    if not opts.preprocess:
        return out_dir
    names = list(opts.configurations) if opts.configurations else list(plans.configurations)
    for name in names:
        preprocess_dataset(cases, plans.configuration(name), out_dir / preprocessed_data_name(opts.plans_name, name),
                           opts.num_processes)
    return out_dir
