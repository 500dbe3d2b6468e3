"""The training loop: one base :class:`Trainer` that owns everything except the choice of loss.

A trainer trains one fold of one configuration of a preprocessed dataset, as the plans say
(overridable by :class:`TrainingOptions`), and writes
``$hiennu_results/DatasetNNN_Name/TRAINER__hiennuPlans__CONFIG/fold_K/``:

- ``checkpoint_latest.pth`` after every epoch (atomic), ``checkpoint_best.pth`` whenever the
  early-stopping metric improves, ``checkpoint_final.pth`` with the state at the end; best and
  final hold no optimizer state, and latest is removed once final is written;
- ``training_log.txt``, ``progress.json`` and ``progress.png`` (per-epoch numbers), ``debug.json``;
- ``validation/``: the best checkpoint's predictions of the fold's validation cases in their
  native geometry and their challenge scores (``summary.json``).

Each epoch (numbered from 0): ``iterations_per_epoch`` optimization steps, each on a global batch
of ``batch_size`` samples: AdamW on loss + L1 penalty (``l1_lambda * sum |w|``, applied as its
gradient ``l1_lambda * sign(w)``), gradient-norm clipping, then the learning rate decays by
``lr_decay_gamma``. Validation (every ``val_every`` epochs and at the last) runs each validation
case whole through the network on the preprocessed grid. Training stops after ``max_epochs`` or
when the early-stopping metric has not improved for ``patience`` epochs.

Subclasses override :meth:`Trainer.build_loss` (see ``hiennu.training.trainers``); the data,
network and optimizer come from :meth:`build_batches`, :meth:`build_network` and
:meth:`build_optimizer`, which a user's trainer may also override.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hiennu.device import autocast, configure_device, memory_format, select_device
from hiennu.errors import HiennuError
from hiennu.evaluation.evaluate import evaluate_folders
from hiennu.inference.predictor import Predictor
from hiennu.inference.sliding_window import sliding_window_predict
from hiennu.io.atomic import read_json, read_json_file, write_json
from hiennu.io.dataset_json import load_dataset_json
from hiennu.io.image import read_image, write_image
from hiennu.log import attach_file_handler, get_logger, progress
from hiennu.paths import (model_dir_name, plans_file_name, preprocessed_data_name, preprocessed_root,
                          raw_root, resolve_dataset, results_root)
from hiennu.networks.unet import build_network
from hiennu.plans import (PLANS_NAME, PREDICTOR_IGNORED_FIELDS, Configuration, Plans,
                          TrainingPlan, configuration_differences, load_plans, save_plans)
from hiennu.provenance import provenance
from hiennu.training import checkpoint as ckpt
from hiennu.training.data import TrainingBatches, load_preprocessed_case
from hiennu.training.fold_lock import FoldLock
from hiennu.training.distributed import (DistContext, all_gather_objects, all_reduce_sum, barrier,
                                         convert_batchnorm)
from hiennu.training.progress import ProgressLog, StepTimer

log = get_logger(__name__)

NUM_FOLDS = 5
EMA_DECAY = 0.9
PLOT_EVERY_SECONDS = 60.0  # progress.png is redrawn at most this often (drawing takes ~1 s) and at the end


class TrainingDivergedError(HiennuError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainingOptions:
    """What the user chose on top of the plans; ``None`` takes the plans' value.

    fold: 0-4, or ``"all"`` (train on every case; validation then runs on the training cases and
    the native-geometry validation is skipped). device: ``cpu``, ``cuda``, ``mps`` or None (best
    available). num_gpus: processes for data-parallel training (``--num-gpus``; on CPU, gloo
    processes). val_every: validate every this many epochs (and always at the last epoch).
    plans_name: the plans identifier (``-p``): plans from ``NAME.json`` (``plans.json`` for the
    default), model folder ``TRAINER__NAME__CONFIG``.
    """

    dataset: str
    configuration: str | None = None
    fold: int | str = 0
    epochs: int | None = None
    patience: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    iterations_per_epoch: int | None = None
    num_workers: int | None = None
    device: str | None = None
    num_gpus: int = 1
    compile: bool = False
    resume: bool = False
    seed: int = 12345
    val_every: int = 1
    final_validation: bool = True
    plans_name: str = PLANS_NAME

    def __post_init__(self) -> None:
        self.fold = parse_fold(self.fold)
        for name in ("epochs", "patience", "batch_size", "iterations_per_epoch"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise HiennuError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise HiennuError(f"--lr must be positive, got {self.learning_rate}")
        if self.num_gpus < 1 or self.val_every < 1:
            raise HiennuError("--num-gpus and --val-every must be at least 1")


def parse_fold(fold: int | str) -> int | str:
    """``0``-``4`` (int or digit string) or ``"all"``; anything else raises HiennuError."""
    if isinstance(fold, str) and fold.strip().lower() == "all":
        return "all"
    try:
        value = int(fold)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value < NUM_FOLDS:
        raise HiennuError(f"fold must be 0-{NUM_FOLDS - 1} or 'all', got {fold!r}")
    return value


class Trainer(abc.ABC):
    """Trains one fold; subclasses choose the loss by overriding :meth:`build_loss`."""

    def __init__(self, options: TrainingOptions, dist_ctx: DistContext | None = None):
        self.options = options
        self.dist = dist_ctx or DistContext()
        self.trainer_name = type(self).__name__
        self.dataset_name = resolve_dataset(options.dataset)
        self.preprocessed_dir = preprocessed_root() / self.dataset_name
        self.plans: Plans = load_plans(self.preprocessed_dir / plans_file_name(options.plans_name))
        if self.plans.plans_name != options.plans_name:  # a copied plans file: its file name is its identity
            self.plans = dataclasses.replace(self.plans, plans_name=options.plans_name)
        self.config: Configuration = self.plans.configuration(options.configuration)
        self.training: TrainingPlan = self._effective_training_plan()
        self.case_dir = self.preprocessed_dir / preprocessed_data_name(options.plans_name, self.config.name)
        self.train_cases, self.val_cases = self._split(options.fold)
        self.model_dir = (results_root() / self.dataset_name /
                          model_dir_name(self.trainer_name, self.plans.plans_name, self.config.name))
        self.fold_dir = self.model_dir / f"fold_{options.fold}"
        self.device = select_device(options.device, self.dist.local_rank)
        self.iterations_per_epoch = self.training.iterations_per_epoch or math.ceil(
            len(self.train_cases) / self.training.batch_size)
        if self.training.batch_size % self.dist.world_size:
            raise HiennuError(f"batch size {self.training.batch_size} cannot be split evenly over "
                              f"{self.dist.world_size} processes; choose --batch-size as a multiple of --num-gpus")

    # ----------------------------------------------------------------- parts a subclass may change
    @abc.abstractmethod
    def build_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss: ``loss(logits (B,1,z,y,x) float32, target (B,1,z,y,x) {0,1}) -> scalar``."""

    def build_network(self) -> nn.Module:
        return build_network(self.config.network)

    def build_optimizer(self, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW with the plans' learning rate and weight decay; per epoch the rate decays exponentially
        (``lr_decay_gamma``, the paper) or by nnU-Net's poly rule ``(1 - epoch / max_epochs) ** 0.9``."""
        if self.training.optimizer.lower() != "adamw":
            raise HiennuError(f"plans: optimizer {self.training.optimizer!r} is not supported; use 'AdamW'")
        optimizer = torch.optim.AdamW(params, lr=self.training.learning_rate,
                                      weight_decay=self.training.weight_decay)
        if self.training.lr_schedule == "poly":
            total = self.training.max_epochs
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: max(0.0, 1 - e / total) ** 0.9)
        elif self.training.lr_schedule == "exponential":
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.training.lr_decay_gamma)
        else:
            raise HiennuError(f"plans: lr_schedule {self.training.lr_schedule!r} is not one of 'exponential', 'poly'")
        return optimizer, scheduler

    def build_batches(self) -> TrainingBatches:
        """The training loader: this rank's share of each global batch, on the device."""
        return TrainingBatches(self.case_dir, self.train_cases, self.config,
                               batch_size=self.training.batch_size // self.dist.world_size, seed=self.options.seed,
                               num_workers=self.training.num_workers, device=self.device, augment=True,
                               rank=self.dist.rank, world_size=self.dist.world_size)

    def load_validation_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(data (C,z,y,x) float32, seg (1,z,y,x)) of a case on the preprocessed grid."""
        data, seg, _ = load_preprocessed_case(self.case_dir, case_id)
        return data, seg

    # ----------------------------------------------------------------------------- the whole run
    def run(self) -> Path:
        """Train (or resume) the fold, then validate the best checkpoint; returns the fold folder.

        The main process holds the fold's lock (:class:`~hiennu.training.fold_lock.FoldLock`) for
        the whole run, so a second run of the same fold refuses instead of interleaving with it.
        """
        lock = FoldLock(self.fold_dir) if self.dist.is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._run_locked()
        finally:
            if lock is not None:
                lock.release()

    def _run_locked(self) -> Path:
        handler = self._start_log_file()
        try:
            self._setup()
            trained_now = not self.finished
            if trained_now:
                self._train_epochs()
            if self.dist.is_main and not (self.fold_dir / ckpt.FINAL).is_file():
                ckpt.save_checkpoint(self._state(epoch=self.progress.epoch[-1] if len(self.progress) else -1),
                                     self.fold_dir / ckpt.FINAL)
            if self.dist.is_main and trained_now:
                self._publish_model_files()
            barrier()
            if self.dist.is_main:
                if not trained_now and (self.fold_dir / "validation" / "summary.json").is_file():
                    log.info("%s is finished and validated; nothing to do", self.fold_dir)
                else:
                    self._final_validation()
            return self.fold_dir
        finally:
            if handler is not None:
                logging.getLogger("hiennu").removeHandler(handler)
                handler.close()

    def _setup(self) -> None:
        ckpt.seed_everything(self.options.seed + self.dist.rank)
        configure_device(self.device)
        network = self.build_network()
        if self.dist.enabled:
            network = convert_batchnorm(network, self.device.type)
        self.network = network.to(self.device, memory_format=memory_format(self.device))
        self.loss = self.build_loss()
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = self.build_optimizer(self.params)
        self.progress = ProgressLog()
        self.best_metric, self.best_epoch, self.ema = -math.inf, -1, None
        self.start_epoch, self.finished = 0, False
        self._last_plot = time.perf_counter()
        restored = self._resume_source()
        if restored is not None:
            self._restore(ckpt.load_checkpoint(restored, map_location=self.device), restored)
        if self.dist.is_main:
            self._write_model_files(new_training=restored is None)
        self.model: nn.Module = self.network
        if self.dist.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                static_graph=True)
        if self.options.compile:
            self.model = torch.compile(self.model)

    def _train_epochs(self) -> None:
        batches = self.build_batches()
        try:
            for epoch in range(self.start_epoch, self.training.max_epochs):
                if self._run_epoch(batches, epoch):
                    if epoch + 1 < self.training.max_epochs:
                        log.info("early stopping: no improvement of %s for %d epochs (best %.4f at epoch %d)",
                                 self.training.early_stopping_metric, self.training.patience, self.best_metric,
                                 self.best_epoch)
                    break
        finally:
            batches.close()
        self.finished = True
        log.info("training finished; best %s %.4f at epoch %d", self.training.early_stopping_metric,
                 self.best_metric, self.best_epoch)
        rng = all_gather_objects(ckpt.capture_rng_state())
        if self.dist.is_main:
            state = self._state(epoch=self.progress.epoch[-1] if len(self.progress) else -1, rng=rng)
            ckpt.finish_checkpoints(state, self.fold_dir)
            if len(self.progress):
                self._plot()

    def _run_epoch(self, batches: TrainingBatches, epoch: int) -> bool:
        """One epoch of training (+ validation when due); returns True when training should stop."""
        t0 = time.perf_counter()
        self.network.train()
        lr = self.optimizer.param_groups[0]["lr"]
        timer = StepTimer(self.device)
        losses = torch.zeros(self.iterations_per_epoch, device=self.device)
        check_each_step = self.device.type == "cpu" and not self.dist.enabled
        bar = progress(total=self.iterations_per_epoch, desc=f"epoch {epoch}", disable=None if self.dist.is_main else True)
        n = 0
        for i, (data, target) in enumerate(batches.epoch(epoch, self.iterations_per_epoch)):
            timer.data_ready()
            loss = self._train_step(data, target)
            losses[i] = loss.detach()
            timer.step_done()
            bar.update(1)
            n = i + 1
            if check_each_step and not math.isfinite(float(loss.detach())):
                break
        bar.close()
        self._check_finite(losses[:n], epoch)
        if n != self.iterations_per_epoch:
            raise HiennuError(f"the training loader gave {n} batches in epoch {epoch}, expected "
                              f"{self.iterations_per_epoch}")
        self.scheduler.step()
        step_s, wait = timer.summary()
        train_loss = float(all_reduce_sum(losses.sum().reshape(1))[0]) / (n * self.dist.world_size)

        validate = (epoch + 1) % self.options.val_every == 0 or epoch + 1 == self.training.max_epochs
        val_loss = val_dice = ema = None
        improved = False
        if validate:
            val_loss, val_dice = self.validate()
            self.ema = val_dice if self.ema is None else EMA_DECAY * self.ema + (1 - EMA_DECAY) * val_dice
            ema = self.ema
            metric = ema if self.training.early_stopping_metric == "ema_val_dice" else val_dice
            if metric > self.best_metric:
                self.best_metric, self.best_epoch, improved = metric, epoch, True
        with torch.no_grad():
            l1 = float(sum(p.detach().abs().sum() for p in self.params))
        self.progress.append(epoch=epoch, train_loss=train_loss, l1_norm=l1, val_loss=val_loss,
                             val_dice=val_dice, ema_val_dice=ema, lr=lr,
                             epoch_seconds=time.perf_counter() - t0, step_seconds=step_s,
                             data_wait_fraction=wait)
        log.info("epoch %d: train loss %.4f%s, lr %.2e, %.1f s (step %.3f s, data wait %.0f%%)%s",
                 epoch, train_loss,
                 f", val loss {val_loss:.4f}, val Dice {val_dice:.4f} (EMA {ema:.4f})" if validate else "",
                 lr, self.progress.epoch_seconds[-1], step_s, 100 * wait,
                 "  new best" if improved else "")
        stop = validate and (epoch - self.best_epoch >= self.training.patience
                             or epoch + 1 == self.training.max_epochs)
        rng = all_gather_objects(ckpt.capture_rng_state())
        if self.dist.is_main:
            self.finished = stop
            state = self._state(epoch=epoch, rng=rng)
            self.finished = False
            if improved:
                ckpt.save_checkpoint(ckpt.without_training_state(state), self.fold_dir / ckpt.BEST)
            ckpt.save_checkpoint(state, self.fold_dir / ckpt.LATEST)
            self.progress.save_json(self.fold_dir / "progress.json")
            if time.perf_counter() - self._last_plot >= PLOT_EVERY_SECONDS:
                self._plot()
        return stop

    def _plot(self) -> None:
        self.progress.plot(self.fold_dir / "progress.png",
                           title=f"{self.trainer_name} {self.config.name} fold {self.options.fold}")
        self._last_plot = time.perf_counter()

    def _train_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's batch; returns the segmentation loss (no L1 term)."""
        data = data.to(self.device, non_blocking=True).contiguous(memory_format=memory_format(self.device))
        target = target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device):
            output = self.model(data)
        loss = self.compute_loss(output, target)
        loss.backward()
        if self.training.l1_lambda:
            # d/dw (lambda * |w|) = lambda * sign(w): the L1 penalty, added after the DDP all-reduce
            used = [p for p in self.params if p.grad is not None]
            torch._foreach_add_([p.grad for p in used], torch._foreach_sign(used), alpha=self.training.l1_lambda)
        if self.training.grad_clip_norm:
            nn.utils.clip_grad_norm_(self.params, self.training.grad_clip_norm)
        self.optimizer.step()
        return loss

    def compute_loss(self, output: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The loss of the full-resolution logits, or with deep supervision the weighted sum over
        scales: target down-sampled (nearest) to each output, weights 1, 1/2, 1/4 ... normalized to 1."""
        if not isinstance(output, (list, tuple)):
            return self.loss(output.float(), target)
        weights = [0.5 ** i for i in range(len(output))]
        total = sum(weights)
        loss = 0.0
        for w, out in zip(weights, output):
            t = target if out.shape[2:] == target.shape[2:] else F.interpolate(target, size=out.shape[2:], mode="nearest")
            loss = loss + (w / total) * self.loss(out.float(), t)
        return loss

    def _check_finite(self, losses: torch.Tensor, epoch: int) -> None:
        bad = (~torch.isfinite(losses)).float()
        if self.dist.enabled:
            bad = all_reduce_sum(bad)
        bad_idx = torch.nonzero(bad).flatten()
        if len(bad_idx):
            i = int(bad_idx[0])
            last = epoch - 1
            kept = (f"the last good checkpoint {self.fold_dir / ckpt.LATEST} (end of epoch {last}) is kept"
                    if last >= 0 else "no checkpoint was written yet")
            raise TrainingDivergedError(
                f"{self.fold_dir}: the training loss became {float(losses[i]) if bad[i] else 'non-finite'} "
                f"at epoch {epoch}, batch {i} (both counted from 0); training stopped and {kept}. "
                f"Lower the learning rate (--lr), check the preprocessed data of the training cases for "
                f"NaN values, or resume with --continue to retry from the checkpoint.")

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """(mean loss, mean Dice) over the validation cases, each run whole on the grid.

        Dice of the 0.5-probability threshold; 1 when prediction and reference are both empty.
        Under DDP the cases are shared out by rank and the sums all-reduced.
        """
        self.network.eval()
        loss_sum, dice_sum, count = 0.0, 0.0, 0
        for case_id in self.val_cases[self.dist.rank::self.dist.world_size]:
            data, seg = self.load_validation_case(case_id)
            x = torch.from_numpy(np.array(data, dtype=np.float32))[None].to(self.device)
            y = torch.from_numpy(np.array(seg, dtype=np.float32))[None].to(self.device)
            logits = self._validation_logits(x)
            pred = logits > 0
            ref = y > 0.5
            denom = int(pred.sum()) + int(ref.sum())
            dice = 1.0 if denom == 0 else 2.0 * int((pred & ref).sum()) / denom
            loss_sum, dice_sum, count = loss_sum + float(self.loss(logits, y)), dice_sum + dice, count + 1
        # on the device: NCCL reduces only GPU tensors
        sums = torch.tensor([loss_sum, dice_sum, count], device=self.device,
                            dtype=torch.float32 if self.device.type == "mps" else torch.float64)
        sums = all_reduce_sum(sums).cpu()
        self.network.train()
        if sums[2] == 0:
            raise HiennuError(f"fold {self.options.fold} of {self.dataset_name} has no validation cases; "
                              f"check {self.preprocessed_dir / 'splits_final.json'}")
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])

    def _validation_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(1, 1, z, y, x)`` float32 of a whole preprocessed case ``(1, C, z, y, x)``: one pass on a
        whole-volume grid, or a Gaussian-weighted sliding window of the patch size (no mirroring)."""
        fmt = memory_format(self.device)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with autocast(self.device):
                out = self.network(batch.contiguous(memory_format=fmt))
            return out.float()[:, 0]

        if not self.config.is_patch_based:
            return forward(x)[:, None]
        return sliding_window_predict(forward, x[0], self.config.patch_size_zyx)[None, None]

    # ----------------------------------------------------------------------- state and files
    def _state(self, epoch: int, rng: list[dict] | None = None) -> dict[str, Any]:
        return {
            "trainer_name": self.trainer_name,
            "plans_name": self.plans.plans_name,
            "configuration_name": self.config.name,
            "configuration": dataclasses.asdict(self.config),
            "dataset_name": self.dataset_name,
            "fold": self.options.fold,
            "epoch": epoch,
            "finished": self.finished,
            "network_weights": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "early_stopping": {"best_metric": self.best_metric, "best_epoch": self.best_epoch,
                               "ema": self.ema},
            "progress": self.progress.to_dict(),
            "rng_states": rng if rng is not None else [ckpt.capture_rng_state()],
            "seed": self.options.seed,
            "world_size": self.dist.world_size,
            "options": dataclasses.asdict(self.options),
        }

    def _resume_source(self) -> Path | None:
        """The checkpoint to continue from (None: a new training), or refuse to touch finished work.

        Without ``--continue`` a fold holding any checkpoint is refused. With it: ``checkpoint_latest``
        when present; else ``checkpoint_final`` (a finished training: nothing is trained or
        overwritten, validation runs if missing); else, when ``checkpoint_best`` exists, refuse,
        since starting over would overwrite it; else a new training.
        """
        latest, final, best = (self.fold_dir / name for name in (ckpt.LATEST, ckpt.FINAL, ckpt.BEST))
        present = [p.name for p in (latest, final, best) if p.is_file()]
        if not self.options.resume:
            if present:
                raise HiennuError(f"{self.fold_dir} already holds a training ({', '.join(present)}); resume it with "
                                  f"--continue, or move the folder away to train again from scratch")
            return None
        if latest.is_file():
            return latest
        if final.is_file():
            log.warning("--continue: no %s in %s; continuing from %s (a finished training: nothing is retrained "
                        "or overwritten)", ckpt.LATEST, self.fold_dir, ckpt.FINAL)
            return final
        if best.is_file():
            raise HiennuError(f"{self.fold_dir} holds {ckpt.BEST} but no {ckpt.LATEST} or {ckpt.FINAL} to continue "
                              f"from; continuing would start over and overwrite it. Put back {ckpt.LATEST}, or move "
                              f"the folder away to train again from scratch")
        log.warning("--continue: no checkpoint in %s; starting a new training", self.fold_dir)
        return None

    def _restore(self, state: dict[str, Any], source: Path) -> None:
        for key, mine in (("trainer_name", self.trainer_name), ("configuration_name", self.config.name),
                          ("fold", self.options.fold)):
            if state.get(key) != mine:
                raise HiennuError(f"{source}: written for {key} {state.get(key)!r}, "
                                  f"not {mine!r}; it cannot be continued by this run")
        if "configuration" in state:
            diffs = configuration_differences(state["configuration"], self.config)
            if diffs:
                raise HiennuError(
                    f"{source}: this fold was started with other plans than "
                    f"{self.preprocessed_dir / plans_file_name(self.options.plans_name)} "
                    f"now holds ({'; '.join(diffs)}); continuing would mix them. Put back the plans it was "
                    f"started with ({self.fold_dir / 'plans.json'}) and re-preprocess with --keep-plans, or move "
                    f"the fold folder away to train it afresh with the new plans")
        if source.name == ckpt.FINAL and not state.get("finished", False):
            raise HiennuError(f"{source}: records an unfinished training and there is no {ckpt.LATEST}; move the "
                              f"fold folder away to train it again")
        if not state.get("finished", False) and "optimizer_state" not in state:
            raise HiennuError(f"{source}: holds no optimizer state, so the run cannot be continued from it")
        self.network.load_state_dict(state["network_weights"])
        if "optimizer_state" in state:  # finished runs keep none (checkpoint.without_training_state)
            self.optimizer.load_state_dict(state["optimizer_state"])
            self.scheduler.load_state_dict(state["scheduler_state"])
        es = state["early_stopping"]
        self.best_metric, self.best_epoch, self.ema = es["best_metric"], es["best_epoch"], es["ema"]
        self.progress = ProgressLog.from_dict(state["progress"])
        self.start_epoch = state["epoch"] + 1
        self.finished = bool(state.get("finished", False))
        rng = state["rng_states"]
        if len(rng) == self.dist.world_size:
            ckpt.restore_rng_state(rng[self.dist.rank])
        else:
            log.warning("checkpoint was written by %d process(es), this run has %d: random states are "
                        "re-seeded, so the run continues correctly but not bit-identically",
                        len(rng), self.dist.world_size)
            ckpt.seed_everything(self.options.seed + self.dist.rank + 1000 * self.start_epoch)
        if self.dist.is_main:
            log.info("continuing %s from the end of epoch %d%s", self.fold_dir, state["epoch"],
                     " (already finished)" if self.finished else "")

    def _write_model_files(self, new_training: bool = True) -> None:
        """Record the fold's plans and run details when it starts.

        ``fold_K/plans.json``: the plans this fold is trained with (written for a new training, never
        replaced while resuming). The model folder's shared ``plans.json`` and ``dataset.json`` are
        written here only when absent; otherwise only once this fold has finished training
        (:meth:`_publish_model_files`), so a start that fails never changes what other folds predict with.
        """
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        fold_plans = self.fold_dir / "plans.json"
        if new_training or not fold_plans.is_file():
            save_plans(self.plans, fold_plans)
        if not (self.model_dir / "plans.json").is_file():
            self._publish_model_files()
        if not new_training and self.finished and (self.fold_dir / "debug.json").is_file():
            return  # a finished training: its record stays as it was
        write_json({
            "trainer": self.trainer_name,
            "trainer_module": type(self).__module__,
            "dataset": self.dataset_name,
            "configuration": dataclasses.asdict(self.config),
            "effective_training_plan": dataclasses.asdict(self.training),
            "options": dataclasses.asdict(self.options),
            "fold": self.options.fold,
            "train_cases": self.train_cases,
            "val_cases": self.val_cases,
            "seed": self.options.seed,
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor(),
            "world_size": self.dist.world_size,
            **provenance(self.options, self.options.seed),
            "cuda": {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
            "hostname": platform.node(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, self.fold_dir / "debug.json")

    def _publish_model_files(self) -> None:
        """Write the model folder's ``plans.json`` and ``dataset.json`` from this fold's plans.

        Other folds whose ``fold_K/plans.json`` now differs are named in a warning: the predictor
        refuses them (their checkpoints record the configuration they were trained with).
        """
        shared = self.model_dir / "plans.json"
        try:
            changed = shared.is_file() and load_plans(shared) != self.plans
        except HiennuError:  # an edited, invalid shared file: replaced by this fold's valid plans
            changed = True
        save_plans(self.plans, shared)
        write_json(read_json(self.preprocessed_dir / "dataset.json"), self.model_dir / "dataset.json")
        if not changed:
            return
        stale = []
        for other in sorted(self.model_dir.glob("fold_*/plans.json")):
            if other.parent == self.fold_dir or not other.parent.name[len("fold_"):].isalnum():
                continue  # this fold, or a folder moved aside (fold_K.replaced-<timestamp>)
            try:
                other_config = load_plans(other).configuration(self.config.name)
            except HiennuError:
                continue
            if configuration_differences(dataclasses.asdict(other_config), self.config,
                                         ignore=PREDICTOR_IGNORED_FIELDS):
                stale.append(other.parent.name)
        log.warning("%s now holds the plans of %s%s", shared, self.fold_dir.name,
                    f"; {', '.join(stale)} were trained with other plans and will be refused by the predictor "
                    f"until retrained" if stale else "")

    def _start_log_file(self) -> logging.Handler | None:
        if not self.dist.is_main:
            return None
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        handler = attach_file_handler(self.fold_dir / "training_log.txt")
        log.info("training %s on %s, configuration %s, fold %s: %d training / %d validation cases, "
                 "device %s, %d process(es), seed %d", self.trainer_name, self.dataset_name, self.config.name,
                 self.options.fold, len(self.train_cases), len(self.val_cases), self.device,
                 self.dist.world_size, self.options.seed)
        return handler

    def _effective_training_plan(self) -> TrainingPlan:
        o = self.options
        overrides = {"max_epochs": o.epochs, "patience": o.patience, "batch_size": o.batch_size,
                     "learning_rate": o.learning_rate, "iterations_per_epoch": o.iterations_per_epoch,
                     "num_workers": o.num_workers}
        plan = dataclasses.replace(self.config.training, **{k: v for k, v in overrides.items() if v is not None})
        if plan.early_stopping_metric not in ("val_dice", "ema_val_dice"):
            raise HiennuError(f"plans: early_stopping_metric {plan.early_stopping_metric!r} is not one of "
                              f"'val_dice', 'ema_val_dice'")
        return plan

    def _split(self, fold: int | str) -> tuple[list[str], list[str]]:
        path = self.preprocessed_dir / "splits_final.json"
        splits = read_json_file(path, f"run hiennu_plan_and_preprocess -d {self.dataset_name} first",
                                "delete it and re-run hiennu_plan_and_preprocess")
        if not (isinstance(splits, list) and all(isinstance(s, dict) and "train" in s and "val" in s for s in splits)):
            raise HiennuError(f"{path}: must be a list of {{\"train\": [...], \"val\": [...]}} entries")
        if fold == "all":
            cases = sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
            return cases, cases
        if fold >= len(splits):
            raise HiennuError(f"{path}: has {len(splits)} folds, fold {fold} does not exist")
        train, val = list(splits[fold]["train"]), list(splits[fold]["val"])
        missing = [c for c in train + val if not (self.case_dir / f"{c}.npy").is_file()]
        if missing:
            raise HiennuError(f"{self.case_dir}: preprocessed files missing for case(s) {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''}; re-run hiennu_plan_and_preprocess -d "
                              f"{self.dataset_name} -c {self.config.name}")
        return train, val

    # ------------------------------------------------------------------- native-geometry validation
    def _final_validation(self) -> None:
        if not self.options.final_validation:
            log.info("final validation in native geometry skipped (--no-final-validation)")
            return
        if self.options.fold == "all":
            log.info("final validation skipped: fold 'all' has no held-out cases")
            return
        best = self.fold_dir / ckpt.BEST
        if not best.is_file():
            log.warning("final validation skipped: no %s in %s", ckpt.BEST, self.fold_dir)
            return
        summary = predict_and_score_validation(self.model_dir, self.options.fold, self.val_cases,
                                               self.dataset_name, self.device)
        if summary is not None:
            m = summary["metrics"]
            log.info("validation in native geometry (%d cases, %s): Dice %.4f, MASD %.3f mm, NSD %.4f",
                     summary["num_cases"], self.fold_dir / "validation", m["dice"]["mean"], m["masd"]["mean"],
                     m["nsd"]["mean"])


def predict_and_score_validation(model_dir: Path, fold: int, case_ids: list[str], dataset_name: str,
                                 device: torch.device) -> dict | None:
    """Predict the fold's validation cases from their raw images with the fold's best checkpoint,
    in each case's native geometry, into ``fold_K/validation/CASE<ending>``, and score them against
    the raw labels with the challenge metrics (``validation/summary.json`` + per-case CSV).

    Returns the evaluation summary, or None (with a warning) when the raw dataset is not there.
    """
    raw_dir = raw_root() / dataset_name
    if not (raw_dir / "imagesTr").is_dir() or not (raw_dir / "labelsTr").is_dir():
        log.warning("final validation skipped: the raw dataset %s (imagesTr/, labelsTr/) is not there; "
                    "the checkpoints are complete, predict and score the validation cases later with "
                    "hiennu_predict and hiennu_evaluate", raw_dir)
        return None
    ending = load_dataset_json(raw_dir).file_ending
    out_dir = model_dir / f"fold_{fold}" / "validation"
    predictor = Predictor.from_model_dir(model_dir, folds=[fold], checkpoint=ckpt.BEST, device=device,
                                         use_postprocessing=False)  # CV masks: what post-processing is chosen on
    for case_id in progress(case_ids, desc="validation (native geometry)"):
        images, geometry = [], None
        for k in range(len(predictor.channel_names)):
            image, geo = read_image(raw_dir / "imagesTr" / f"{case_id}_{k:04d}{ending}")
            images.append(image)
            geometry = geometry or geo
        mask, _ = predictor.predict_case(images, geometry)
        write_image(mask.astype(np.uint8), geometry, out_dir / f"{case_id}{ending}")
    return evaluate_folders(raw_dir / "labelsTr", out_dir, output_json=out_dir / "summary.json",
                            images_dir=raw_dir / "imagesTr", case_ids=case_ids, num_processes=1)
