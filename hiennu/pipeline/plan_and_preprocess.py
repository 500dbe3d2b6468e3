"""The whole step behind ``hiennu_plan_and_preprocess``: check -> fingerprint -> plans -> preprocessed cases.

Writes into ``$hiennu_preprocessed/DatasetNNN_Name/``: ``dataset.json`` (copied), ``dataset_fingerprint.json``,
``plans.json`` (``NAME.json`` with ``-p NAME``), ``splits_final.json`` (only if absent) and one folder per configuration. Nothing is
written when the raw dataset fails its integrity check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hiennu.datasets.integrity import verify_raw_dataset
from hiennu.errors import HiennuError
from hiennu.io.atomic import read_json, write_json, write_text
from hiennu.io.cases import CaseFiles, discover_cases
from hiennu.io.channels import brain_channel
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.image import image_reader
from hiennu.log import get_logger
from hiennu.parallel import start_workers_early
from hiennu.paths import plans_file_name, preprocessed_data_name, preprocessed_root, raw_dataset_dir
from hiennu.planning.fingerprint import FINGERPRINT_FILE, DatasetFingerprint, compute_fingerprint, save_fingerprint
from hiennu.planning.planner import DEFAULT_GPU_MEMORY_GB, plan_2d_configuration, plan_experiment, record_roundtrip
from hiennu.planning.roundtrip import RoundTrip, measure_crop_roundtrip, measure_roundtrip
from hiennu.planning.spacing_refinement import force_spacing, heed_roundtrip, state_shortfall, validate_target_spacing
from hiennu.planning.splits import DEFAULT_FOLDS, SPLITS_FILE, write_splits_if_absent
from hiennu.plans import (DEFAULT_CONFIGURATION, LOSSLESS_CONFIGURATION, PAPER_CONFIGURATION, PLANS_NAME,
                          SLICE_CONFIGURATION, Configuration, Plans, configuration_problems, load_plans, save_plans)
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
    target_spacing_zyx: force ``3d_fullres``'s target spacing (mm, z y x; ``grid_policy`` ``forced``) instead of
    nnU-Net's rule and the round-trip refinement (:mod:`hiennu.planning.spacing_refinement`); its round trip is
    still measured and reported.
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
    target_spacing_zyx: Sequence[float] | None = None


def training_cases(raw_dir: Path) -> list[CaseFiles]:
    dj = load_dataset_json(raw_dir)
    return discover_cases(raw_dir / "imagesTr", dj.num_channels, raw_dir / "labelsTr", dj.file_ending)


def make_plans(raw_dir: Path, out_dir: Path, cases: list[CaseFiles], opts: PlanAndPreprocessOptions) -> Plans:
    """Fingerprint, plan, measure round-trip ceilings; writes fingerprint and plans.

    ``3d_fullres`` heeds its round trip: below the thresholds its spacing is refined within the device's
    budget, or its notes say which cases lose what (:func:`~hiennu.planning.spacing_refinement.heed_roundtrip`).
    """
    dj = load_dataset_json(raw_dir)
    fp = compute_fingerprint(cases, raw_dir.name, dj.channel_names, opts.num_processes)
    out_dir.mkdir(parents=True, exist_ok=True)  # the first write, after the fingerprint's checks
    write_json(read_json(raw_dir / "dataset.json"), out_dir / "dataset.json")
    save_fingerprint(fp, out_dir / FINGERPRINT_FILE)
    plans = plan_experiment(fp, opts.grid_policy, opts.gpu_memory_gb, opts.target_size_xyz, opts.plan_for)
    plans.plans_name = opts.plans_name
    labels = {c.case_id: c.label_file for c in cases if c.label_file is not None}
    brain = brain_channel(dj.channel_names)  # the round trip crops where preprocessing crops: the ADC's brain box
    with_adc = {c.case_id: (c.image_files[brain], c.label_file) for c in cases if c.label_file is not None}
    for name in list(plans.configurations):
        cfg = plans.configurations[name]
        if name == DEFAULT_CONFIGURATION:
            cfg, trip = _heed_patch_roundtrip(fp, cfg, with_adc, opts)
            plans.configurations[name] = cfg
            if SLICE_CONFIGURATION in plans.configurations:  # 2d takes 3d_fullres's in-plane spacing, refined or not
                plans.configurations[SLICE_CONFIGURATION] = plan_2d_configuration(fp, cfg, opts.gpu_memory_gb)
        elif cfg.is_patch_based:
            trip = measure_crop_roundtrip(with_adc, cfg.resampling_spacing_zyx, cfg.prediction_interpolation,
                                          opts.num_processes, cfg.label_interpolation)
            if name == SLICE_CONFIGURATION and DEFAULT_CONFIGURATION in plans.configurations:
                state_shortfall(fp, cfg, trip, DEFAULT_CONFIGURATION)
        else:
            workers = opts.num_processes if cfg.label_interpolation == "sdf" else 1
            trip = measure_roundtrip(labels, cfg.target_size_zyx, cfg.label_interpolation, workers)
        record_roundtrip(cfg, trip)
    _drop_unbuildable(plans, raw_dir)
    _keep_replaced_plans(out_dir / plans_file_name(opts.plans_name), plans)
    save_plans(plans, out_dir / plans_file_name(opts.plans_name))
    write_splits_if_absent(out_dir / SPLITS_FILE, {c.case_id: c.lesion_fraction for c in fp.cases})
    return plans


def _keep_replaced_plans(path: Path, plans: Plans) -> None:
    """Before planning anew over a plans file that says otherwise (edited by hand, or planned by an older version),
    copy it to ``NAME.json.bak`` and say so: a re-run without ``--keep-plans`` (which a user pastes from an error)
    replaced a hand-edited file without a word."""
    if not path.is_file():
        return
    try:
        same = read_json(path) == json.loads(json.dumps(plans.to_dict()))  # as save_plans would write it
    except ValueError:  # not JSON: keep it all the same
        same = False
    if not same:
        backup = path.with_name(path.name + ".bak")
        write_text(path.read_text(), backup)
        log.warning("%s: planned anew, replacing the file there (its previous content is kept in %s); to go back "
                    "to it, edits included, move %s back to %s and run with --keep-plans", path, backup.name,
                    backup.name, path.name)


def _drop_unbuildable(plans: Plans, raw_dir: Path) -> None:
    """Leave out of the plans each configuration the network cannot be built for on this dataset (nnU-Net plans no
    3D configuration for 2D data either), saying why; the plans would otherwise be written and then refused whole
    when read, so that no configuration could train. The default becomes the first one left."""
    for name in list(plans.configurations):
        problems = configuration_problems(plans.configurations[name])
        if problems:
            log.warning("%s: configuration %s is not planned for this dataset: %s", raw_dir.name, name,
                        "; ".join(problems))
            del plans.configurations[name]
    if not plans.configurations:
        raise HiennuError(f"{raw_dir}: no configuration can be planned for these cases (see the warnings above); "
                          f"their brains are too small or too flat for a U-Net at the planned spacing")
    if plans.default_configuration not in plans.configurations:
        plans.default_configuration = next(iter(plans.configurations))
        log.warning("%s: the plans' default configuration is now %s", raw_dir.name, plans.default_configuration)


def _heed_patch_roundtrip(fp: DatasetFingerprint, cfg: Configuration,
                          with_adc: dict[str, tuple[Path, Path]], opts: PlanAndPreprocessOptions
                          ) -> tuple[Configuration, RoundTrip]:
    """``3d_fullres`` at the forced spacing, or refined until its label round trip holds (within budget)."""
    if opts.target_spacing_zyx is not None:
        cfg = force_spacing(fp, cfg, opts.target_spacing_zyx, opts.gpu_memory_gb)

    def measure(spacing_zyx):
        return measure_crop_roundtrip(with_adc, spacing_zyx, cfg.prediction_interpolation, opts.num_processes,
                                      cfg.label_interpolation)

    return heed_roundtrip(fp, cfg, measure, opts.gpu_memory_gb, forced=opts.target_spacing_zyx is not None)


def single_slice_problem(config: Configuration, cases: list[CaseFiles]) -> str | None:
    """Why a 3D network cannot learn ``config`` on ``cases`` (every case a single slice: its patch's other slices
    would be zero padding), or None. Read from the images' headers."""
    if config.network.spatial_dims != 3 or config.patch_size_zyx is None or int(config.patch_size_zyx[0]) < 2:
        return None
    for case in cases:
        reader = image_reader(case.image_files[0])
        reader.ReadImageInformation()
        if reader.GetDimension() == 3 and reader.GetSize()[2] > 1:
            return None
    return (f"configuration {config.name}: patch_size_zyx {list(config.patch_size_zyx)} and network.spatial_dims 3 "
            f"ask for a 3D network, but every case has a single slice, so {int(config.patch_size_zyx[0]) - 1} of "
            f"the patch's slices would be padding; set network.spatial_dims to 2 and patch_size_zyx[0] to 1 "
            f"(nnU-Net's 2d), or plan again without --keep-plans (the planner leaves 3D out for such data)")


def plan_and_preprocess(dataset: str | int, opts: PlanAndPreprocessOptions | None = None) -> Path:
    """Run the step for ``dataset`` (name, folder name or number); returns the preprocessed folder."""
    opts = opts or PlanAndPreprocessOptions()
    if opts.num_processes < 1:
        raise HiennuError(f"-np must be at least 1, got {opts.num_processes}")
    validate_target_spacing(opts.target_spacing_zyx)
    if opts.target_spacing_zyx is not None and opts.keep_plans:
        raise HiennuError("--target-spacing re-plans, --keep-plans keeps the existing plans: give one of them")
    planned = (DEFAULT_CONFIGURATION, SLICE_CONFIGURATION, LOSSLESS_CONFIGURATION, PAPER_CONFIGURATION)
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
        if not (out_dir / plans_file_name(opts.plans_name)).is_file():
            raise HiennuError(f"{out_dir / plans_file_name(opts.plans_name)}: not found, and --keep-plans preprocesses "
                              f"with an existing plans file; leave out --keep-plans to plan anew, or copy "
                              f"{out_dir / plans_file_name(PLANS_NAME)} to it and edit it")
        plans = load_plans(out_dir / plans_file_name(opts.plans_name))
        log.info("using the existing %s", out_dir / plans_file_name(opts.plans_name))
    else:
        if len(cases) < DEFAULT_FOLDS and not (out_dir / SPLITS_FILE).exists():  # before anything is written
            raise HiennuError(f"{raw_dir}: {len(cases)} training case(s) cannot be split into {DEFAULT_FOLDS} folds; "
                              f"add cases (at least {DEFAULT_FOLDS}), or give your own {SPLITS_FILE} in {out_dir}")
        plans = make_plans(raw_dir, out_dir, cases, opts)
    if not opts.preprocess:
        return out_dir
    names = list(opts.configurations) if opts.configurations else list(plans.configurations)
    if opts.keep_plans:  # the planner leaves a 3D configuration out for such data; edited plans may bring one back
        for name in names:
            problem = single_slice_problem(plans.configuration(name), cases)
            if problem:
                raise HiennuError(f"{out_dir / plans_file_name(opts.plans_name)}: {problem}")
    for name in names:
        preprocess_dataset(cases, plans.configuration(name), out_dir / preprocessed_data_name(opts.plans_name, name),
                           opts.num_processes)
    return out_dir
