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

from lightning_sas.distributed import agreed_minimum, any_rank

T = TypeVar("T")


def retry_out_of_memory(attempt: Callable[[int], T], chunk: int, device: torch.device, what: str) -> T:
    """``attempt(chunk)``, retried with half the chunk after an out-of-memory error.

    Args:
        attempt: Runs the whole computation with at most ``chunk`` images per forward.
        chunk: The first chunk size to try (agreed across ranks first).
        device: Where the computation runs (for the agreement and to empty the CUDA cache).
        what: The computation's name, for the warning.

    Returns:
        What ``attempt`` returned.

    Raises:
        torch.OutOfMemoryError: If even one image per forward does not fit.
    """
    chunk = agreed_minimum(chunk, device)
    while True:
        out_of_memory = False
        result = None
        try:
            result = attempt(chunk)
        except torch.OutOfMemoryError:
            if chunk <= 1:
                raise
            out_of_memory = True
        # Outside the except block, so the failed attempt's tensors (held by the traceback)
        # are freed before the cache is emptied and the retry starts.
        if not any_rank(out_of_memory, device):
            return result  # type: ignore[return-value]
        del result
        chunk = max(1, agreed_minimum(chunk // 2, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(f"{what} ran out of memory; retrying with max_batch={chunk}.", stacklevel=3)
