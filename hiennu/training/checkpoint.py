"""Checkpoint files: plain ``torch.save`` dicts that load with ``weights_only=True``.

A checkpoint holds ``network_weights`` (the state dict) and only plain values besides: numbers,
strings, lists, dicts and tensors (optimizer and scheduler state, RNG states, the per-epoch
progress). No pickled objects, so a checkpoint from anywhere can be loaded safely.

``checkpoint_latest.pth`` (written after every epoch while training) holds the full state for
``--continue``. ``checkpoint_best.pth`` and ``checkpoint_final.pth`` leave out the optimizer and
scheduler state (:func:`without_training_state`), and ``checkpoint_latest.pth`` is removed once
the final checkpoint is written (:func:`finish_checkpoints`).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiennu.errors import HiennuError
from hiennu.io.atomic import atomic_path

CHECKPOINT_FORMAT = 1
LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"
TRAINING_STATE_KEYS = ("optimizer_state", "scheduler_state")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` atomically: a reader (or a killed run) never sees a half-written file."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(state, tmp)


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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or damaged file raises HiennuError."""
    path = Path(path)
    if not path.is_file():
        raise HiennuError(f"{path}: checkpoint not found; train the fold first (hiennu_train) or check the "
                          f"trainer, configuration and fold names")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for damaged or foreign files
        raise HiennuError(f"{path}: cannot be read as a hiennu checkpoint ({first_line(e)}): it is damaged, "
                          f"truncated or was not written by hiennu. Replace it with a good copy if you have one. "
                          f"The other checkpoints in {path.parent} are untouched; hiennu_train --continue goes "
                          f"on from checkpoint_latest.pth, else from a finished checkpoint_final.pth, and never "
                          f"starts over on top of them") from None
    if not isinstance(state, dict) or "network_weights" not in state:
        raise HiennuError(f"{path}: not a hiennu checkpoint (no 'network_weights' entry)")
    return state


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (torch's unpickling errors run to ten lines of advice)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


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
