"""Running one function over many cases in worker processes, with a progress bar.

Workers come from a ``forkserver``: the parent may already have run multi-threaded torch/OpenMP
code, after which a plain ``fork`` can hang, while ``spawn`` would re-import torch in every worker
of every pool. The fork server imports the case workers' modules once and forks clean workers
from itself. A module whose functions run in workers says so when it is imported, with
``register_preload(__name__)``; the fork server preloads every module registered before it starts
(:func:`start_workers_early`, or the first pool). Each worker limits torch to one thread so
``num_processes`` workers use ``num_processes`` cores, and ends itself when the process that started its pool
is gone (killed outright, which leaves the pool no chance to stop it).

A utility of the ground floor: it imports nothing of hiennu but the logging helper, and knows
none of its callers.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from hiennu.log import progress, progress_shown, show_progress

_PRELOAD: list[str] = []


def register_preload(module_name: str) -> None:
    """Have the fork server import ``module_name`` (a module whose functions run in workers) up front."""
    if module_name not in _PRELOAD:
        _PRELOAD.append(module_name)


def preloaded_modules() -> list[str]:
    """The modules registered with :func:`register_preload`, in registration order."""
    return list(_PRELOAD)


#: seconds between a worker's checks that the process that started its pool is still there
PARENT_CHECK_SECONDS = 1.0


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, killed and not yet reaped, does not; one of another user
    does). The one answer for a pool's workers, a fold's lock and the staging folders a killed run left."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:  # no /proc (not Linux): os.kill's answer
        return True


def _watch_parent(pid: int) -> None:
    while process_alive(pid):
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def start_parent_watch(parent_pid: int) -> None:
    """In a worker process: a daemon thread that ends the process (``os._exit``) once ``parent_pid`` no longer runs.
    A parent killed outright (SIGKILL: the OOM killer, a scheduler's hard limit) cannot stop its workers, which would
    otherwise wait for work, or to hand over a batch, forever, holding memory and the command's output pipe open."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="hiennu-parent-watch").start()


def _init_worker(parent_pid: int | None = None, bars: bool = True) -> None:
    """One torch thread per worker, progress bars as the command draws them (``bars``: none under ``-q``; a worker
    is a fresh process, which would draw them whatever the command was told), and a watch on the process that
    started the pool: killed outright (SIGKILL: the OOM killer, a scheduler's hard limit), it cannot stop its pool,
    whose workers (children of the fork server) would wait for jobs forever, holding memory and the command's output
    pipe open."""
    import torch

    torch.set_num_threads(1)
    show_progress(bars)
    if parent_pid is not None:
        start_parent_watch(parent_pid)


def _main_is_importable() -> bool:
    """Workers re-import the main script; a main read from stdin (``python - <<EOF``) cannot be."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preloaded_modules())
    return ctx


def start_workers_early(num_processes: int) -> None:
    """Start the fork server now (it imports the registered modules in the background) when workers will be used."""
    if num_processes > 1:
        from multiprocessing import forkserver

        _context()
        forkserver.ensure_running()


def parallel_map(func: Callable[..., Any], jobs: Sequence[tuple], num_processes: int, desc: str = "") -> list[Any]:
    """``[func(*job) for job in jobs]`` in order; in-process when ``num_processes <= 1``, for one job, or
    when the main script cannot be re-imported by workers.

    ``func`` must be a module-level function (it is sent to the workers by name). An exception in
    a job is raised here, after the remaining jobs are cancelled.
    """
    results: list[Any] = [None] * len(jobs)
    if num_processes <= 1 or len(jobs) <= 1 or not _main_is_importable():
        for i, job in enumerate(progress(jobs, desc=desc)):
            results[i] = func(*job)
        return results
    ctx = _context()
    with ProcessPoolExecutor(max_workers=min(num_processes, len(jobs)), mp_context=ctx,
                             initializer=_init_worker, initargs=(os.getpid(), progress_shown())) as pool:
        futures = {pool.submit(func, *job): i for i, job in enumerate(jobs)}
        try:
            for future in progress(as_completed(futures), total=len(futures), desc=desc):
                results[futures[future]] = future.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results
