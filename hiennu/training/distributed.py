"""Data-parallel training: process groups, batch-norm synchronization, launching ranks.

One process per device. The global batch of ``batch_size`` samples is split across the
``world_size`` ranks; DistributedDataParallel averages the gradients, so with synchronized batch
norm a step equals the single-process step on the whole batch (up to float rounding).

Batch norm: on CUDA the network's BatchNorm3d layers become :class:`torch.nn.SyncBatchNorm`.
PyTorch's SyncBatchNorm runs on GPUs only, so on CPU (gloo) they become :class:`GlobalBatchNorm3d`,
which all-reduces the per-channel sums with autograd support. Dropout masks are drawn per rank,
so with dropout > 0 a DDP run is a different (equally valid) random draw than a single process.

Launching: under ``torchrun`` the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) describes the group; otherwise :func:`spawn` starts the ranks
with ``torch.multiprocessing`` on a free local port.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hiennu.errors import HiennuError
from hiennu.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the group (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def torchrun_context() -> DistContext | None:
    """The context ``torchrun`` put in the environment, or None when not launched by it."""
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                           int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    return None


def init_process_group(ctx: DistContext, device_type: str) -> None:
    """Join the group: NCCL on CUDA, gloo elsewhere (addresses from ``MASTER_ADDR``/``MASTER_PORT``)."""
    if not ctx.enabled or dist.is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size, init_method="env://")


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks in place (no-op in a single process); returns ``t``."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is again the sum over ranks (each rank's statistics feed
    every rank's output)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class _GlobalBatchNorm:
    """Batch norm whose training statistics cover the samples of all ranks (works on CPU/gloo), for inputs
    ``(B, C, ...)`` of any rank (BatchNorm3d's 5D, BatchNorm2d's 4D: a 2D network's slices).

    Per channel, the sums of x and x² and the voxel count are all-reduced (differentiably), giving
    the global mean and biased variance used to normalize; running statistics are updated with
    the unbiased variance as batch norm does. Outside training, or without a process group, it is
    plain batch norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        dims = (0, *range(2, x.dim()))
        local = torch.cat([xf.sum(dim=dims), (xf * xf).sum(dim=dims), xf.new_tensor([x.numel() / c])])
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
                self.num_batches_tracked.add_(1)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class GlobalBatchNorm3d(_GlobalBatchNorm, nn.BatchNorm3d):
    """BatchNorm3d synchronized over the ranks (:class:`_GlobalBatchNorm`)."""


class GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    """BatchNorm2d synchronized over the ranks (:class:`_GlobalBatchNorm`): a 2D network's."""


_GLOBAL_FORMS = {nn.BatchNorm3d: GlobalBatchNorm3d, nn.BatchNorm2d: GlobalBatchNorm2d}


def convert_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm3d and BatchNorm2d by its synchronized form (SyncBatchNorm on CUDA, else global)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_to_global(module)


def _convert_to_global(module: nn.Module) -> nn.Module:
    form = _GLOBAL_FORMS.get(type(module))
    if form is not None:
        new = form(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.to(next(iter(module.state_dict().values())).device)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert_to_global(child))
    return module


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker: Callable[..., None], world_size: int, args: tuple) -> None:
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` fresh processes and wait for all.

    A failing rank's error becomes a HiennuError naming the rank and the cause.
    """
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    try:
        mp.spawn(worker, args=(world_size, *args), nprocs=world_size, join=True)
    except mp.ProcessRaisedException as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        log.debug("rank traceback:\n%s", "\n".join(lines))
        raise HiennuError(f"distributed training failed on rank {e.error_index}: {lines[-1]}") from None
    except mp.ProcessExitedException as e:
        raise HiennuError(f"distributed training failed: a rank died ({e}); see the log above "
                          f"(often out of memory: lower --batch-size)") from None
