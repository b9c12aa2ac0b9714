"""Agreement between DDP ranks while they audit together.

Under DDP every rank explains its own shard of the probes. A model whose forward contains
collectives (FSDP, tensor parallelism, synchronised BatchNorm) deadlocks unless every rank
makes the same number of forward calls in the same order, so the choices that decide the
number of forwards (SaS's chunk size, its out-of-memory retries) are agreed across ranks.

Agreement happens only inside :func:`all_ranks_together`, which the callback enters when every
rank runs the audit: a method called on one rank alone (rank-zero code, the CLI) must never
wait for the others.

Limitation: an out-of-memory error is agreed on *after* an attempt. For a model whose forward
has collectives, a rank that runs out of memory part-way through an attempt stops making
forward calls while the others go on, so their collectives go unpaired (gloo aborts with a
"collective mismatch"; NCCL may hang until its timeout). Give such models an explicit
``max_batch`` that fits; models without collectives in forward retry safely.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.distributed as dist

_ALL_RANKS: ContextVar[bool] = ContextVar("lightning_sas_all_ranks", default=False)


@contextmanager
def all_ranks_together() -> Iterator[None]:
    """Inside this block every rank of the default process group makes the same calls."""
    token = _ALL_RANKS.set(True)
    try:
        yield
    finally:
        _ALL_RANKS.reset(token)


def _agreeing() -> bool:
    return _ALL_RANKS.get() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agreed_minimum(value: int, device: torch.device) -> int:
    """The smallest ``value`` over all ranks (``value`` itself outside :func:`all_ranks_together`)."""
    if not _agreeing():
        return value
    # NCCL reduces only CUDA tensors, gloo CPU ones: use the device the audit runs on.
    reduced = torch.tensor([value], dtype=torch.long, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(reduced, op=dist.ReduceOp.MIN)
    return int(reduced.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself outside :func:`all_ranks_together`)."""
    return agreed_minimum(0 if flag else 1, device) == 0
