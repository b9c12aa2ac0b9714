"""Chunked forwards that survive out-of-memory: halve the chunk and try again.

SaS and the faithfulness curves push many composites through the model in chunks. When a
chunk does not fit, the whole attempt is retried with half the chunk, down to one image per
forward. Under a distributed audit every rank takes the same chunk and retries together (see
:mod:`lightning_sas.distributed`), so all ranks make the same forward calls.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

from lightning_sas.distributed import FailedOnAnotherRank, agreed_minimum, any_rank, tell_the_other_ranks

T = TypeVar("T")


def retry_out_of_memory(attempt: Callable[[int], T], chunk: int, device: torch.device, what: str) -> T:
    """``attempt(chunk)``, retried with half the chunk after an out-of-memory error.

    Under :func:`~lightning_sas.distributed.all_ranks_together` the ranks agree after every
    attempt, on *any* error: a rank that raises tells the others before raising, and they raise
    :class:`~lightning_sas.distributed.FailedOnAnotherRank`, so no rank waits for another.

    Args:
        attempt: Runs the whole computation with at most ``chunk`` images per forward.
        chunk: The first chunk size to try (agreed across ranks first).
        device: Where the computation runs (for the agreement and to empty the CUDA cache).
        what: The computation's name, for the warning.

    Returns:
        What ``attempt`` returned.

    Raises:
        torch.OutOfMemoryError: If even one image per forward does not fit.
        FailedOnAnotherRank: If the attempt failed on another rank only.
    """
    try:
        return _retried(attempt, chunk, device, what)
    except FailedOnAnotherRank:
        raise FailedOnAnotherRank(f"{what} failed on another rank") from None


def _retried(attempt: Callable[[int], T], chunk: int, device: torch.device, what: str) -> T:
    chunk = agreed_minimum(chunk, device)
    while True:
        out_of_memory = False
        result = None
        try:
            result = attempt(chunk)
        except torch.OutOfMemoryError as error:
            if chunk <= 1:
                tell_the_other_ranks(error, device)
                raise
            out_of_memory = True
        except FailedOnAnotherRank:
            raise  # the ranks already agree: this failure was the agreement
        except Exception as error:  # any error: the other ranks must learn it before it is raised
            tell_the_other_ranks(error, device)
            raise
        # Outside the except block, so the failed attempt's tensors (held by the traceback)
        # are freed before the cache is emptied and the retry starts.
        if not any_rank(out_of_memory, device):
            return result  # type: ignore[return-value]
        del result
        chunk = max(1, agreed_minimum(chunk // 2, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(f"{what} ran out of memory; retrying with max_batch={chunk}.", stacklevel=4)
