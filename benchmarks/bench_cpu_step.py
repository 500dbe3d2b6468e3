"""One CPU training step of the planned configuration, profiled, beside a bare step of the same network.

    source /work/hw/env.sh        # or any hiennu_preprocessed holding the dataset
    python benchmarks/bench_cpu_step.py                            # default run, ~10 min on 2 shared cores
    python benchmarks/bench_cpu_step.py --dtype fp32 --no-compile --no-variants --steps 2
    python benchmarks/bench_cpu_step.py --json /tmp/step.json

What it measures, all in one process, the things compared interleaved (A, B, A, B, ...) so that a
load that comes and goes (another job on the same cores) hits them alike; medians and ratios:

1. **Augmentation, per transform**: each transform of :func:`hiennu.training.augmentation.build_transforms`
   alone with probability 1 on one real patch (seconds per sample), the planned pipeline with the
   plans' probabilities, and loading + cropping a patch.
2. **Planned vs bare** (per dtype, float32 and bf16 autocast): the *planned* step is the trainer's own:
   a :class:`~hiennu.training.trainer.Trainer` of ``--trainer`` is built for fold 0 (nothing is
   written), its :meth:`build_batches` loader (workers, augmentation) feeds one epoch of ``--steps + 1``
   batches; the first step (worker spin-up, empty queue) is reported apart. Even steps call the
   trainer's own ``_train_step``, odd steps a copy of it with a clock between the phases (copies,
   forward, loss, backward, clip + optimizer), so the breakdown is checked against the real step. The
   *bare* step is the same network (a copy) with its own AdamW on a pre-made tensor batch:
   forward, ``mean()`` of the logits, backward, optimizer step; no data, no loss, no clipping.
3. **Candidate speed-ups**, in one dtype (``--variant-dtype``, default the plans' ``training.cpu_bf16``):
   the planned step with torch threads 1 or 2 and 0 / 1 / 2 augmentation workers, and with the
   elastic deformation off or at p = 0.2 (``--no-variants`` skips these); the bare step contiguous vs
   ``channels_last_3d`` vs one torch thread vs ``torch.compile`` of the network as ``hiennu_train
   --compile`` does it (compile time reported; ``--no-compile`` skips it).

Without the preprocessed data (or with ``--random``) it writes a temporary dataset of random cases of
the planned patch size (the plans from ``--plans``, else the real plans file, else the planner's CPU
network for BONBID) and runs the same code on it. Nothing is written elsewhere; ``--json OUT`` keeps
every raw timing. Voxels per second = batch x patch voxels / seconds per step.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import pickle
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hiennu.device import autocast, cpu_has_native_bf16, memory_format
from hiennu.errors import HiennuError
from hiennu.plans import (PLANS_NAME, AugmentationPlan, ChannelNormalization, Configuration, NetworkPlan, Plans,
                          TrainingPlan, load_plans, save_plans)
from hiennu.training.augmentation import augment_sample, build_transforms
from hiennu.training.data import TrainingBatches, load_preprocessed_case
from hiennu.training.options import TrainingOptions
from hiennu.training.trainers import get_trainer_class

CPU = torch.device("cpu")
TRANSFORMS = ("elastic", "noise", "blur", "lowres", "gamma", "mirror")
_P_FIELD = {"elastic": "p_elastic", "noise": "p_noise", "blur": "p_blur", "lowres": "p_lowres",
            "gamma": "p_gamma", "mirror": "p_mirror"}
now = time.perf_counter


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------------------- data
def default_configuration() -> Configuration:
    """The planner's CPU ``3d_fullres`` for BONBID (benchmarks/bench_cpu_bf16.py's network)."""
    return Configuration(
        name="3d_fullres", target_size_xyz=None, grid_policy="spacing", target_spacing_zyx=[2.0, 1.375, 1.375],
        crop_to_brain=True, patch_size_zyx=[48, 88, 72], planned_for="cpu",
        normalization=[ChannelNormalization("ADC", "global_zscore"), ChannelNormalization("ZADC", "atlas_zscore")],
        network=NetworkPlan(in_channels=2, features_per_stage=[16, 32, 64, 128], pool_kernel_sizes=[[2, 2, 2]] * 3,
                            dropout_per_stage=[0.1, 0.1, 0.2, 0.3], norm="instance", rule_prior=True,
                            rule_prior_mode="veto", rule_prior_scale=10.0),
        training=TrainingPlan(batch_size=2, num_workers=2, iterations_per_epoch=20, foreground_oversampling=0.1,
                              lr_schedule="poly", cpu_bf16=cpu_has_native_bf16()),
        augmentation=AugmentationPlan(p_mirror=0.5, mirror_axes=[2]))


def make_random_dataset(root: Path, config: Configuration, n_cases: int = 8) -> str:
    """A preprocessed dataset of random cases slightly larger than the patch; returns its name."""
    name = "Dataset999_BenchRandom"
    folder = root / name
    save_plans(Plans(dataset_name=name, channel_names=["ADC", "ZADC"], configurations={config.name: config}),
               folder / "plans.json")
    rng = np.random.default_rng(0)
    shape = tuple(int(p) + 4 for p in config.patch_size_zyx)
    ids = [f"case_{i:03d}" for i in range(n_cases)]
    case_dir = folder / config.name
    case_dir.mkdir(parents=True)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    for i, case in enumerate(ids):
        lesion = sum((g - rng.uniform(-0.4, 0.4)) ** 2 for g in grids) < rng.uniform(0.02, 0.1)
        data = rng.normal(0, 1, (config.network.in_channels,) + shape).astype(np.float32)
        data[:, lesion] -= 2.5
        np.save(case_dir / f"{case}.npy", data)
        np.save(case_dir / f"{case}_seg.npy", lesion[None].astype(np.uint8))
        (case_dir / f"{case}.json").write_text(json.dumps(
            {"case_id": case, "has_lesion": bool(lesion.any()), "lesion_voxels": int(lesion.sum()),
             "lesion_locations": np.argwhere(lesion)[::50].tolist()}))
    folds = [ids[k::5] for k in range(5)]
    (folder / "splits_final.json").write_text(json.dumps(
        [{"train": [c for c in ids if c not in folds[k]], "val": folds[k]} for k in range(5)]))
    return name


def build_trainer(args: argparse.Namespace, bf16: bool):
    """The trainer of fold 0 as ``hiennu_train`` builds it (no file is written by building it)."""
    options = TrainingOptions(dataset=args.dataset, configuration=args.config, fold=0, device="cpu",
                              cpu_bf16=bf16, num_workers=args.workers, plans_name=args.plans_name)
    return get_trainer_class(args.trainer)(options)


def batches_for(trainer, workers: int, transform=None) -> TrainingBatches:
    """The trainer's loader (:meth:`Trainer.build_batches`) with another worker count or transform."""
    return TrainingBatches(trainer.case_dir, trainer.train_cases, trainer.config,
                           batch_size=trainer.training.batch_size, seed=trainer.options.seed,
                           num_workers=workers, device=trainer.device, augment=True, transform=transform)


# ---------------------------------------------------------------------------------------- steps
def phased_step(tr, data: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """:meth:`Trainer._train_step` line for line, with a clock between the phases (CPU ops are synchronous)."""
    t0 = now()
    data = data.to(tr.device, non_blocking=True).contiguous(memory_format=memory_format(tr.device))
    target = tr._supervised_slices(target.to(tr.device, non_blocking=True))
    t1 = now()
    tr.optimizer.zero_grad(set_to_none=True)
    with autocast(tr.device, tr.training.cpu_bf16):
        output = tr.model(data)
    t2 = now()
    loss = tr.compute_loss(output, target)
    t3 = now()
    loss.backward()
    t4 = now()
    tr._add_l1_gradient()
    if tr.training.grad_clip_norm:
        nn.utils.clip_grad_norm_(tr.params, tr.training.grad_clip_norm)
    t5 = now()
    tr.optimizer.step()
    if tr.average is not None:
        tr.average.update(tr.network)
    t6 = now()
    return loss, {"copy": t1 - t0, "forward": t2 - t1, "loss": t3 - t2, "backward": t4 - t3,
                  "l1_clip": t5 - t4, "optimizer": t6 - t5}


def planned_block(tr, batches: TrainingBatches, steps: int, epoch: int, threads: int,
                  phased: str = "alternate") -> dict[str, Any]:
    """One epoch of ``steps + 1`` batches through the trainer's step; per step the wait for the batch
    (the loader's ``next``, which also wraps the arrays as tensors) and the step itself."""
    torch.set_num_threads(threads)
    records: list[dict[str, Any]] = []
    previous_done = now()
    for i, (data, target) in enumerate(batches.epoch(epoch, steps + 1)):
        ready = now()
        use_phased = phased == "always" or (phased == "alternate" and i % 2 == 1)
        if use_phased:
            loss, phases = phased_step(tr, data, target)
        else:
            loss, phases = tr._train_step(data, target), None
        float(loss.detach())  # the trainer checks each CPU step's loss
        done = now()
        records.append({"wait": ready - previous_done, "step": done - ready, "phases": phases, "own": not use_phased})
        previous_done = done
    return {"records": records, "threads": threads}


def planned_configuration(plans: str | None, dataset: str, plans_name: str, config: str) -> Configuration:
    """Configuration ``config`` of the plans JSON ``plans``, else of the dataset's preprocessed plans file
    (``hiennu_preprocessed/DatasetNNN_Name/<plans_name>.json``)."""
    if plans:
        return load_plans(plans).configuration(config)
    from hiennu.paths import plans_file_name, preprocessed_root, resolve_dataset
    return load_plans(preprocessed_root() / resolve_dataset(dataset) / plans_file_name(plans_name)).configuration(config)


def make_bare(net: nn.Module, x: torch.Tensor, bf16: bool, lr: float, layout: str = "contiguous",
              compiled: bool = False) -> tuple[Callable[[], None], float]:
    """A bare step on a copy of ``net``: forward, mean of the logits, backward, AdamW. Returns the step and
    the seconds of its first call (warm-up; with ``compiled``, the compilation)."""
    net = copy.deepcopy(net)
    fmt = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    model = torch.compile(net) if compiled else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    net.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(CPU, bf16):
            out = model(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().mean() for o in outs).backward()
        optimizer.step()

    t = now()
    step()
    return step, now() - t


def bare_block(step: Callable[[], None], steps: int, threads: int) -> list[float]:
    torch.set_num_threads(threads)
    times = []
    for _ in range(steps):
        t = now()
        step()
        times.append(now() - t)
    return times


# -------------------------------------------------------------------------------- augmentation
def sample_patch(tr) -> tuple[np.ndarray, np.ndarray]:
    """A patch of the planned size from the first training case with a lesion, centred on the lesion."""
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
    from hiennu.training.data import patch_bbox
    patch = tr.config.input_size_zyx
    for case in tr.train_cases:
        d, s, props = load_preprocessed_case(tr.case_dir, case)
        if props.get("has_lesion"):
            break
    locations = np.asarray(props.get("lesion_locations") or [], dtype=np.int64).reshape(-1, 3)
    box = patch_bbox(d.shape[1:], patch, np.random.default_rng(0), locations if len(locations) else None)
    return crop_and_pad_nd(d, box, pad_value=0), crop_and_pad_nd(s, box, pad_value=0)


def time_augmentation(tr, samples: int) -> dict[str, Any]:
    plan: AugmentationPlan = tr.config.augmentation
    grid = tr.config.input_size_zyx
    d, s = sample_patch(tr)
    only_zero = {f: 0.0 for f in _P_FIELD.values()}
    result: dict[str, Any] = {}
    for name in TRANSFORMS:
        forced = dataclasses.replace(plan, **{**only_zero, _P_FIELD[name]: 1.0},
                                     mirror_axes=plan.mirror_axes or [2])
        transform = build_transforms(forced, grid)
        times = []
        for k in range(samples):
            t = now()
            augment_sample(transform, d, s, 1000 + k)
            times.append(now() - t)
        result[name] = {"p_planned": getattr(plan, _P_FIELD[name]), "seconds_p1": times}
    none = build_transforms(dataclasses.replace(plan, **only_zero), grid)
    times = []
    for k in range(samples):
        t = now()
        augment_sample(none, d, s, k)
        times.append(now() - t)
    result["copy_only"] = {"seconds_p1": times}
    planned = build_transforms(plan, grid)
    times = []
    for k in range(4 * samples):
        t = now()
        augment_sample(planned, d, s, 2000 + k)
        times.append(now() - t)
    result["planned_pipeline"] = {"seconds": times}
    # loading + cropping one patch (what a worker does before augmenting)
    maker = batches_for(tr, 0, transform=build_transforms(dataclasses.replace(plan, **only_zero), grid))._maker
    times = []
    for k in range(samples):
        t = now()
        maker.make(0, np.array([k % len(tr.train_cases)]), np.array([k]), np.array([False]))
        times.append(now() - t)
    result["load_crop"] = {"seconds": times}
    return result


# ------------------------------------------------------------------------------------------ main
def summarize_planned(blocks: list[dict], batch_voxels: int) -> dict[str, Any]:
    steady = [r for b in blocks for r in b["records"][1:]]
    first = [b["records"][0] for b in blocks]
    totals = [r["wait"] + r["step"] for r in steady]
    phases = {k: median([r["phases"][k] for r in steady if r["phases"]])
              for k in ("copy", "forward", "loss", "backward", "l1_clip", "optimizer")}
    s = {
        "steady_steps": len(steady),
        "seconds_per_step": median(totals),
        "wait": median([r["wait"] for r in steady]),
        "step_compute": median([r["step"] for r in steady]),
        "own_step": median([r["step"] for r in steady if r["own"]]),
        "phased_step": median([r["step"] for r in steady if not r["own"]]),
        "phases": phases,
        "first_step_wait": median([r["wait"] for r in first if r["wait"] is not None]),
        "first_step": median([r["step"] for r in first]),
    }
    s["voxels_per_second"] = batch_voxels / s["seconds_per_step"]
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", default="BONBID")
    ap.add_argument("--config", default="3d_fullres")
    ap.add_argument("--trainer", default="TrainerDiceFocal")
    ap.add_argument("--plans-name", default=PLANS_NAME, help="plans identifier (-p), default %(default)s")
    ap.add_argument("--plans", help="plans JSON for the random-data fallback (default: the dataset's)")
    ap.add_argument("--random", action="store_true", help="random cases even when the preprocessed data exist")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per block (after one spin-up step)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of planned/bare blocks per dtype")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, the cores)")
    ap.add_argument("--workers", type=int, default=None, help="augmentation workers (default: the plans')")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="both")
    ap.add_argument("--variant-dtype", choices=("fp32", "bf16"), default=None,
                    help="dtype of the candidate speed-ups (default: the plans' training.cpu_bf16)")
    ap.add_argument("--variant-steps", type=int, default=2)
    ap.add_argument("--no-variants", action="store_true", help="skip the thread/worker/augmentation variants")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    ap.add_argument("--aug-samples", type=int, default=3)
    ap.add_argument("--json", help="write every raw timing here")
    args = ap.parse_args()
    started = now()
    threads = args.threads or torch.get_num_threads()
    tmp = tempfile.TemporaryDirectory(prefix="bench_cpu_step_")
    os.environ["hiennu_results"] = str(Path(tmp.name) / "results")  # nothing is written; never the real results

    source = "preprocessed"
    try:
        if args.random:
            raise HiennuError("--random")
        tr32 = build_trainer(args, False)
    except HiennuError as e:
        source = f"random arrays ({e})"
        try:
            config = planned_configuration(args.plans, args.dataset, args.plans_name, args.config)
        except Exception:
            if args.plans:
                raise
            config = default_configuration()
        os.environ["hiennu_preprocessed"] = str(Path(tmp.name) / "pre")
        args.dataset = make_random_dataset(Path(tmp.name) / "pre", config)
        args.plans_name = PLANS_NAME
        tr32 = build_trainer(args, False)
    config = tr32.config
    patch = config.input_size_zyx
    batch = tr32.training.batch_size
    batch_voxels = batch * int(np.prod(patch))
    workers = tr32.training.num_workers
    plans_bf16 = (build_trainer(args, None).training.cpu_bf16 if args.variant_dtype is None
                  else args.variant_dtype == "bf16")
    dtypes = {"fp32": [False], "bf16": [True], "both": [False, True]}[args.dtype]
    trainers = {b: (tr32 if not b else build_trainer(args, True)) for b in sorted(set(dtypes) | {plans_bf16})}
    load = os.getloadavg()
    header = {
        "cpu": cpu_model(), "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__, "threads": threads,
        "workers": workers, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_at_start": load,
        "data": source, "dataset": args.dataset, "config": config.name, "trainer": args.trainer,
        "patch_zyx": list(patch), "batch": batch, "features": config.network.features_per_stage,
        "plans_cpu_bf16": plans_bf16,
    }
    print(f"CPU {header['cpu']}, native bf16 {header['native_bf16']}, torch {torch.__version__}, "
          f"{threads} torch threads, {workers} workers; load average at start {load[0]:.1f} "
          f"(another job running on the same cores makes absolute times noisy: compare the ratios)")
    print(f"data: {source}; {args.trainer}, {config.name}, patch {list(patch)}, batch {batch}, "
          f"features {config.network.features_per_stage}\n", flush=True)
    out: dict[str, Any] = {"header": header}

    def save() -> None:  # after each part, so that an interrupted run keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))

    # 1. augmentation per transform
    torch.set_num_threads(threads)
    aug = time_augmentation(tr32, args.aug_samples)
    out["augmentation"] = aug
    print("| augmentation of one sample (C, z, y, x) on the patch | p planned | s at p = 1 (median) |")
    print("|---|---|---|")
    for name in TRANSFORMS:
        print(f"| {name} | {aug[name]['p_planned']} | {median(aug[name]['seconds_p1']):.3f} |")
    print(f"| none (copy to float32 only) | - | {median(aug['copy_only']['seconds_p1']):.3f} |")
    print(f"| the planned pipeline (mean over {len(aug['planned_pipeline']['seconds'])} samples) | - | "
          f"{statistics.mean(aug['planned_pipeline']['seconds']):.3f} |")
    print(f"| loading + cropping one patch (memory-mapped) | - | {median(aug['load_crop']['seconds']):.3f} |")
    # the queue transfer: a batch pickled by a worker and unpickled by the main process
    item = {"data": np.zeros((batch, config.network.in_channels) + tuple(patch), np.float32),
            "target": np.zeros((batch, 1) + tuple(patch), np.float32)}
    t = now()
    for _ in range(5):
        pickle.loads(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
    out["pickle_roundtrip_batch"] = (now() - t) / 5
    print(f"\npickle round trip of one batch ({sum(a.nbytes for a in item.values()) / 1e6:.1f} MB, the "
          f"worker -> main queue): {out['pickle_roundtrip_batch']:.3f} s\n", flush=True)
    save()

    # 2. planned vs bare, interleaved per round and dtype
    x_data, x_target = next(iter(batches_for(tr32, 0).epoch(99, 1)))
    x_data, x_target = x_data.clone(), x_target.clone()
    bare_steps = {}
    for bf16 in dtypes:
        step, warm = make_bare(trainers[bf16].network, x_data, bf16, tr32.training.learning_rate)
        bare_steps[bf16] = step
    planned_blocks: dict[bool, list] = {b: [] for b in dtypes}
    bare_times: dict[bool, list] = {b: [] for b in dtypes}
    epoch = 0
    for r in range(args.rounds):
        for bf16 in dtypes:
            tr = trainers[bf16]
            batches = tr.build_batches()
            planned_blocks[bf16].append(planned_block(tr, batches, args.steps, epoch, threads))
            batches.close()
            epoch += 1
            bare_times[bf16] += bare_block(bare_steps[bf16], args.steps, threads)
            print(f"round {r} {'bf16' if bf16 else 'fp32'}: planned {[round(x['wait'] + x['step'], 2) for x in planned_blocks[bf16][-1]['records'][1:]]} s, "
                  f"bare {[round(x, 2) for x in bare_times[bf16][-args.steps:]]} s", flush=True)
    out["planned_vs_bare"] = {}
    print(f"\n| per step ({threads} threads, {workers} workers) | " + " | ".join(
        "bf16 autocast" if b else "float32" for b in dtypes) + " |")
    print("|---|" + "---|" * len(dtypes))
    summaries = {b: summarize_planned(planned_blocks[b], batch_voxels) for b in dtypes}
    for b in dtypes:
        summaries[b]["bare"] = median(bare_times[b])
        summaries[b]["bare_voxels_per_second"] = batch_voxels / summaries[b]["bare"]
        summaries[b]["planned_over_bare"] = summaries[b]["seconds_per_step"] / summaries[b]["bare"]
        out["planned_vs_bare"]["bf16" if b else "fp32"] = {"summary": summaries[b], "planned_blocks": planned_blocks[b],
                                                           "bare_seconds": bare_times[b]}
    rows = [("planned step, s (wait + step, median)", lambda s: s["seconds_per_step"]),
            ("  waiting for the batch", lambda s: s["wait"]),
            ("  the step (trainer's own _train_step)", lambda s: s["own_step"]),
            ("  the step (phased copy of it)", lambda s: s["phased_step"]),
            ("    copies (.to, contiguous)", lambda s: s["phases"]["copy"]),
            ("    forward", lambda s: s["phases"]["forward"]),
            ("    loss", lambda s: s["phases"]["loss"]),
            ("    backward", lambda s: s["phases"]["backward"]),
            ("    L1 + grad clipping", lambda s: s["phases"]["l1_clip"]),
            ("    optimizer (AdamW)", lambda s: s["phases"]["optimizer"]),
            ("epoch start: wait for the first batch", lambda s: s["first_step_wait"]),
            ("bare forward+backward+AdamW, s", lambda s: s["bare"]),
            ("planned / bare", lambda s: s["planned_over_bare"]),
            ("planned, M voxels/s", lambda s: s["voxels_per_second"] / 1e6),
            ("bare, M voxels/s", lambda s: s["bare_voxels_per_second"] / 1e6)]
    for label, f in rows:
        print(f"| {label} | " + " | ".join(f"{f(summaries[b]):.3f}" for b in dtypes) + " |")
    if len(dtypes) == 2:
        print(f"| float32 / bf16, planned step | {summaries[False]['seconds_per_step'] / summaries[True]['seconds_per_step']:.2f} | |")
        print(f"| float32 / bf16, bare step | {summaries[False]['bare'] / summaries[True]['bare']:.2f} | |")
    print(flush=True)
    save()

    # 3. candidate speed-ups, in the variant dtype
    vb = plans_bf16
    vtr = trainers[vb]
    vname = "bf16" if vb else "fp32"
    if not args.no_variants:
        plan = config.augmentation
        variants = [(f"threads {t}, workers {w}", t, w, None) for t in (1, 2) for w in (0, 1, 2)]
        variants += [(f"threads {threads}, workers {workers}, elastic off", threads, workers,
                      build_transforms(dataclasses.replace(plan, p_elastic=0.0), patch)),
                     (f"threads {threads}, workers {workers}, elastic p 0.2", threads, workers,
                      build_transforms(dataclasses.replace(plan, p_elastic=min(plan.p_elastic, 0.2)), patch))]
        results = {}
        for label, t, w, transform in variants:
            batches = batches_for(vtr, w, transform)
            block = planned_block(vtr, batches, args.variant_steps, epoch, t, phased="never")
            batches.close()
            epoch += 1
            steady = block["records"][1:]
            results[label] = {"threads": t, "workers": w, "records": block["records"],
                              "seconds_per_step": median([r["wait"] + r["step"] for r in steady]),
                              "wait": median([r["wait"] for r in steady]), "step": median([r["step"] for r in steady]),
                              "first_wait": block["records"][0]["wait"]}
            print(f"variant {label}: {[round(r['wait'] + r['step'], 2) for r in steady]} s", flush=True)
        ref_key = f"threads {threads}, workers {workers}"
        ref = results.get(ref_key, {}).get("seconds_per_step") or summaries.get(vb, {}).get("seconds_per_step")
        out["variants"] = {"dtype": vname, "reference": ref_key, "results": results}
        print(f"\n| planned step, {vname}, {args.variant_steps} steps each after a spin-up step | s per step | "
              f"wait | step | epoch-start wait | speed-up vs {ref_key} |")
        print("|---|---|---|---|---|---|")
        for label, res in results.items():
            print(f"| {label} | {res['seconds_per_step']:.2f} | {res['wait']:.2f} | {res['step']:.2f} | "
                  f"{res['first_wait']:.2f} | {ref / res['seconds_per_step']:.2f} |")
        print(flush=True)
        save()

    # bare step: contiguous vs channels_last_3d vs torch.compile, interleaved
    bare_variants: dict[str, dict] = {}
    for bf16 in [vb]:
        name = vname
        net = trainers[bf16].network
        kinds = {"eager contiguous": (*make_bare(net, x_data, bf16, 1e-3), threads)}
        if trainers[bf16].config.network.spatial_dims == 3:  # a 2D network's weights have no 3D layout
            kinds["eager channels_last_3d"] = (*make_bare(net, x_data, bf16, 1e-3, layout="channels_last_3d"), threads)
        if threads != 1:
            kinds["eager contiguous, 1 thread"] = (kinds["eager contiguous"][0], None, 1)
        if not args.no_compile:
            kinds["torch.compile"] = (*make_bare(net, x_data, bf16, 1e-3, compiled=True), threads)
            print(f"torch.compile: first call (compiling) {kinds['torch.compile'][1]:.1f} s", flush=True)
        times: dict[str, list] = {k: [] for k in kinds}
        for _ in range(args.steps):  # interleaved: A, B, C, A, B, C, ...
            for k, (step, _, n_threads) in kinds.items():
                times[k] += bare_block(step, 1, n_threads)
            print("bare " + ", ".join(f"{k}: {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        torch.set_num_threads(threads)
        ref = median(times["eager contiguous"])
        bare_variants[name] = {k: {"seconds": v, "median": median(v), "speedup": ref / median(v),
                                   "first_call": kinds[k][1]} for k, v in times.items()}
        print(f"| bare step, {name} | s (median of {args.steps}, interleaved) | speed-up vs eager | first call, s |")
        print("|---|---|---|---|")
        for k, v in bare_variants[name].items():
            first = f"{v['first_call']:.1f}" if v["first_call"] is not None else "-"
            print(f"| {k} | {v['median']:.3f} | {v['speedup']:.2f} | {first} |")
        print(flush=True)
    out["bare_variants"] = bare_variants
    out["wall_seconds"] = now() - started
    out["loadavg_at_end"] = os.getloadavg()
    print(f"wall time {out['wall_seconds'] / 60:.1f} min; load average at end {out['loadavg_at_end'][0]:.1f}")
    save()
    tmp.cleanup()


def cpu_model() -> str:
    """The CPU's model name (lscpu), else what the platform module knows."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
