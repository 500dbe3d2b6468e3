"""Early stopping: the best value of the metric so far, its epoch, and the EMA of validation Dice.

Checkpoints keep it as ``early_stopping`` (:meth:`EarlyStopping.to_dict`), so ``--continue``
goes on with the same best value, best epoch and EMA (:meth:`EarlyStopping.from_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

EMA_DECAY = 0.9


@dataclass
class EarlyStopping:
    """best_metric: the best value of the early-stopping metric (``val_dice`` or ``ema_val_dice``);
    best_epoch: where it was reached (-1: not yet); ema: ``0.9 · previous + 0.1 · val_dice`` (None
    before the first validation)."""

    best_metric: float = -math.inf
    best_epoch: int = -1
    ema: float | None = None

    def update(self, val_dice: float, epoch: int, metric: str) -> bool:
        """Record ``epoch``'s validation Dice; True when ``metric`` (``val_dice`` or ``ema_val_dice``) improved."""
        self.ema = val_dice if self.ema is None else EMA_DECAY * self.ema + (1 - EMA_DECAY) * val_dice
        value = self.ema if metric == "ema_val_dice" else val_dice
        if value > self.best_metric:
            self.best_metric, self.best_epoch = value, epoch
            return True
        return False

    def patience_spent(self, epoch: int, patience: int) -> bool:
        """True when ``patience`` epochs have passed since the best one."""
        return epoch - self.best_epoch >= patience

    def to_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "ema": self.ema}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EarlyStopping":
        return cls(d["best_metric"], d["best_epoch"], d["ema"])
