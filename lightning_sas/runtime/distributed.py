"""Agreement between DDP ranks while they audit together.

Under DDP every rank explains its own shard of the probes. A model whose forward contains
collectives (FSDP, tensor parallelism, synchronised BatchNorm) deadlocks unless every rank
makes the same number of forward calls in the same order, so the choices that decide the
number of forwards (SaS's chunk size, its out-of-memory retries) are agreed across ranks.

Agreement happens only inside :func:`all_ranks_together`, which the callback enters when every
rank runs the audit: a method called on one rank alone (rank-zero code, the CLI) must never
wait for the others.

Failures are agreed too, so that an error on one rank never leaves the others waiting in a
collective: every agreement is one all-reduce of ``(no rank failed, value)``. A rank that
raises inside :func:`failing_together` (or inside a chunked attempt, see
:func:`~lightning_sas.methods.chunking.retry_out_of_memory`) sends "failed" in place of the next
agreement the others make, wherever they are; they raise :class:`FailedOnAnotherRank` there,
so every rank has made the same collectives when the error leaves the block.

Limitation: an out-of-memory error (or any error) is agreed on *after* an attempt. For a model
whose forward has collectives, a rank that fails part-way through an attempt stops making
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
#: Set on an exception whose failure the other ranks have been told about.
_TOLD = "_lightning_sas_ranks_told"


class FailedOnAnotherRank(RuntimeError):
    """Raised on the ranks that did not fail when another rank's step failed."""

    def __init__(self, message: str = "another rank failed") -> None:
        super().__init__(message)
        object.__setattr__(self, _TOLD, True)


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


def _reduce(value: int, device: torch.device, failed: bool) -> tuple[int, bool]:
    """``(min value, whether any rank failed)`` over the ranks: one all-reduce."""
    # NCCL reduces only CUDA tensors, gloo CPU ones: use the device the audit runs on.
    on = device if dist.get_backend() == "nccl" else "cpu"
    reduced = torch.tensor([0 if failed else 1, value], dtype=torch.long, device=on)
    dist.all_reduce(reduced, op=dist.ReduceOp.MIN)
    return int(reduced[1].item()), int(reduced[0].item()) == 0


def agreed_minimum(value: int, device: torch.device) -> int:
    """The smallest ``value`` over all ranks (``value`` itself outside :func:`all_ranks_together`).

    Raises:
        FailedOnAnotherRank: If another rank failed instead of taking part in this agreement.
    """
    if not _agreeing():
        return value
    smallest, failed = _reduce(value, device, failed=False)
    if failed:
        raise FailedOnAnotherRank()
    return smallest


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself outside :func:`all_ranks_together`).

    Raises:
        FailedOnAnotherRank: If another rank failed instead of taking part in this agreement.
    """
    return agreed_minimum(0 if flag else 1, device) == 0


def told_the_other_ranks(error: BaseException) -> bool:
    """Whether the other ranks already know of ``error`` (or of an error it was raised from)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if getattr(current, _TOLD, False):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def tell_the_other_ranks(error: BaseException, device: torch.device) -> None:
    """Take part in the others' next agreement with "failed" (once per error; nothing outside
    :func:`all_ranks_together`), so that no rank waits for this one."""
    if not _agreeing() or told_the_other_ranks(error):
        return
    _reduce(0, device, failed=True)
    # Past any __setattr__ an exception class overrides: telling twice would leave a collective unpaired.
    object.__setattr__(error, _TOLD, True)


@contextmanager
def failing_together(device: torch.device, what: str = "this step") -> Iterator[None]:
    """Every rank leaves the block the same way: all normally, or all raising.

    On exit every rank learns (one all-reduce) whether any rank raised inside. The rank that
    raised re-raises its own error; the others raise :class:`FailedOnAnotherRank`
    (``"<what> failed on another rank"``). Outside :func:`all_ranks_together` the block is a
    plain pass-through (no collective).

    Args:
        device: Where the audit runs (NCCL agrees on CUDA tensors).
        what: The step's name, for the other ranks' error.

    Raises:
        FailedOnAnotherRank: If the block raised on another rank only.
    """
    if not _agreeing():
        yield
        return
    try:
        yield
    except FailedOnAnotherRank:
        raise FailedOnAnotherRank(f"{what} failed on another rank") from None
    except Exception as error:  # whatever this rank raised, the others must learn it
        tell_the_other_ranks(error, device)
        raise
    _, failed = _reduce(0, device, failed=False)
    if failed:
        raise FailedOnAnotherRank(f"{what} failed on another rank")
