"""Run by test_distributed_agreement.py, once per rank (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set).

Each rank explains its own images with SaS inside ``all_ranks_together()``:

* ``collective``: the model's forward calls ``all_reduce``; rank r asks for ``max_batch=2 + r``,
  so without agreement the ranks would make different numbers of forwards and deadlock.
* ``out_of_memory``: the model has no collective; on rank 1 it runs out of memory above 2 images,
  so only rank 1's first attempt fails, and both ranks must retry with the same smaller chunk
  (else the agreement's own collectives go unpaired).
* ``error``: as ``out_of_memory`` but rank 1's forward raises a ``ValueError`` (not out of memory):
  rank 1 must raise it and rank 0 a "failed on another rank" error, neither waiting for the other.

Writes ``rank<r>.pt`` with each scenario's maps, forward batch sizes and warnings.
"""

from __future__ import annotations

import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from models import CollectiveInForward

from lightning_sas.methods import SaS
from lightning_sas.runtime.distributed import all_ranks_together

ITERATIONS, NUM_MASKS = 2, 4


def probe_images(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s shard: the same number of images on every rank, different content."""
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(100 + rank))
    return images, torch.tensor([rank, 3])


def make_model(oom_above: int | None = None, collective: bool = True) -> CollectiveInForward:
    torch.manual_seed(0)  # the same weights on every rank, as DDP keeps them
    return CollectiveInForward(num_classes=4, oom_above=oom_above, collective=collective).eval()


class BrokenAbove(CollectiveInForward):
    """Raises ``ValueError`` (a bug, not out of memory) for batches above ``oom_above``."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        try:
            return super().forward(images)
        except torch.OutOfMemoryError as error:
            raise ValueError(f"broken forward: {error}") from None


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    images, targets = probe_images(rank)
    results = {}

    model = make_model()
    with all_ranks_together():
        maps = SaS(iterations=ITERATIONS, num_masks=NUM_MASKS, max_batch=2 + rank).attribute(model, images, targets)
    results["collective"] = {"maps": maps, "batch_sizes": model.batch_sizes}

    # No collective in this forward: a rank that fails mid-attempt cannot keep its forward
    # collectives paired with the other rank's (the retry is agreed only after the attempt).
    model = make_model(oom_above=2 if rank == 1 else None, collective=False)
    with all_ranks_together(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = SaS(iterations=ITERATIONS, num_masks=NUM_MASKS, max_batch=4).attribute(model, images, targets)
    results["out_of_memory"] = {
        "maps": maps,
        "batch_sizes": model.batch_sizes,
        # The retries only (SaS may also warn that these tiny random logits suit its objective badly).
        "warnings": [str(warning.message) for warning in caught if "out of memory" in str(warning.message)],
    }

    torch.manual_seed(0)
    model = BrokenAbove(num_classes=4, oom_above=2 if rank == 1 else None, collective=False).eval()
    try:
        with all_ranks_together():
            SaS(iterations=ITERATIONS, num_masks=NUM_MASKS, max_batch=4).attribute(model, images, targets)
        results["error"] = None
    except Exception as error:  # noqa: BLE001 - the test reads which error each rank raised
        results["error"] = f"{type(error).__name__}: {error}"

    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
