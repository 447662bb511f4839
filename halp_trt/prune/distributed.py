"""What the pruner needs from ``torch.distributed`` under ``torchrun``.

Every rank accumulates importance from its own minibatches; before a pruning step the
scores are averaged over ranks (one all-reduce of a flat vector), rank 0 solves the
knapsack, and its decision is broadcast, so every rank applies the same masks even if
floating-point sums differed in the last bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def is_distributed() -> bool:
    """True inside an initialised process group (``torchrun``) with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _device() -> torch.device:
    import torch.distributed as dist

    # NCCL reduces CUDA tensors only; gloo (and mpi) reduce CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_scores(scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Average per-channel scores over ranks (unchanged outside a process group)."""
    if not is_distributed():
        return scores
    import torch.distributed as dist

    keys = sorted(scores)
    sizes = [scores[k].size for k in keys]
    flat = torch.from_numpy(np.concatenate([scores[k] for k in keys]).astype(np.float64))
    flat = flat.to(_device())
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = (flat / dist.get_world_size()).cpu().numpy()
    out, start = {}, 0
    for k, n in zip(keys, sizes):
        out[k] = flat[start : start + n].copy()
        start += n
    return out


def broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(
        box, src=src, device=_device() if dist.get_backend() == "nccl" else None
    )
    return box[0]


@contextlib.contextmanager
def process_group_from_env(device: str | None = None) -> Iterator[str | None]:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Outside ``torchrun`` (``WORLD_SIZE`` unset or 1), or inside a group the caller
    already initialised, it does nothing. A group it created is destroyed on exit.

    Args:
        device: the device asked for (None: CUDA if present).

    Yields:
        The device this rank trains on (its ``LOCAL_RANK`` GPU under NCCL).
    """
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield device
        return
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    finished = False
    try:
        yield device
        finished = True
    finally:
        if dist.is_initialized():
            if finished:
                synchronize()
            dist.destroy_process_group()


def synchronize() -> None:
    """Wait until every rank gets here (a barrier; nothing outside a process group).

    Called before tearing a group down: a rank that closes its connections while another
    still finishes its last collective can abort that rank (gloo's transport ends the
    process from its own thread). Only on the way out of a successful run: after an error
    the other ranks may never arrive.
    """
    if not is_distributed():
        return
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
