"""Running one function over many cases in worker processes, with a progress bar.

Workers come from a ``forkserver``: the parent may already have run multi-threaded torch/OpenMP
code, after which a plain ``fork`` can hang, while ``spawn`` would re-import torch in every worker
of every pool. The fork server imports the case workers' modules once and forks clean workers
from itself. A module whose functions run in workers says so when it is imported, with
``register_preload(__name__)``; the fork server preloads every module registered before it starts
(:func:`start_workers_early`, or the first pool). Each worker limits torch to one thread so
``num_processes`` workers use ``num_processes`` cores.

A utility of the ground floor: it imports nothing of hiennu but the logging helper, and knows
none of its callers.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from hiennu.log import progress

_PRELOAD: list[str] = []


def register_preload(module_name: str) -> None:
    """Have the fork server import ``module_name`` (a module whose functions run in workers) up front."""
    if module_name not in _PRELOAD:
        _PRELOAD.append(module_name)


def preloaded_modules() -> list[str]:
    """The modules registered with :func:`register_preload`, in registration order."""
    return list(_PRELOAD)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


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
                             initializer=_init_worker) as pool:
        futures = {pool.submit(func, *job): i for i, job in enumerate(jobs)}
        try:
            for future in progress(as_completed(futures), total=len(futures), desc=desc):
                results[futures[future]] = future.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results
