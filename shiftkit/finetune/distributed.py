"""Data-parallel training across processes (``torchrun --nproc_per_node N``), kept equal to one process.

The trainer splits every *global* batch (the batch a single process would see, in the same seeded order)
into one contiguous slice per rank, scales each rank's loss so that averaging the gradients over ranks gives
the gradient of the global batch's mean loss (also for a short last batch), and synchronises BatchNorm's batch
statistics across ranks. So N processes compute what one process computes, up to floating-point summation
order (dropout and stochastic depth draw different masks: each rank seeds its own).

This module holds the process-group plumbing: reading torchrun's environment, the per-rank batch slices,
gathering rows computed on different ranks, and a BatchNorm that works on CPU (gloo) as well as on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from shiftkit.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``world_size`` 1 means a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "local_rank": self.local_rank,
                "backend": self.backend}


SINGLE = DistContext()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def context() -> DistContext:
    """The current process group, initialising it from torchrun's RANK/WORLD_SIZE/LOCAL_RANK on first use.

    nccl when CUDA is available (each rank takes GPU LOCAL_RANK), gloo otherwise. Idempotent; without
    those variables (or with WORLD_SIZE 1) it returns the single-process context and starts nothing.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return SINGLE
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ConfigError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set: launch with torchrun")
        cuda = torch.cuda.is_available() and os.environ.get("SHIFTKIT_DIST_BACKEND", "") != "gloo"
        if cuda:
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible")
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, dist.get_backend())


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """Each rank uses its own GPU."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


# -- batches ---------------------------------------------------------------------------------------------
def seeded_order(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def rank_slice(chunk: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous part of one global batch (sizes differ by at most one; may be empty)."""
    if not ctx.enabled:
        return chunk
    return torch.tensor_split(chunk, ctx.world_size)[ctx.rank]


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's indices of each global batch, in a seeded order set per epoch with ``set_epoch``.

    Like :class:`~torch.utils.data.DistributedSampler` it is re-seeded every epoch, but it neither pads nor
    reorders the data: the union over ranks of batch k is exactly batch k of a one-process run. One sampler
    lives as long as its (persistent-worker) loader; the order is drawn in the main process at each ``iter``.
    """

    def __init__(self, n: int, batch_size: int, ctx: DistContext, shuffle: bool) -> None:
        self.n, self.batch_size, self.ctx, self.shuffle = n, batch_size, ctx, shuffle
        self.seed = 0

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def _merges_last(self) -> bool:
        # A training batch of one image gives BatchNorm no batch statistics: it joins the batch before it.
        return self.shuffle and self.n > self.batch_size and self.n % self.batch_size == 1

    def global_batches(self) -> list[torch.Tensor]:
        order = seeded_order(self.n, self.seed) if self.shuffle else torch.arange(self.n)
        batches = list(order.split(self.batch_size))
        if self._merges_last():
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self.global_batches():
            yield rank_slice(chunk, self.ctx).tolist()

    def __len__(self) -> int:
        return -(-self.n // self.batch_size) - int(self._merges_last())


# -- collectives -----------------------------------------------------------------------------------------
def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(params: list[nn.Parameter], ctx: DistContext) -> None:
    """Mean of the gradients over ranks, in one flat all-reduce (for steps that bypass DDP)."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_rows(local: torch.Tensor, indices: torch.Tensor, n: int, ctx: DistContext) -> torch.Tensor:
    """Rows computed on different ranks (row ``i`` of ``local`` belongs at ``indices[i]``) -> all ``n`` rows,
    on every rank, in index order."""
    if not ctx.enabled:
        out = local.new_empty((n, *local.shape[1:]))
        out[indices.to(local.device)] = local
        return out
    device = local.device
    count = torch.tensor([len(local)], device=device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: len(local)] = local
    padded_idx = torch.full((longest,), -1, dtype=torch.long, device=device)
    padded_idx[: len(local)] = indices.to(device)
    rows = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    idx = [torch.zeros_like(padded_idx) for _ in range(ctx.world_size)]
    dist.all_gather(rows, padded)
    dist.all_gather(idx, padded_idx)
    out = local.new_empty((n, *local.shape[1:]))
    for part, part_idx, c in zip(rows, idx, counts):
        k = int(c.item())
        out[part_idx[:k]] = part[:k]
    return out


# -- BatchNorm over the global batch ----------------------------------------------------------------------
class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) that autograd can differentiate: the gradient of a sum over ranks is the sum over ranks
    of the gradients (every rank's loss depends on every rank's contribution)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training-mode statistics are those of the global batch (all ranks), on CPU or GPU.

    torch's SyncBatchNorm runs on GPUs only; this one all-reduces per-channel count, sum and sum of squares
    (float64, autograd-aware), so it also serves the gloo backend the tests use. Same parameters, buffers and state-dict
    keys as ``nn.BatchNorm2d``; in eval mode it is plain BatchNorm.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        # Statistics in float64: E[x²] - E[x]² then loses nothing that float32 BatchNorm would keep.
        x = input.double()
        local = torch.cat([
            torch.full((1,), float(x.numel() // max(x.shape[1], 1)), dtype=x.dtype, device=x.device),
            x.sum(dim=(0, 2, 3)),
            (x * x).sum(dim=(0, 2, 3)),
        ])
        total = _SumOverRanks.apply(local)
        count, channels = total[0], x.shape[1]
        mean = total[1: 1 + channels] / count
        var = (total[1 + channels:] / count - mean * mean).clamp_min(0)
        x, mean, var = input.float(), mean.float(), var.float()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(mean.detach() * momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach() * momentum)
        shape = (1, channels, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a global-batch one that shares its parameters and buffers (so strategies'
    references to parameters and checkpoints' keys stay valid). torch's SyncBatchNorm on CUDA, ours on CPU."""
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm2d
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device)
    return model
