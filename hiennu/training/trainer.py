"""The training loop: one base :class:`Trainer` that owns everything except the choice of loss.

A trainer trains one fold of one configuration of a preprocessed dataset, as the plans say
(overridable by :class:`~hiennu.training.options.TrainingOptions`), and writes
``$hiennu_results/DatasetNNN_Name/TRAINER__hiennuPlans__CONFIG/fold_K/``:

- ``checkpoint_latest.pth`` after every epoch (atomic), ``checkpoint_best.pth`` whenever the
  early-stopping metric improves, ``checkpoint_final.pth`` with the state at the end; best and
  final hold no optimizer state, and latest is removed once final is written;
- ``training_log.txt``, ``progress.json`` and ``progress.png`` (per-epoch numbers), ``debug.json``;
- ``validation/``: the predictions of the fold's validation cases in their native geometry by
  ``checkpoint_final.pth`` (``--checkpoint best``: ``checkpoint_best.pth``) and their challenge
  scores (``summary.json``, which names the checkpoint). ``--val`` re-runs only this validation of
  a finished fold (:attr:`TrainingOptions.validation_only`).

Constructing a trainer reads the fold's layout (:func:`~hiennu.training.fold_layout.fold_layout`)
and builds the network, loss and optimizer; :meth:`Trainer.run` resumes (``--continue``), trains
and validates. Each epoch (:meth:`Trainer._run_epoch`, numbered from 0): ``iterations_per_epoch``
optimization steps (:meth:`Trainer._train_step`), each on a global batch of ``batch_size`` samples:
AdamW on loss + L1 penalty (``l1_lambda * sum |w|``, applied as its gradient
``l1_lambda * sign(w)``), gradient-norm clipping; then the learning rate decays by
``lr_decay_gamma``. Validation (every ``val_every`` epochs and at the last) runs each validation
case whole through the network on the preprocessed grid. Training stops after ``max_epochs``,
when the early-stopping metric has not improved for ``patience`` epochs
(:class:`~hiennu.training.early_stopping.EarlyStopping`), or at the end of the epoch in which the
plans' time budget (``training.time_budget_minutes``, ``--time-budget``) ran out.

Subclasses override :meth:`Trainer.build_loss` (see ``hiennu.training.trainers``); the data,
network and optimizer come from :meth:`build_batches`, :meth:`build_network` and
:meth:`build_optimizer`, which a user's trainer may also override, as it may override one step
(:meth:`_train_step`) or validation (:meth:`validate`).
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hiennu.device import autocast, configure_cpu_threads, configure_device, memory_format, select_device
from hiennu.errors import HiennuError
from hiennu.inference.network_builder import NETWORK_BUILDER_KEY
from hiennu.inference.sliding_window import sliding_window_predict
from hiennu.io.atomic import read_json, write_json
from hiennu.io.checkpoint import BEST, FINAL, LATEST, load_checkpoint, save_checkpoint
from hiennu.log import attach_file_handler, get_logger, progress
from hiennu.losses.base import use_batch_reduction
from hiennu.masks import dice
from hiennu.networks.unet import build_network
from hiennu.paths import PLANS_FILE, PROGRESS_FILE, VALIDATION_DIR, plans_file_name
from hiennu.plans import Configuration, configuration_differences, save_plans
from hiennu.provenance import provenance
from hiennu.training.checkpoint import (capture_rng_state, finish_checkpoints, refuse_before_start, restore_rng_state,
                                        resume_source, seed_everything, unfinished_validation_problem,
                                        without_training_state)
from hiennu.training.data import TargetFunction, TrainingBatches, load_preprocessed_case
from hiennu.training.distributed import (DistContext, all_gather_objects, all_reduce_sum, barrier,
                                         convert_batchnorm)
from hiennu.training.early_stopping import EarlyStopping
from hiennu.training.fold_layout import check_batch_split, fold_layout
from hiennu.training.fold_lock import FoldLock
from hiennu.training.model_files import publish_model_files
from hiennu.training.native_validation import (predict_and_score_validation, validation_input_problem,
                                               validation_is_current, validation_keeps_probabilities)
from hiennu.training.options import TrainingOptions
from hiennu.training.progress import ProgressLog, StepTimer
from hiennu.training.weight_average import WeightAverage

log = get_logger(__name__)

PLOT_EVERY_SECONDS = 60.0  # progress.png is redrawn at most this often (drawing takes ~1 s) and at the end


class TrainingDivergedError(HiennuError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class EpochSteps(NamedTuple):
    """What an epoch's optimizer steps measured: mean loss over every process's batches, mean seconds
    per step, and the fraction of the time spent waiting for data."""

    loss: float
    step_seconds: float
    data_wait_fraction: float


def check_trainer_class(cls: type) -> None:
    """Refuse a trainer class that overrides :meth:`Trainer.build_network`: validation and prediction rebuild a
    fold's network without a run, from :meth:`Trainer.network_for`, so a network built otherwise would be trained
    and never predicted with (its weights refused, or, fitting, scored as a network that was never trained)."""
    name = f"{cls.__module__}:{cls.__qualname__}"
    if cls.build_network is not Trainer.build_network:
        raise HiennuError(f"trainer {name} overrides build_network; override the class method "
                          f"network_for(cls, configuration) instead, which validation and hiennu_predict build each "
                          f"fold's network with (documentation/training.md)")
    if not isinstance(inspect.getattr_static(cls, "network_for"), classmethod):
        raise HiennuError(f"trainer {name}: network_for must be a class method (@classmethod def network_for(cls, "
                          f"configuration)); prediction calls it on the class, without a run")
    if cls.network_builder() is not None and (cls.__module__ == "__main__" or "<locals>" in cls.__qualname__):
        raise HiennuError(f"trainer {name} builds its own network, which prediction imports by name; define the class "
                          f"at the top level of a module of yours (not the script you run, nor inside a function) and "
                          f"name it as MODULE:CLASS")


class Trainer(abc.ABC):
    """Trains one fold; subclasses choose the loss by overriding :meth:`build_loss`.

    ``epoch_listener``, when set (by :func:`hiennu.training.launch.train`), is called on the main process after each
    epoch's line is logged, as ``listener(epoch, epoch_seconds)`` (the epoch's wall time in seconds, its validation
    included); the default model's ETA uses it."""

    epoch_listener: Callable[[int, float], None] | None = None

    def __init__(self, options: TrainingOptions, dist_ctx: DistContext | None = None):
        check_trainer_class(type(self))
        self.options = options
        self.dist = dist_ctx or DistContext()
        self.trainer_name = type(self).__name__
        layout = fold_layout(self.trainer_name, options)
        if layout.trains:
            layout.check_preprocessed_cases()
        self.trains = layout.trains
        self.dataset_name, self.preprocessed_dir = layout.dataset_name, layout.preprocessed_dir
        self.plans, self.config, self.training = layout.plans, layout.config, layout.training
        self.case_dir, self.train_cases, self.val_cases = layout.case_dir, layout.train_cases, layout.val_cases
        self.model_dir, self.fold_dir = layout.model_dir, layout.fold_dir
        self.iterations_per_epoch = layout.iterations_per_epoch
        self.device = select_device(options.device, self.dist.local_rank)
        check_batch_split(self.training.batch_size, self.dist.world_size)

        seed_everything(options.seed + self.dist.rank)  # before the network draws its initial weights
        configure_device(self.device)
        if self.device.type == "cpu":
            configure_cpu_threads(options.cpu_threads)
        network = self.build_network()
        if self.dist.enabled:
            network = convert_batchnorm(network, self.device.type)
        self.memory_format = memory_format(self.device, network)
        self.network: nn.Module = network.to(self.device, memory_format=self.memory_format)
        self.model: nn.Module = self.network  # what the steps run: wrapped in DDP and/or torch.compile by _setup
        self.loss = self.build_loss()
        if self.training.batch_dice:
            use_batch_reduction(self.loss)
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        # the state a checkpoint carries (replaced by _restore on --continue); the progress log first, since a
        # time-budgeted schedule reads it
        self.progress = ProgressLog()
        self.optimizer, self.scheduler = self.build_optimizer(self.params)
        self.average = WeightAverage(self.network, self.training.weight_ema) if self.training.weight_ema else None
        self.early_stopping = EarlyStopping()
        self.start_epoch = 0
        self.resumed_finished = False  # continued from the checkpoint of a finished training
        self.plans_edited_since = False  # ... whose plans differ from the current ones (nothing is written from them)
        self._last_plot = -math.inf  # the first epoch draws progress.png; then at most once a minute

    # ----------------------------------------------------------------- parts a subclass may change
    @abc.abstractmethod
    def build_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss: ``loss(logits (B,1,z,y,x) float32, target (B,1,z,y,x) {0,1}) -> scalar``."""

    @classmethod
    def network_for(cls, configuration: Configuration) -> nn.Module:
        """The network this trainer trains for ``configuration`` (the plans' U-Net). Override it to train another:
        validation, ``hiennu_predict``, exported zips and ensembles build each fold's network with the trainer class
        its checkpoint names (:mod:`hiennu.inference.network_builder`), as nnU-Net's predictor calls the trainer's
        ``build_network_architecture``; so it may read only ``configuration`` (and the class), not the run."""
        return build_network(configuration.network)

    def build_network(self) -> nn.Module:
        """The network of this run: :meth:`network_for` of the plans' configuration. Not to be overridden (prediction
        could not rebuild what it builds): :func:`check_trainer_class` refuses a trainer that does."""
        return self.network_for(self.config)

    @classmethod
    def network_builder(cls) -> str | None:
        """``module:QualName`` of this class when it overrides :meth:`network_for` (recorded in its checkpoints), else
        None (the plans' network: nothing to import at prediction)."""
        if cls.network_for.__func__ is Trainer.network_for.__func__:
            return None
        return f"{cls.__module__}:{cls.__qualname__}"

    def build_optimizer(self, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW with the plans' learning rate and weight decay; per epoch the rate decays exponentially
        (``lr_decay_gamma``, the paper) or by nnU-Net's poly rule ``(1 - progress) ** 0.9``, where progress is
        :meth:`schedule_progress` (``epoch / max_epochs``, or the spent share of a time budget when larger)."""
        if self.training.optimizer.lower() != "adamw":
            raise HiennuError(f"plans: optimizer {self.training.optimizer!r} is not supported; use 'AdamW'")
        optimizer = torch.optim.AdamW(params, lr=self.training.learning_rate,
                                      weight_decay=self.training.weight_decay)
        if self.training.lr_schedule == "poly":
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda e: max(0.0, 1 - self.schedule_progress(e)) ** 0.9)
        elif self.training.lr_schedule == "exponential":
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.training.lr_decay_gamma)
        else:
            raise HiennuError(f"plans: lr_schedule {self.training.lr_schedule!r} is not one of 'exponential', 'poly'")
        return optimizer, scheduler

    def schedule_progress(self, epoch: int) -> float:
        """How far the schedule has come after ``epoch`` epochs, in [0, 1]: ``epoch / max_epochs``, or with a time
        budget (``training.time_budget_minutes``) the share of it the epochs so far took, when that is larger."""
        progress = epoch / self.training.max_epochs
        if self.training.time_budget_minutes:
            progress = max(progress, self._training_seconds() / (60.0 * self.training.time_budget_minutes))
        return min(1.0, progress)

    def _training_seconds(self, running_epoch_started: float | None = None) -> float:
        """Wall-clock seconds of the training loop so far (the recorded epochs, resumed runs included, plus
        the running epoch when its start is given). Under DDP with a time budget, the mean over the ranks
        (every rank calls this at the same point), so that all ranks take the same rate and stop together."""
        spent = float(sum(self.progress.epoch_seconds))
        spent += time.perf_counter() - running_epoch_started if running_epoch_started is not None else 0.0
        if self.dist.enabled and self.training.time_budget_minutes:
            shared = all_reduce_sum(torch.tensor([spent], dtype=torch.float64, device=self.device))
            spent = float(shared[0]) / self.dist.world_size
        return spent

    def _budget_spent(self, running_epoch_started: float | None) -> bool:
        budget = self.training.time_budget_minutes
        return bool(budget) and self._training_seconds(running_epoch_started) >= 60.0 * budget

    def build_batches(self) -> TrainingBatches:
        """The training loader: this rank's share of each global batch, on the device."""
        return TrainingBatches(self.case_dir, self.train_cases, self.config,
                               batch_size=self.training.batch_size // self.dist.world_size, seed=self.options.seed,
                               num_workers=self.training.num_workers, device=self.device, augment=True,
                               rank=self.dist.rank, world_size=self.dist.world_size,
                               target_of=self.build_training_targets())

    def build_training_targets(self) -> TargetFunction | None:
        """What replaces each training case's reference as the target (None: the reference itself)."""
        return None

    def load_validation_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(data (C,z,y,x) float32, seg (1,z,y,x)) of a case on the preprocessed grid."""
        data, seg, _ = load_preprocessed_case(self.case_dir, case_id)
        return data, seg

    # ----------------------------------------------------------------------------- the whole run
    def run(self) -> Path:
        """Train (or resume) the fold, then validate the chosen checkpoint (``--val``: only validate); returns
        the fold folder.

        The main process holds the fold's lock (:class:`~hiennu.training.fold_lock.FoldLock`) for
        the whole run, so a second run of the same fold refuses instead of interleaving with it.
        """
        if self.dist.is_main:
            refuse_before_start(self.fold_dir, self.options.resume, self.options.validation_only)
            if self.trains and self.options.final_validation and self.options.fold != "all":
                problem = validation_input_problem(self.dataset_name, self.val_cases)
                if problem:
                    raise HiennuError(problem)
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
            if self.options.validation_only:
                self._final_validation(required=True)
                return self.fold_dir
            self._setup()
            trained_now = not self.resumed_finished
            if trained_now:
                self._train_epochs()
            rng = all_gather_objects(capture_rng_state())
            if self.dist.is_main and (trained_now or not (self.fold_dir / FINAL).is_file()):
                # the shared files before the final checkpoint: a run stopped between the two (published, no final)
                # publishes again when continued, while a final checkpoint always means a published fold
                publish_model_files(self.plans, self.config, self.preprocessed_dir, self.model_dir, self.fold_dir)
                self._save_final(rng)
            barrier()
            if self.dist.is_main:
                if not trained_now and validation_is_current(self.fold_dir, self.options.validation_checkpoint_file,
                                                             self.options.save_probabilities):
                    log.info("%s is finished and validated with %s; nothing to do", self.fold_dir,
                             self.options.validation_checkpoint_file)
                else:
                    self._final_validation()
            return self.fold_dir
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: said in the fold's log too, with how to go on
            if self.dist.is_main and self.options.validation_only:
                log.warning("validation of %s interrupted; run the same command again", self.fold_dir)
            elif self.dist.is_main:  # the command's own options (trainer module, epochs, seed ...) are not re-typed
                kept = (f"after {len(self.progress)} epoch(s); the last finished epoch's checkpoint is kept"
                        if len(self.progress) else "before its first epoch ended")
                log.warning("%s interrupted %s: resume it by running the same hiennu_train command again with "
                            "--continue (hiennu_loss_study and hiennu_train_default_model resume it when run again)",
                            self.fold_dir, kept)
            raise
        finally:
            if handler is not None:
                logging.getLogger("hiennu").removeHandler(handler)
                handler.close()

    def _setup(self) -> None:
        """Continue from the fold's checkpoint when asked, record the fold's files, wrap the network for training."""
        restored = resume_source(self.fold_dir, self.options.resume)
        if restored is not None:
            self._restore(load_checkpoint(restored, map_location=self.device), restored)
        if self.dist.is_main:
            if not self.plans_edited_since:  # a finished fold's record is its own plans, never the edited ones
                self._write_model_files(new_training=restored is None)
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
                    if epoch + 1 < self.training.max_epochs and self.early_stopping.patience_spent(
                            epoch, self.training.patience):
                        es = self.early_stopping
                        log.info("early stopping: no improvement of %s for %d epochs (best %.4f at epoch %d)",
                                 self.training.early_stopping_metric, self.training.patience, es.best_metric,
                                 es.best_epoch)
                    break
        finally:
            batches.close()
        log.info("training finished; best %s %.4f at epoch %d", self.training.early_stopping_metric,
                 self.early_stopping.best_metric, self.early_stopping.best_epoch)

    # ----------------------------------------------------------------------------------- one epoch
    def _run_epoch(self, batches: TrainingBatches, epoch: int) -> bool:
        """One epoch: the optimizer steps, the learning-rate step, validation when due, the epoch's
        record and checkpoints. Returns True when training should stop."""
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        steps = self._train_steps(batches, epoch)
        out_of_time = self._budget_spent(started)
        validation = self.validate() if self._validation_due(epoch) or out_of_time else None
        improved = validation is not None and self.early_stopping.update(validation[1], epoch,
                                                                         self.training.early_stopping_metric)
        self._record_epoch(epoch, lr, started, steps, validation, improved)
        self.scheduler.step()  # after the epoch's record, so that a time budget's progress counts this epoch
        out_of_time = out_of_time or self._budget_spent(None)  # its validation may have spent the rest
        stop = validation is not None and (self.early_stopping.patience_spent(epoch, self.training.patience)
                                           or epoch + 1 == self.training.max_epochs or out_of_time)
        if out_of_time and epoch + 1 < self.training.max_epochs:
            log.info("time budget of %g min spent after epoch %d (%.1f min): training stops",
                     self.training.time_budget_minutes, epoch, self._training_seconds() / 60)
        self._save_epoch(epoch, improved, finished=stop)
        return stop

    def _train_steps(self, batches: TrainingBatches, epoch: int) -> EpochSteps:
        """The epoch's ``iterations_per_epoch`` optimizer steps on this process's share of each batch.

        A NaN or infinite loss raises :class:`TrainingDivergedError`: checked after every step on a
        single CPU process, elsewhere once at the end of the epoch (no per-step device synchronization).
        """
        self.network.train()
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
        step_s, wait = timer.summary()
        mean_loss = float(all_reduce_sum(losses.sum().reshape(1))[0]) / (n * self.dist.world_size)
        return EpochSteps(mean_loss, step_s, wait)

    def _train_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's batch; returns the segmentation loss (no L1 term)."""
        data = data.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        target = self._supervised_slices(target.to(self.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.training.cpu_bf16):
            output = self.model(data)
        loss = self.compute_loss(output, target)
        loss.backward()
        self._add_l1_gradient()
        if self.training.grad_clip_norm:
            nn.utils.clip_grad_norm_(self.params, self.training.grad_clip_norm)
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.network)
        return loss

    def _supervised_slices(self, target: torch.Tensor) -> torch.Tensor:
        """The target ``(B, 1, z, y, x)`` without the context slices of a 2.5D network
        (``network.context_slices`` on either side), which the network's training output leaves out."""
        context = int(self.config.network.context_slices)
        return target[:, :, context:target.shape[2] - context] if context else target

    @property
    def predicting_network(self) -> nn.Module:
        """What validates and what best and final checkpoints hold: the averaged weights when
        ``weight_ema`` is on, else the trained ones."""
        return self.average.module if self.average is not None else self.network

    def _add_l1_gradient(self) -> None:
        """The L1 penalty ``l1_lambda * sum |w|`` as its gradient ``l1_lambda * sign(w)``, added after
        the DDP all-reduce (identical to adding the penalty to the loss)."""
        if self.training.l1_lambda:
            with torch.no_grad():  # else the gradients carry an autograd graph of sign(w) into the step
                used = [p for p in self.params if p.grad is not None]
                torch._foreach_add_([p.grad for p in used], torch._foreach_sign(used), alpha=self.training.l1_lambda)

    def _l1_norm(self) -> float:
        """``sum |w|`` over the trainable parameters (logged as ``l1_norm``)."""
        with torch.no_grad():
            return float(sum(p.detach().abs().sum() for p in self.params))

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
            kept = (f"the last good checkpoint {self.fold_dir / LATEST} (end of epoch {last}) is kept"
                    if last >= 0 else "no checkpoint was written yet")
            raise TrainingDivergedError(
                f"{self.fold_dir}: the training loss became "
                f"{float(losses[i]) if not torch.isfinite(losses[i]) else 'non-finite on another process'} "
                f"at epoch {epoch}, batch {i} (both counted from 0); training stopped and {kept}. "
                f"Lower the learning rate (--lr), check the preprocessed data of the training cases for "
                f"NaN values, or resume with --continue to retry from the checkpoint.")

    def _validation_due(self, epoch: int) -> bool:
        """Every ``val_every`` epochs, and at the last epoch."""
        return (epoch + 1) % self.options.val_every == 0 or epoch + 1 == self.training.max_epochs

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """(mean loss, mean Dice) over the validation cases, each run whole on the grid.

        Dice of the 0.5-probability threshold (:func:`hiennu.evaluation.metrics.dice`: 1 when
        prediction and reference are both empty). Under DDP the cases are shared out by rank and
        the sums all-reduced.
        """
        self.network.eval()
        self.predicting_network.eval()
        loss_sum, dice_sum, count = 0.0, 0.0, 0
        for case_id in self.val_cases[self.dist.rank::self.dist.world_size]:
            data, seg = self.load_validation_case(case_id)
            x = torch.from_numpy(np.array(data, dtype=np.float32))[None].to(self.device)
            y = torch.from_numpy(np.array(seg, dtype=np.float32))[None].to(self.device)
            logits = self._validation_logits(x)
            case_dice = dice((y > 0.5).cpu().numpy(), (logits > 0).cpu().numpy())
            loss_sum, dice_sum, count = loss_sum + float(self.loss(logits, y)), dice_sum + case_dice, count + 1
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
        whole-volume grid, or the plans' sliding window (``inference_window``: Gaussian-weighted windows of the patch
        size, or one window over the case; no mirroring)."""
        fmt = self.memory_format

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.training.cpu_bf16):
                out = self.predicting_network(batch.contiguous(memory_format=fmt))
            return out.float()[:, 0]

        if not self.config.is_patch_based:
            return forward(x)[:, None]
        return sliding_window_predict(forward, x[0], self.config.inference_window_zyx(x.shape[2:]))[None, None]

    def _record_epoch(self, epoch: int, lr: float, started: float, steps: EpochSteps,
                      validation: tuple[float, float] | None, improved: bool) -> None:
        """The epoch's row of ``progress.json`` and its line in the log."""
        val_loss, val_dice = validation if validation is not None else (None, None)
        ema = self.early_stopping.ema if validation is not None else None
        self.progress.append(epoch=epoch, train_loss=steps.loss, l1_norm=self._l1_norm(), val_loss=val_loss,
                             val_dice=val_dice, ema_val_dice=ema, lr=lr,
                             epoch_seconds=time.perf_counter() - started, step_seconds=steps.step_seconds,
                             data_wait_fraction=steps.data_wait_fraction)
        log.info("epoch %d: train loss %.4f%s, lr %.2e, %.1f s (step %.3f s, data wait %.0f%%)%s",
                 epoch, steps.loss,
                 f", val loss {val_loss:.4f}, val Dice {val_dice:.4f} (EMA {ema:.4f})" if validation else "",
                 lr, self.progress.epoch_seconds[-1], steps.step_seconds, 100 * steps.data_wait_fraction,
                 "  new best" if improved else "")
        if self.epoch_listener is not None and self.dist.is_main:
            self.epoch_listener(epoch, self.progress.epoch_seconds[-1])

    # ----------------------------------------------------------------------- state and files
    def _save_epoch(self, epoch: int, improved: bool, finished: bool) -> None:
        """After an epoch: ``checkpoint_latest.pth`` (and ``checkpoint_best.pth`` when the metric
        improved), ``progress.json``, and ``progress.png`` at most once a minute."""
        rng = all_gather_objects(capture_rng_state())
        if not self.dist.is_main:
            return
        state = self._state(epoch, rng, finished)
        if improved:
            save_checkpoint(without_training_state(state), self.fold_dir / BEST)
        save_checkpoint(state, self.fold_dir / LATEST)
        self.progress.save_json(self.fold_dir / PROGRESS_FILE)
        if time.perf_counter() - self._last_plot >= PLOT_EVERY_SECONDS:
            self._plot()

    def _save_final(self, rng: list[dict]) -> None:
        """``checkpoint_final.pth`` (the one place it is written; ``checkpoint_latest.pth`` is then
        removed) and the last ``progress.png``."""
        finish_checkpoints(self._state(self.progress.epoch[-1] if len(self.progress) else -1, rng, finished=True),
                           self.fold_dir)
        if len(self.progress):
            self._plot()

    def _plot(self) -> None:
        self.progress.plot(self.fold_dir / "progress.png",
                           title=f"{self.trainer_name} {self.config.name} fold {self.options.fold}")
        self._last_plot = time.perf_counter()

    def _state(self, epoch: int, rng: list[dict], finished: bool) -> dict[str, Any]:
        builder = type(self).network_builder()
        return {
            **({NETWORK_BUILDER_KEY: builder} if builder else {}),
            "trainer_name": self.trainer_name,
            "plans_name": self.plans.plans_name,
            "configuration_name": self.config.name,
            "configuration": dataclasses.asdict(self.config),
            "dataset_name": self.dataset_name,
            "fold": self.options.fold,
            "epoch": epoch,
            "finished": finished,
            "network_weights": _cpu_weights(self.predicting_network),
            **({"training_weights": _cpu_weights(self.network), "weight_average_count": self.average.count}
               if self.average is not None else {}),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "early_stopping": self.early_stopping.to_dict(),
            "progress": self.progress.to_dict(),
            "rng_states": rng,
            "seed": self.options.seed,
            "world_size": self.dist.world_size,
            "options": dataclasses.asdict(self.options),
        }

    def _restore(self, state: dict[str, Any], source: Path) -> None:
        for key, mine in (("trainer_name", self.trainer_name), ("configuration_name", self.config.name),
                          ("fold", self.options.fold)):
            if state.get(key) != mine:
                raise HiennuError(f"{source}: written for {key} {state.get(key)!r}, "
                                  f"not {mine!r}; it cannot be continued by this run")
        finished = source.name == FINAL and bool(state.get("finished", False))
        if finished:  # nothing is trained: validated from the raw images with the fold's own plans and checkpoint,
            self.progress = ProgressLog.from_dict(state["progress"])  # so plans edited since do not matter
            self.start_epoch, self.resumed_finished = state["epoch"] + 1, True
            self.plans_edited_since = bool("configuration" in state
                                           and configuration_differences(state["configuration"], self.config))
            if self.dist.is_main:
                log.info("continuing %s from the end of epoch %d (already finished)", self.fold_dir, state["epoch"])
            return
        if "configuration" in state:
            diffs = configuration_differences(state["configuration"], self.config)
            if diffs:
                raise HiennuError(
                    f"{source}: this fold was started with other plans than "
                    f"{self.preprocessed_dir / plans_file_name(self.options.plans_name)} "
                    f"now holds ({'; '.join(diffs)}); continuing would mix them. Put back the plans it was "
                    f"started with ({self.fold_dir / 'plans.json'}) and re-preprocess with --keep-plans, or move "
                    f"the fold folder away to train it afresh with the new plans")
        if source.name == FINAL and not state.get("finished", False):
            raise HiennuError(f"{source}: records an unfinished training and there is no {LATEST}; move the "
                              f"fold folder away to train it again")
        if not state.get("finished", False) and "optimizer_state" not in state:
            raise HiennuError(f"{source}: holds no optimizer state, so the run cannot be continued from it")
        self.network.load_state_dict(state.get("training_weights", state["network_weights"]))
        if self.average is not None:
            if "training_weights" in state:
                self.average.load(state["network_weights"], state.get("weight_average_count", 0))
            else:  # a run started without averaging, or a finished one: average from here on
                self.average.load(state["network_weights"], 0)
        if "optimizer_state" in state:  # finished runs keep none (checkpoint.without_training_state)
            self.optimizer.load_state_dict(state["optimizer_state"])
            self.scheduler.load_state_dict(state["scheduler_state"])
        self.early_stopping = EarlyStopping.from_dict(state["early_stopping"])
        self.progress = ProgressLog.from_dict(state["progress"])
        self.start_epoch = state["epoch"] + 1
        self.resumed_finished = bool(state.get("finished", False))
        rng = state["rng_states"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            log.warning("checkpoint was written by %d process(es), this run has %d: random states are "
                        "re-seeded, so the run continues correctly but not bit-identically",
                        len(rng), self.dist.world_size)
            seed_everything(self.options.seed + self.dist.rank + 1000 * self.start_epoch)
        if self.dist.is_main:
            log.info("continuing %s from the end of epoch %d%s", self.fold_dir, state["epoch"],
                     " (already finished)" if self.resumed_finished else "")

    def _write_model_files(self, new_training: bool = True) -> None:
        """Record the fold's plans and run details when it starts.

        ``fold_K/plans.json``: the plans this fold is trained with (written for a new training, never
        replaced while resuming). The model folder's shared ``plans.json`` and ``dataset.json`` are
        written here only when absent; otherwise only once this fold has finished training
        (:func:`~hiennu.training.model_files.publish_model_files`), so a start that fails never
        changes what other folds predict with.
        """
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        fold_plans = self.fold_dir / PLANS_FILE
        if new_training or not fold_plans.is_file():
            save_plans(self.plans, fold_plans)
        if not (self.model_dir / PLANS_FILE).is_file():
            publish_model_files(self.plans, self.config, self.preprocessed_dir, self.model_dir, self.fold_dir)
        record_file = self.fold_dir / "debug.json"
        if not new_training and record_file.is_file():
            if self.resumed_finished:
                return  # a finished training: its record stays as it was
            # an interrupted one: the record keeps how it was started (what recorded_differences compares a request
            # with) and lists each resumption with the options it went on under
            record = read_json(record_file)
            record.setdefault("resumed", []).append({
                "at": time.strftime("%Y-%m-%d %H:%M:%S"), "options": dataclasses.asdict(self.options),
                "effective_training_plan": dataclasses.asdict(self.training), "device": str(self.device),
                "torch_threads": torch.get_num_threads(), "hostname": platform.node()})
            write_json(record, record_file)
            return
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
            "torch_threads": torch.get_num_threads(),
            **provenance(self.options, self.options.seed),
            "cuda": {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
            "hostname": platform.node(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, self.fold_dir / "debug.json")

    def _start_log_file(self) -> logging.Handler | None:
        if not self.dist.is_main:
            return None
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        handler = attach_file_handler(self.fold_dir / "training_log.txt")
        log.info("%s %s on %s, configuration %s, fold %s: %d training / %d validation cases, "
                 "device %s, %d process(es), seed %d",
                 "validating (--val, no training)" if self.options.validation_only else "training",
                 self.trainer_name, self.dataset_name, self.config.name, self.options.fold, len(self.train_cases), len(self.val_cases), self.device,
                 self.dist.world_size, self.options.seed)
        return handler

    # ------------------------------------------------------------------- native-geometry validation
    def _final_validation(self, required: bool = False) -> None:
        """Predict and score the fold's validation cases with the chosen checkpoint (``--checkpoint``).

        required: ``--val``; a fold that has not finished training, or lacks the checkpoint, is then an
        error instead of a warning.
        """
        checkpoint = self.options.validation_checkpoint_file
        if not self.options.final_validation:
            log.info("final validation in native geometry skipped (--no-final-validation)")
            return
        if self.options.fold == "all":
            log.info("final validation skipped: fold 'all' has no held-out cases")
            return
        problem = unfinished_validation_problem(self.fold_dir) if required else None
        if problem:
            raise HiennuError(problem)
        if not (self.fold_dir / checkpoint).is_file():
            if required:
                raise HiennuError(f"--val: no {checkpoint} in {self.fold_dir}; choose another with --checkpoint")
            log.warning("final validation skipped: no %s in %s", checkpoint, self.fold_dir)
            return
        keep = self.options.save_probabilities
        if not keep and validation_keeps_probabilities(self.fold_dir):  # --val without --npz deleted them silently
            keep = True
            log.info("the fold's earlier validation kept each case's probabilities (CASE.npz, --npz), which "
                     "hiennu_find_best_configuration and judged-rule post-processing read: kept again")
        # a whole-volume configuration: one case per forward pass, as the network saw them in training
        summary = predict_and_score_validation(self.model_dir, self.options.fold, self.val_cases, self.dataset_name,
                                               self.device, batch_size=None if self.config.is_patch_based else 1,
                                               cpu_bf16=self.training.cpu_bf16, checkpoint=checkpoint,
                                               save_probabilities=keep)
        if summary is not None:
            m = summary["metrics"]
            log.info("validation in native geometry with %s (%d cases, %s): Dice %.4f, MASD %.3f mm (n=%d), NSD %.4f",
                     checkpoint, summary["num_cases"], self.fold_dir / VALIDATION_DIR, m["dice"]["mean"],
                     m["masd"]["mean"], m["masd"]["n"], m["nsd"]["mean"])


def _cpu_weights(network: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in network.state_dict().items()}
