"""Training batches from the preprocessed cases: loading, case sampling, augmentation, workers.

Preprocessed cases live in ``$hiennu_preprocessed/DatasetNNN_Name/CONFIG/`` as ``CASE.npy``
(float32 (C, z, y, x)), ``CASE_seg.npy`` (uint8 (1, z, y, x), {0, 1}) and ``CASE.json``
(properties, see ``documentation/architecture.md``). A whole-volume configuration trains on whole
cases; a patch configuration (``3d_fullres``) on patches of ``patch_size_zyx`` cut from each case
(zero-padded where the patch leaves the case), centred on a lesion voxel for the forced-foreground
share of each batch and placed uniformly at random otherwise (:func:`patch_bbox`).

Determinism: the cases of every global batch (all ranks together) and the augmentation seed of
every sample are drawn from (seed, epoch) alone; a rank takes its slice of the global batch. A
resumed run therefore replays an epoch exactly, whatever the number of workers, and under DDP
the ranks see disjoint shares of the batch a single process with the global batch size would see.

Two paths:

- CPU (device ``cpu``/``mps``): each sample is augmented by batchgenerators
  (:mod:`hiennu.training.augmentation`), in ``num_workers`` background processes
  (``MultiThreadedAugmenter``) or in-process when 0.
- CUDA: the workers only load and stack; :class:`~hiennu.training.gpu_augmentation.GPUAugmenter`
  augments the batch on the device with a generator seeded from (seed, epoch, rank, iteration).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from hiennu.errors import HiennuError
from hiennu.log import get_logger
from hiennu.parallel import start_parent_watch
from hiennu.plans import Configuration
from hiennu.training.augmentation import augment_sample, build_transforms
from hiennu.training.gpu_augmentation import GPUAugmenter

logger = get_logger(__name__)

_RERUN = "re-run hiennu_plan_and_preprocess for this dataset to rewrite it"


def load_preprocessed_case(case_dir: Path, case_id: str,
                           mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load one preprocessed case from the configuration folder ``case_dir``.

    Returns data (C, z, y, x) float32, seg (1, z, y, x) uint8 and the properties dict. With
    ``mmap`` the arrays are read-only memory maps. A missing, unreadable or inconsistent file
    raises :class:`HiennuError` naming it.
    """
    case_dir = Path(case_dir)
    data_file = case_dir / f"{case_id}.npy"
    seg_file = case_dir / f"{case_id}_seg.npy"
    props_file = case_dir / f"{case_id}.json"
    data = _load_npy(data_file, case_id, mmap)
    seg = _load_npy(seg_file, case_id, mmap)
    if data.ndim != 4 or data.dtype != np.float32:
        raise HiennuError(f"case {case_id}: {data_file} holds a {data.dtype} array of shape {data.shape}, "
                          f"expected float32 (C, z, y, x); {_RERUN}")
    if seg.ndim != 4 or seg.shape[0] != 1 or seg.shape[1:] != data.shape[1:] or seg.dtype != np.uint8:
        raise HiennuError(f"case {case_id}: {seg_file} holds a {seg.dtype} array of shape {seg.shape}, "
                          f"expected uint8 (1, {', '.join(map(str, data.shape[1:]))}) to match {data_file.name}; "
                          f"{_RERUN}")
    if not props_file.is_file():
        raise HiennuError(f"case {case_id}: properties file {props_file} is missing; {_RERUN}")
    try:
        with open(props_file) as f:
            props = json.load(f)
    except (OSError, ValueError) as e:
        raise HiennuError(f"case {case_id}: properties file {props_file} cannot be read ({e}); {_RERUN}") from None
    if not isinstance(props, dict):
        raise HiennuError(f"case {case_id}: properties file {props_file} does not hold a JSON object; {_RERUN}")
    return data, seg, props


def _load_npy(path: Path, case_id: str, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise HiennuError(f"case {case_id}: {path} is missing; {_RERUN}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise HiennuError(f"case {case_id}: {path} is not a readable .npy array ({e}); {_RERUN}") from None


def sample_epoch(num_cases: int, lesion_cases: list[int], global_batch: int, iterations: int,
                 foreground_fraction: float, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw an epoch's cases, per-sample seeds and foreground flags, (iterations, global_batch) each.

    Each global batch holds ``n = foreground_fraction * global_batch`` forced-foreground samples
    (``floor(n)``, plus one more with probability ``n - floor(n)``, so small batches keep the fraction
    on average), drawn uniformly from ``lesion_cases`` at random positions of the batch and flagged
    True; the rest are drawn uniformly from all cases. Depends only on the arguments.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    cases = rng.integers(0, num_cases, size=(iterations, global_batch))
    foreground = np.zeros((iterations, global_batch), dtype=bool)
    share = foreground_fraction * global_batch if lesion_cases else 0.0
    whole, part = int(math.floor(share + 1e-9)), share - math.floor(share + 1e-9)
    if share > 0:
        pool = np.asarray(lesion_cases)
        for it in range(iterations):
            n_fg = whole + (1 if part > 1e-9 and rng.uniform() < part else 0)
            if not n_fg:
                continue
            slots = rng.permutation(global_batch)[:n_fg]
            cases[it, slots] = pool[rng.integers(0, len(pool), size=n_fg)]
            foreground[it, slots] = True
    seeds = rng.integers(0, 2**31 - 1, size=(iterations, global_batch))
    return cases, seeds, foreground


def patch_bbox(shape_zyx: tuple[int, ...], patch_zyx: tuple[int, ...], rng: np.random.Generator,
               centre_on: np.ndarray | None = None) -> list[list[int]]:
    """A half-open box ``[[start, end), ...]`` (z, y, x) of the patch size in a case of ``shape_zyx``.

    ``centre_on`` (candidate voxel positions ``(n, 3)``): the patch is centred on one of them, drawn
    at random. Otherwise the start is uniform over every position that keeps the patch inside the
    case, or, along an axis shorter than the patch, every position that keeps the case inside the
    patch. Parts outside the case are padded by the caller.
    """
    if centre_on is not None and len(centre_on):
        centre = centre_on[rng.integers(0, len(centre_on))]
        starts = [int(c) - p // 2 for c, p in zip(centre, patch_zyx)]
    else:
        starts = []
        for n, p in zip(shape_zyx, patch_zyx):
            lo, hi = sorted((0, int(n) - int(p)))
            starts.append(int(rng.integers(lo, hi + 1)))
    return [[s, s + int(p)] for s, p in zip(starts, patch_zyx)]


#: ``target_of(case_id, data, seg) -> target``: a case's training target from its loaded arrays (C, z, y, x) and
#: (1, z, y, x), uint8 (1, z, y, x); must be picklable (the loader's worker processes get a copy).
TargetFunction = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


class _BatchMaker:
    """Loads (and on the CPU path augments) the samples of one batch; runs in the workers.

    Never raises: a failure comes back as ``{"error": traceback text}`` so the main process can
    report the worker's own exception.
    """

    def __init__(self, case_dir: Path, case_ids: list[str], transform: AbstractTransform | None,
                 patch_size_zyx: tuple[int, int, int] | None = None,
                 lesion_locations: dict[int, np.ndarray] | None = None,
                 target_of: TargetFunction | None = None):
        self.case_dir = case_dir
        self.case_ids = case_ids
        self.transform = transform
        self.patch_size_zyx = patch_size_zyx
        self.lesion_locations = lesion_locations or {}
        self.target_of = target_of

    def make(self, iteration: int, cases: np.ndarray, seeds: np.ndarray,
             foreground: np.ndarray | None = None) -> dict[str, Any]:
        try:
            data, target = [], []
            flags = foreground.tolist() if foreground is not None else [False] * len(cases)
            for case_index, seed, fg in zip(cases.tolist(), seeds.tolist(), flags):
                d, s, _ = load_preprocessed_case(self.case_dir, self.case_ids[case_index], mmap=True)
                if self.target_of is not None:  # from the whole case, before the patch is cut
                    s = self.target_of(self.case_ids[case_index], d, s)
                if self.patch_size_zyx is not None:
                    rng = np.random.default_rng([int(seed), 1])
                    box = patch_bbox(d.shape[1:], self.patch_size_zyx, rng,
                                     self.lesion_locations.get(case_index) if fg else None)
                    d = crop_and_pad_nd(d, box, pad_value=0)
                    s = crop_and_pad_nd(s, box, pad_value=0)
                if self.transform is not None:
                    d, s = augment_sample(self.transform, d, s, seed)
                else:
                    d, s = np.asarray(d, dtype=np.float32), np.asarray(s, dtype=np.float32)
                data.append(d)
                target.append(s)
            return {"iteration": iteration, "data": np.stack(data), "target": np.stack(target)}
        except Exception as e:  # carried to the main process, re-raised there as HiennuError
            names = [self.case_ids[i] for i in cases.tolist()]
            return {"iteration": iteration, "error": f"{type(e).__name__}: {e}", "cases": names,
                    "traceback": traceback.format_exc()}


class _EpochLoader:
    """The data loader each MultiThreadedAugmenter worker copies: worker k makes batches k, k+n, ..."""

    def __init__(self, maker: _BatchMaker, cases: np.ndarray, seeds: np.ndarray, foreground: np.ndarray,
                 num_workers: int):
        self.maker = maker
        self.cases = cases
        self.seeds = seeds
        self.foreground = foreground
        self.num_workers = num_workers
        self.thread_id = 0
        self._next = 0
        self.parent_pid = os.getpid()  # the training process, which made this loader

    def set_thread_id(self, thread_id: int) -> None:
        """Called by batchgenerators in each worker process before its first batch: also watch the training process
        there, since batchgenerators' workers outlive a training killed with SIGKILL (waiting to hand over a batch)."""
        self.thread_id = thread_id
        self._next = thread_id
        if os.getpid() != self.parent_pid:
            start_parent_watch(self.parent_pid)

    def __iter__(self) -> "_EpochLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        it = self._next
        if it >= len(self.cases):
            raise StopIteration
        self._next += self.num_workers
        return self.maker.make(it, self.cases[it], self.seeds[it], self.foreground[it])


class TrainingBatches:
    """Batches for one rank of a training run (see the module docstring).

    case_dir: the configuration folder of the preprocessed dataset; case_ids: the fold's training
    cases; batch_size: per rank; num_workers: background processes (0 = in-process); device: where
    batches are delivered (``cuda`` switches augmentation to the device); augment: False gives the
    unaugmented cases. ``transform`` replaces the planned batchgenerators pipeline on the CPU path;
    ``device_augmentation`` forces the torch path on (or off) whatever the device (default: on for CUDA).
    ``target_of`` replaces each case's reference by a target made from the whole loaded case (before the patch
    is cut; :data:`TargetFunction`); forced-foreground patches still centre on the reference's lesion voxels.
    """

    def __init__(self, case_dir: Path, case_ids: list[str], config: Configuration, batch_size: int, seed: int,
                 num_workers: int, device: torch.device, augment: bool = True, rank: int = 0,
                 world_size: int = 1, *, transform: AbstractTransform | None = None,
                 device_augmentation: bool | None = None, target_of: TargetFunction | None = None):
        if not case_ids:
            raise HiennuError(f"{case_dir}: no training cases given; check splits_final.json of the dataset")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise HiennuError(f"invalid batch set-up: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.case_dir = Path(case_dir)
        self.case_ids = list(case_ids)
        self.config = config
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_workers = max(0, int(num_workers))
        self.device = torch.device(device)
        self.rank = int(rank)
        self.world_size = int(world_size)
        if device_augmentation is None:
            device_augmentation = self.device.type == "cuda"
        self.on_device = augment and device_augmentation
        self.lesion_cases, lesion_locations = self._check_cases()
        fraction = config.training.foreground_oversampling
        if fraction > 0 and not self.lesion_cases:
            logger.warning("foreground_oversampling=%.2f but none of the %d training cases has a lesion; "
                           "sampling uniformly", fraction, len(self.case_ids))
        if not augment:
            cpu_transform = None
        elif self.on_device:
            cpu_transform = None
        else:
            grid = config.input_size_zyx[1:] if config.is_2d else config.input_size_zyx  # 2D: in-plane augmentation
            cpu_transform = transform if transform is not None else build_transforms(config.augmentation, grid)
        patch = tuple(int(v) for v in config.patch_size_zyx) if config.is_patch_based else None
        self._maker = _BatchMaker(self.case_dir, self.case_ids, cpu_transform, patch,  # type: ignore[arg-type]
                                  lesion_locations if patch else None, target_of)
        self._gpu_augmenter = GPUAugmenter(config.augmentation) if self.on_device else None
        self._augmenter: MultiThreadedAugmenter | None = None
        self._watch: _WorkerWatch | None = None

    def _check_cases(self) -> tuple[list[int], dict[int, np.ndarray]]:
        """Open every case once (memory-mapped); return the indices of cases with a lesion and, for a
        patch configuration, each such case's lesion voxel positions ``(n, 3)`` (for foreground patches).
        """
        patched = self.config.is_patch_based
        channels = self.config.network.in_channels
        lesion = []
        locations: dict[int, np.ndarray] = {}
        for i, case_id in enumerate(self.case_ids):
            data, _, props = load_preprocessed_case(self.case_dir, case_id, mmap=True)
            grid = tuple(data.shape[1:]) if patched else tuple(self.config.target_size_zyx)
            if tuple(data.shape[1:]) != grid or data.shape[0] != channels:
                raise HiennuError(f"case {case_id}: {self.case_dir / (case_id + '.npy')} has shape {data.shape}, "
                                  f"but the plans' configuration {self.config.name!r} expects "
                                  f"({channels}, {', '.join(map(str, grid))}); {_RERUN}")
            if "has_lesion" not in props:
                raise HiennuError(f"case {case_id}: {self.case_dir / (case_id + '.json')} lacks 'has_lesion'; {_RERUN}")
            if patched and "lesion_locations" not in props:
                raise HiennuError(f"case {case_id}: {self.case_dir / (case_id + '.json')} lacks 'lesion_locations', "
                                  f"which the patch configuration {self.config.name!r} samples from; {_RERUN}")
            if props["has_lesion"]:
                lesion.append(i)
                if patched:
                    locations[i] = np.asarray(props["lesion_locations"], dtype=np.int64).reshape(-1, 3)
        return lesion, locations

    def epoch(self, epoch: int, iterations: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``iterations`` batches (data (B, C, z, y, x), target (B, 1, z, y, x), float32) on the device."""
        global_batch = self.batch_size * self.world_size
        cases, seeds, foreground = sample_epoch(len(self.case_ids), self.lesion_cases, global_batch, iterations,
                                                self.config.training.foreground_oversampling, self.seed, epoch)
        share = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        cases, seeds, foreground = cases[:, share], seeds[:, share], foreground[:, share]
        self.close()
        try:
            yield from self._deliver(cases, seeds, foreground, epoch)
        finally:
            self.close()

    def _deliver(self, cases: np.ndarray, seeds: np.ndarray, foreground: np.ndarray,
                 epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for it, item in enumerate(self._items(cases, seeds, foreground, epoch)):
            if "error" in item:
                raise HiennuError(
                    f"loading or augmenting batch {item['iteration']} of epoch {epoch} (cases "
                    f"{', '.join(item['cases'])} in {self.case_dir}) failed: {item['error']}\n"
                    f"worker traceback:\n{item['traceback']}")
            data = torch.from_numpy(item["data"]).to(self.device, non_blocking=True)
            target = torch.from_numpy(item["target"]).to(self.device, non_blocking=True)
            if self._gpu_augmenter is not None:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(_derive_seed(self.seed, epoch, self.rank, it))
                data, target = self._gpu_augmenter(data, target, generator, in_plane=self.config.is_2d)
            yield data, target

    def _items(self, cases: np.ndarray, seeds: np.ndarray, foreground: np.ndarray,
               epoch: int) -> Iterator[dict[str, Any]]:
        iterations = len(cases)
        workers = min(self.num_workers, iterations)
        if workers == 0:
            for it in range(iterations):
                yield self._maker.make(it, cases[it], seeds[it], foreground[it])
            return
        loader = _EpochLoader(self._maker, cases, seeds, foreground, workers)
        worker_seeds = [_derive_seed(self.seed, epoch, self.rank, 10_000 + k) for k in range(workers)]
        self._augmenter = MultiThreadedAugmenter(loader, None, workers, num_cached_per_queue=2,
                                                 seeds=worker_seeds, pin_memory=False)
        logging.getLogger().addFilter(_INTERRUPT_LOG_FILTER)  # once: addFilter skips a filter already there
        self._augmenter._start()
        for queue in self._augmenter._queues:  # this process never puts: see _WorkerWatch
            queue._writer.close()
        processes = list(self._augmenter._processes)  # the augmenter forgets them when it aborts
        _quiet_dead_worker_reports(self._augmenter.pin_memory_thread, processes)
        self._watch = _WorkerWatch(processes, self._augmenter.abort_event)
        self._watch.start()
        for _ in range(iterations):
            try:
                item = next(self._augmenter)
            except (RuntimeError, StopIteration) as e:
                watch = self._watch
                self.close()
                raise HiennuError(_death_message(epoch, processes, e, watch.first_dead)) from None
            yield item

    def close(self) -> None:
        """Stop the background workers (safe to call more than once)."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._augmenter is not None:
            self._augmenter._finish()
            self._augmenter = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _InterruptLogFilter(logging.Filter):
    """Drops batchgenerators' own report of a Ctrl-C, ``ERROR:root:MultiThreadedGenerator: caught exception:
    (<class 'KeyboardInterrupt'>, ...)``, which its augmenter logs through the root logger before re-raising: the
    training says itself that it was interrupted and how to resume, so the line only alarms. Other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("MultiThreadedGenerator: caught exception") and "KeyboardInterrupt" in message)


_INTERRUPT_LOG_FILTER = _InterruptLogFilter()


_RESULTS_THREADS: "weakref.WeakKeyDictionary[threading.Thread, list]" = weakref.WeakKeyDictionary()
_previous_excepthook: Callable[[Any], None] = threading.excepthook


def _quiet_dead_worker_reports(results_thread: threading.Thread, processes: list) -> None:
    """Keeps what ``results_thread`` raises once one of ``processes`` has died out of the output.

    Why: batchgenerators' results thread notices a dead worker too and raises in its own thread ("One or more
    background workers are no longer alive", or the EOFError of a half-written batch when every worker is gone),
    which Python prints as an "Exception in thread" traceback before the epoch's own error, the one that names the
    death and its likely cause. So a ``threading.excepthook`` drops an exception of the results thread of one of
    hiennu's augmenters (held weakly) when one of its workers has exited with a non-zero code, or does within
    :data:`DEATH_GRACE_SECONDS` (the thread can read the end of a killed worker's pipe before the worker is reaped: a
    clean-clone CI run printed the traceback so, 2026-12-07); everything else goes to the hook that was there before."""
    global _previous_excepthook
    if threading.excepthook is not _drop_dead_worker_report:
        _previous_excepthook = threading.excepthook
        threading.excepthook = _drop_dead_worker_report
    _RESULTS_THREADS[results_thread] = processes


# how long the hook waits for a killed worker's exit code (seconds): the results thread reads the end of the worker's
# pipe as the kernel closes it, which can come before the worker is reaped and has a code
DEATH_GRACE_SECONDS = 2.0


def _drop_dead_worker_report(args: Any) -> None:
    processes = _RESULTS_THREADS.get(args.thread) if args.thread is not None else None
    try:
        if processes and _a_worker_died(processes, DEATH_GRACE_SECONDS):
            return
    except ValueError:  # a process object already closed: report as usual
        pass
    _previous_excepthook(args)


def _a_worker_died(processes: list, within: float) -> bool:
    """Whether one of ``processes`` exits with a non-zero code within ``within`` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + within
    while not _failed_exit_codes(processes):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _derive_seed(*parts: int) -> int:
    """A 31-bit seed determined by the integers ``parts``."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))


class _WorkerWatch(threading.Thread):
    """Ends an epoch whose augmentation worker died instead of letting it wait for ever.

    Why: batchgenerators reads a batch from a worker's queue whole, and notices a dead worker only between reads. A
    worker killed while handing a batch over (the OOM killer; ``pkill -TERM -f`` reaching the workers too) leaves part
    of a pickled batch in its queue's pipe, and the read waits for the rest as long as any process holds the pipe's
    write end: the training itself, and every worker forked after that queue was made, which cannot exit either while
    its own hand-over waits on a pipe nobody reads any more. A ``3d_fullres`` training stopped so hung (2026-12-07). So
    the training closes its own copies of the write ends once the workers run (it never puts), and this thread, when
    a worker has exited with a non-zero code, notes the codes (:attr:`first_dead`), kills the other workers and sets
    batchgenerators' abort event: no write end is left open, a read of a partial batch ends at once (EOFError, which
    batchgenerators' shutdown catches) and the epoch raises the error that names the death."""

    def __init__(self, processes: list, abort_event: Any, interval: float = 0.2):
        super().__init__(name="hiennu-worker-watch", daemon=True)
        self.processes, self.abort_event, self.interval = processes, abort_event, interval
        self.stopped = threading.Event()
        self.first_dead: list[int] = []  # exit codes of the workers found dead, before the others were killed

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            dead = _failed_exit_codes(self.processes)
            if dead:
                self.first_dead = dead
                for p in self.processes:
                    if p.exitcode is None:
                        p.kill()
                self.abort_event.set()
                return

    def stop(self) -> None:
        self.stopped.set()
        if self is not threading.current_thread():
            self.join(timeout=5.0)


def _failed_exit_codes(processes: list) -> list[int]:
    """Exit codes of the ``processes`` that ended with a non-zero code or a signal (negative); running or clean: none."""
    return [p.exitcode for p in processes if p.exitcode not in (None, 0)]


def _death_message(epoch: int, processes: list, error: BaseException, first_dead: list[int] | None = None) -> str:
    for p in processes:
        p.join(timeout=1.0)
    dead = first_dead or _failed_exit_codes(processes)
    cause = ", ".join(_exit_reason(c) for c in dead) if dead else str(error)
    return (f"a data worker process died during epoch {epoch} ({cause}); if it was killed, the machine "
            f"likely ran out of memory: lower --num-workers or the batch size")


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit by {name}"
    return f"exit code {code}"

