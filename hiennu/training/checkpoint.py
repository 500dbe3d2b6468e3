"""What training keeps in its checkpoints beyond the weights, and the random states.

The files, their names and the one loader are :mod:`hiennu.io.checkpoint`. Here:
``checkpoint_latest.pth`` (written after every epoch while training) holds the full state for
``--continue``; ``checkpoint_best.pth`` and ``checkpoint_final.pth`` leave out the optimizer and
scheduler state (:func:`without_training_state`), and ``checkpoint_latest.pth`` is removed once
the final checkpoint is written (:func:`finish_checkpoints`). The random states of torch, numpy
and python are captured and restored as plain values (:func:`capture_rng_state`).
:func:`resume_source` chooses the checkpoint ``--continue`` goes on from.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiennu.errors import HiennuError
from hiennu.io.checkpoint import BEST, FINAL, LATEST, save_checkpoint
from hiennu.log import get_logger

log = get_logger(__name__)

TRAINING_STATE_KEYS = ("optimizer_state", "scheduler_state", "training_weights", "weight_average_count")


def without_training_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the optimizer and scheduler state, which only resuming an unfinished run needs.

    Best and final checkpoints are written this way (about a third of the size with AdamW): they
    serve prediction, export and ``--continue`` of a finished run, which has nothing left to optimize.
    """
    return {k: v for k, v in state.items() if k not in TRAINING_STATE_KEYS}


def finish_checkpoints(state: dict[str, Any], fold_dir: str | os.PathLike) -> None:
    """Write ``checkpoint_final.pth`` (without training state), then remove ``checkpoint_latest.pth``.

    Nothing is stored twice once a run has finished, as in nnU-Net; a later ``--continue`` reads
    the final checkpoint and finds the run finished.
    """
    fold_dir = Path(fold_dir)
    save_checkpoint(without_training_state(state), fold_dir / FINAL)
    (fold_dir / LATEST).unlink(missing_ok=True)


def refuse_before_start(fold_dir: Path, resume: bool, validation_only: bool) -> None:
    """What the fold's files alone refuse, checked before a lock, a log line or a training process exists, so a
    refused run leaves nothing behind: ``--val`` of a fold whose training has not finished, and a new training of
    a fold that holds one (:func:`resume_source`)."""
    if validation_only:
        problem = unfinished_validation_problem(Path(fold_dir))
        if problem:
            raise HiennuError(problem)
    elif not resume:
        resume_source(Path(fold_dir), False)


def unfinished_fix(fold_dir: Path) -> str:
    """What to do with a fold that holds a training: resume it with --continue, unless it holds only
    ``checkpoint_best.pth``, from which --continue refuses to start over."""
    if (fold_dir / BEST).is_file() and not (fold_dir / LATEST).is_file() and not (fold_dir / FINAL).is_file():
        return (f"it holds only {BEST}, which cannot be continued: put back {LATEST} and resume with --continue, or "
                f"move the folder away to train again from scratch")
    return "resume it with --continue, or move the folder away to train again from scratch"


def unfinished_validation_problem(fold_dir: Path) -> str | None:
    """Why ``--val`` cannot validate ``fold_dir`` (no ``checkpoint_final.pth``: its training has not finished), with
    what works for the checkpoints it holds; None when it can."""
    if (fold_dir / FINAL).is_file():
        return None
    started = any((fold_dir / name).is_file() for name in (LATEST, BEST))
    return (f"--val: {fold_dir} has no {FINAL}, so its training has not finished; "
            + (unfinished_fix(fold_dir) if started else "train it first (hiennu_train without --val)"))


def resume_source(fold_dir: Path, resume: bool) -> Path | None:
    """The checkpoint of ``fold_dir`` to continue from (None: a new training), or refuse to touch finished work.

    Without ``--continue`` (``resume``) a fold holding any checkpoint is refused. With it: ``checkpoint_latest``
    when present; else ``checkpoint_final`` (a finished training: nothing is trained or
    overwritten, validation runs if missing); else, when ``checkpoint_best`` exists, refuse,
    since starting over would overwrite it; else a new training.
    """
    latest, final, best = (fold_dir / name for name in (LATEST, FINAL, BEST))
    present = [p.name for p in (latest, final, best) if p.is_file()]
    if not resume:
        if present:
            raise HiennuError(f"{fold_dir} already holds a training ({', '.join(present)}); {unfinished_fix(fold_dir)}")
        return None
    if latest.is_file():
        return latest
    if final.is_file():
        log.warning("--continue: no %s in %s; continuing from %s (a finished training: nothing is retrained "
                    "or overwritten)", LATEST, fold_dir, FINAL)
        return final
    if best.is_file():
        raise HiennuError(f"{fold_dir} holds {BEST} but no {LATEST} or {FINAL} to continue "
                          f"from; continuing would start over and overwrite it. Put back {LATEST}, or move "
                          f"the folder away to train again from scratch")
    log.warning("--continue: no checkpoint in %s; starting a new training", fold_dir)
    return None


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator training touches (torch CPU/CUDA, numpy, python)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` recorded."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
