"""Checkpoint files: plain ``torch.save`` dicts that load with ``weights_only=True``.

A checkpoint holds ``network_weights`` (the state dict) and only plain values besides: numbers,
strings, lists, dicts and tensors (optimizer and scheduler state, RNG states, the per-epoch
progress). No pickled objects, so a checkpoint from anywhere can be loaded safely.
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


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` atomically: a reader (or a killed run) never sees a half-written file."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(state, tmp)


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
