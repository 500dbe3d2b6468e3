"""Checkpoint files: their names, the one safe loader and the atomic writer.

A checkpoint is a plain ``torch.save`` dict: ``network_weights`` (the state dict) and only plain
values besides (numbers, strings, lists, dicts, tensors). It is only ever read with
``torch.load(..., weights_only=True)``, so a file that would run code when unpickled is refused,
never run. Training (:mod:`hiennu.training.checkpoint`), prediction, export and install all read
checkpoints through :func:`load_checkpoint`.

Names in a fold folder ``fold_K/``: :data:`LATEST` (the full state after every epoch, for
``--continue``), :data:`BEST` (the epoch with the best early-stopping metric on the fold's own
validation cases) and :data:`FINAL` (the state at the end of training). The cross-validation
masks, the loss study and exported models use :data:`FINAL` by default, as nnU-Net does: ``BEST``
is chosen on the very cases it would then be scored on. :func:`checkpoint_file` turns the
``--checkpoint best|final`` choice of the commands into a file name.

torch is imported when a checkpoint is read or written, so the command-line parsers can name
:data:`BEST` as a default without loading it.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from hiennu.errors import HiennuError
from hiennu.io.atomic import atomic_path, read_json

LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"
CHECKPOINT_PATTERN = "checkpoint_*.pth"  # any checkpoint in a fold folder
CHECKPOINT_FORMAT = 1
CHECKPOINT_CHOICES = {"final": FINAL, "best": BEST}  # --checkpoint best|final
DEFAULT_CHECKPOINT_CHOICE = "final"  # what validates, is studied and is exported unless told otherwise


def checkpoint_file(choice: str) -> str:
    """The file name of a checkpoint choice: ``"final"`` or ``"best"`` (any case), or a file name
    ``checkpoint_*.pth`` given as is. Anything else raises :class:`HiennuError` naming the choices."""
    text = str(choice).strip()
    if text.lower() in CHECKPOINT_CHOICES:
        return CHECKPOINT_CHOICES[text.lower()]
    if text.startswith("checkpoint_") and text.endswith(".pth") and "/" not in text and "\\" not in text:
        return text
    raise HiennuError(f"checkpoint {choice!r}: give 'final', 'best' or a file name checkpoint_NAME.pth")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` atomically: a reader (or a killed run) never sees a half-written file."""
    import torch

    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(state, tmp)


def load_checkpoint(source: str | os.PathLike | io.BytesIO, name: str | None = None,
                    map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint (a file, or the bytes of a zip member) with ``weights_only=True``.

    name: how errors call the source (default: the path). A missing file, one that cannot be
    loaded safely (damaged, truncated, foreign, or holding pickled objects: a zip member is then
    *refused* as untrusted input) and one without a ``network_weights`` dictionary raise
    :class:`HiennuError` naming it.
    """
    import torch

    is_file = not isinstance(source, io.BytesIO)
    name = name or str(source)
    if is_file and not Path(source).is_file():
        raise HiennuError(f"{name}: checkpoint not found; train the fold first (hiennu_train) or check the "
                          f"trainer, configuration and fold names")
    try:
        state = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        if not is_file:  # a member of a model zip: untrusted input
            raise HiennuError(f"{name}: refused: cannot be loaded as plain weights (torch.load weights_only=True): "
                              f"{first_line(e, with_type=False)}. Checkpoints must hold only tensors and plain values; "
                              f"if you trust the file's source, re-export it with hiennu_export_model") from None
        raise HiennuError(f"{name}: cannot be read as a hiennu checkpoint ({first_line(e)}): it is damaged, "
                          f"truncated or was not written by hiennu. Replace it with a good copy if you have one. "
                          f"The other checkpoints in {Path(source).parent} are untouched; hiennu_train --continue "
                          f"goes on from {LATEST}, else from a finished {FINAL}, and never starts over on top of "
                          f"them") from None
    if not isinstance(state, dict) or not isinstance(state.get("network_weights"), dict):
        raise HiennuError(f"{name}: not a hiennu checkpoint (no 'network_weights' dictionary)")
    return state


def first_line(error: BaseException, with_type: bool = True) -> str:
    """``Type: first line of the message`` (torch's unpickling errors run to ten lines of advice)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0]}" if with_type else text.splitlines()[0]


def checkpoint_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a checkpoint file: which weights a fold's validation masks came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stale_validation_problem(fold_dir: str | os.PathLike, summary_path: str | os.PathLike,
                             inference_window: str | None = None) -> str | None:
    """Why a fold's validation masks are not those of its checkpoint and plans now, or None.

    The validation summary records the checkpoint's SHA-256 (``checkpoint_sha256``); a fold trained again after it
    was validated (``--no-final-validation``, or a retraining stopped before its validation) keeps the earlier
    masks beside new weights, which a choice by cross-validation would then score in their place. Summaries
    written before the digest was recorded cannot tell, and pass. inference_window: the plans' sliding window
    now (``plans.Configuration.inference_window``; None: not compared); the summary records the one its masks
    were predicted with (``"inference_window"``, ``"patch"`` when it predates the field), and masks of another
    window are not what the model predicts now.
    """
    summary = read_json(summary_path)
    made_with = summary.get("inference_window", "patch") if isinstance(summary, dict) else None
    if inference_window is not None and made_with != inference_window:
        return (f"its validation masks were predicted with inference_window {made_with!r}, the plans now say "
                f"{inference_window!r}")
    recorded = summary.get("checkpoint_sha256") if isinstance(summary, dict) else None
    if not isinstance(recorded, str):
        return None
    name = summary.get("checkpoint", BEST)
    checkpoint = Path(fold_dir) / str(name)
    if not checkpoint.is_file():
        return f"its validation was made with {checkpoint}, which is gone"
    if checkpoint_digest(checkpoint) != recorded:
        return f"its validation masks were made by an earlier {name} (the fold was trained again after it was validated)"
    return None
