"""Data parallelism under `torchrun` with no change of flags.

When WORLD_SIZE > 1 (set by torchrun), `init_from_env` joins the process group (gloo on CPU, nccl on
CUDA, device cuda:LOCAL_RANK). Every rank reads the same data, draws the same epoch permutation
(`DistributedSampler` seeded with the run's seed) and takes its 1/W slice of each global batch; after
backward, gradients are all-reduced and divided by W (`average_gradients`). Penalty terms depend on the
weights only, and their power-iteration vectors are updated identically on every rank, so with the
same global batch the run computes what a single process computes (up to float summation order).
Gradients are averaged by hand rather than through DistributedDataParallel's bucketed hooks so that
double-backprop penalties (spectreg) work unchanged. Only rank 0 certifies, writes checkpoints and
outputs; its decisions (stop, penalty weight) are broadcast to the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from speccert.errors import SpeccertError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str) -> tuple[DistInfo, str]:
    """Join the process group when launched by torchrun; returns (info, this rank's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda under torchrun, but no CUDA device is available")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(world, rank, local), device


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    if not info.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info.world_size)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """Run `fn` on rank 0 only and give its result to every rank; a SpeccertError raised there is
    raised on every rank (so no rank waits forever for a broadcast that never comes)."""
    if not info.enabled:
        return fn()
    result: Any = None
    if info.is_main:
        try:
            result = ("ok", fn())
        except SpeccertError as exc:
            result = ("error", exc)
    kind, value = broadcast_object(result, info)
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


def all_reduce_sum(values: list[float], info: DistInfo, device: str) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
