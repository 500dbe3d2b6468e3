"""Entry point of training: pick the trainer class, then train in one process or in several.

``train(options, trainer)`` runs in this process when ``options.num_gpus`` is 1 or only the final
validation is re-run (``--val``), joins the group
when started by ``torchrun``, and otherwise spawns ``num_gpus`` ranks (one per GPU, or gloo
processes on CPU) that each rebuild the trainer from its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hiennu.errors import HiennuError
from hiennu.log import configure, is_verbose
from hiennu.device import best_device_type
from hiennu.training.checkpoint import refuse_before_start
from hiennu.training.distributed import (DistContext, destroy_process_group, init_process_group, spawn,
                                         torchrun_context)
from hiennu.device import select_device
from hiennu.training.fold_layout import check_batch_split, fold_layout
from hiennu.training.options import TrainingOptions
from hiennu.training.trainers import get_trainer_class


def train(options: TrainingOptions, trainer: str, trainer_module: str | None = None,
          epoch_listener: Callable[[int, float], None] | None = None) -> Path:
    """Train one fold with the named trainer; returns the fold's output folder. ``epoch_listener(epoch,
    epoch_seconds)`` is called after each epoch when the fold trains in this process (one device; not with
    ``--num-gpus`` > 1, whose ranks are other processes): :attr:`hiennu.training.trainer.Trainer.epoch_listener`."""
    cls = get_trainer_class(trainer, trainer_module)
    ctx = torchrun_context()
    if ctx is not None:
        return _train_rank(cls, options, ctx)
    if options.num_gpus == 1 or options.validation_only:  # --val: the main process validates alone
        instance = cls(options)
        instance.epoch_listener = epoch_listener
        return instance.run()
    device_type = (options.device or best_device_type()).lower().split(":")[0]
    if device_type == "mps":
        raise HiennuError("--num-gpus > 1 is not supported on MPS; use --device cuda or cpu")
    # Check what the ranks will need (dataset, plans, split, preprocessed cases, batch split, device) before spawning.
    layout = fold_layout(cls.__name__, options)
    refuse_before_start(layout.fold_dir, options.resume, options.validation_only)
    if layout.trains:
        layout.check_preprocessed_cases()
    check_batch_split(layout.training.batch_size, options.num_gpus)
    select_device(options.device, 0)
    spawn(_worker, options.num_gpus, (trainer, trainer_module, options, device_type, is_verbose()))
    return layout.fold_dir


def _worker(rank: int, world_size: int, trainer: str, trainer_module: str | None,
            options: TrainingOptions, device_type: str, verbose: bool) -> None:
    if rank == 0:  # a fresh process: the console as the command set it up (-q or not)
        configure(verbose=verbose, show_progress=verbose)
    cls = get_trainer_class(trainer, trainer_module)
    _train_rank(cls, options, DistContext(rank, world_size, rank), device_type)


def _train_rank(cls, options: TrainingOptions, ctx: DistContext, device_type: str | None = None) -> Path:
    if not ctx.is_main:  # the main rank keeps the console set-up of the command (-q or not)
        configure(verbose=False, show_progress=False)
    init_process_group(ctx, device_type or (options.device or best_device_type()).lower().split(":")[0])
    try:
        return cls(options, ctx).run()
    finally:
        destroy_process_group()
