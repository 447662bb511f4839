"""What the pruner needs from ``torch.distributed`` under ``torchrun``.

Every rank accumulates importance from its own minibatches; before a pruning step the
scores are averaged over ranks (one all-reduce of a flat vector), rank 0 solves the
knapsack, and its decision is broadcast, so every rank applies the same masks even if
floating-point sums differed in the last bit.
"""

from __future__ import annotations

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
