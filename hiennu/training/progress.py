"""Per-epoch training record: ``progress.json``, ``progress.png`` and step timing.

:class:`ProgressLog` keeps one row per finished epoch (numbered from 0). Epochs without
validation (``--val-every`` > 1) hold ``None`` in the validation columns. The record travels in
the checkpoint as a plain dict, so a resumed run continues the same curves.

:class:`StepTimer` measures where the wall time of an epoch goes: on CUDA with events (the GPU's
idle gaps between steps are time spent waiting for data), elsewhere with the host clock around the
wait for the next batch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from hiennu.io.atomic import atomic_path, write_json


@dataclass
class ProgressLog:
    """Columns of numbers, one entry per epoch.

    train_loss: mean segmentation loss of the epoch's batches (without the L1 term).
    l1_norm: sum of |w| over the trainable parameters at the end of the epoch.
    val_loss, val_dice: mean over the validation cases on the preprocessed grid (Dice of the 0.5
    threshold, 1 when prediction and reference are both empty). ema_val_dice: exponential moving
    average (0.9 old + 0.1 new) of val_dice. lr: learning rate used during the epoch.
    epoch_seconds: wall time of training and validation. step_seconds: mean time of one
    optimization step. data_wait_fraction: fraction of the training time spent waiting for batches.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    l1_norm: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_dice: list[float | None] = field(default_factory=list)
    ema_val_dice: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    data_wait_fraction: list[float] = field(default_factory=list)

    def append(self, **row: Any) -> None:
        names = {f.name for f in fields(self)}
        if set(row) != names:
            raise ValueError(f"progress row needs exactly {sorted(names)}, got {sorted(row)}")
        for name, value in row.items():
            getattr(self, name).append(value)

    def __len__(self) -> int:
        return len(self.epoch)

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "ProgressLog":
        return cls(**{f.name: list(d.get(f.name, [])) for f in fields(cls)})

    def save_json(self, path: str | os.PathLike) -> None:
        write_json(self.to_dict(), path)

    def plot(self, path: str | os.PathLike, title: str = "") -> None:
        """Write ``progress.png``: losses, validation Dice and learning rate against the epoch."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 9), dpi=100)
        FigureCanvasAgg(fig)
        ax_loss, ax_dice, ax_lr = fig.subplots(3, 1, sharex=True)
        ax_loss.plot(self.epoch, self.train_loss, "b-", label="train loss")
        ax_loss.plot(*_validated(self.epoch, self.val_loss), "r-o", ms=3, label="validation loss")
        ax_loss.set_ylabel("loss")
        ax_loss.legend(loc="upper right")
        ax_dice.plot(*_validated(self.epoch, self.val_dice), "g-o", ms=3, label="validation Dice (grid)")
        ax_dice.plot(*_validated(self.epoch, self.ema_val_dice), "g--", label="EMA validation Dice")
        ax_dice.set_ylabel("Dice")
        ax_dice.set_ylim(0, 1)
        ax_dice.legend(loc="lower right")
        ax_lr.plot(self.epoch, self.lr, "k-")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_yscale("log")
        ax_lr.set_xlabel("epoch")
        if title:
            fig.suptitle(title)
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.06, top=0.94, hspace=0.12)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")


def _validated(epochs: list[int], values: list[float | None]) -> tuple[list[int], list[float]]:
    pairs = [(e, v) for e, v in zip(epochs, values) if v is not None and math.isfinite(v)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


class StepTimer:
    """Time spent computing vs waiting for data over one epoch.

    Call :meth:`data_ready` when a batch has arrived and :meth:`step_done` after the optimizer
    step has been queued; :meth:`summary` returns (mean step seconds, data-wait fraction).

    On CUDA the GPU timeline is measured with events: step i runs from event ``start_i`` to
    ``end_i`` and the gap ``end_i -> start_{i+1}`` is time the GPU had nothing queued because the
    next batch was not ready. Elsewhere the host clock measures the time blocked on the loader.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._starts: list[Any] = []
        self._ends: list[Any] = []
        self._steps = 0
        self._wait = 0.0
        self._compute = 0.0
        self._t = time.perf_counter()

    def data_ready(self) -> None:
        now = time.perf_counter()
        self._wait += now - self._t
        self._t = now
        if self.cuda:
            self._starts.append(_record_event())

    def step_done(self) -> None:
        now = time.perf_counter()
        self._compute += now - self._t
        self._t = now
        self._steps += 1
        if self.cuda:
            self._ends.append(_record_event())

    def summary(self) -> tuple[float, float]:
        """(mean seconds per step, fraction of the epoch's training time spent waiting for data)."""
        if self._steps == 0:
            return math.nan, math.nan
        if self.cuda:
            torch.cuda.synchronize()
            busy = sum(s.elapsed_time(e) for s, e in zip(self._starts, self._ends)) / 1000.0
            span = self._starts[0].elapsed_time(self._ends[-1]) / 1000.0
            return busy / self._steps, max(0.0, span - busy) / span if span > 0 else 0.0
        total = self._wait + self._compute
        return self._compute / self._steps, self._wait / total if total > 0 else 0.0


def _record_event() -> Any:
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event
