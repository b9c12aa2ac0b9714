"""Run by test_distributed_agreement.py, once per rank (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set).

Each rank audits its shard of the probes (``shard_positions``) with ``explain`` inside
``all_ranks_together()``, then ``gather_result`` and ``score``, as the callback does:

* ``sharded``: SaS, Grad-CAM, GradientSHAP (bound to the whole probe set), faithfulness, the
  intervention and the sanity check, no failure;
  the gathered result must be the one a single process computes on all probes.
* ``failing``: a method that raises on rank 1 only and faithfulness that fails on rank 1 only,
  part-way through its chunked forwards: both ranks must finish and agree.

Writes ``sharding<r>.pt`` with both gathered results as plain data. The builders are shared with
the single-process reference in the tests.
"""

from __future__ import annotations

import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_sas.audit.run import AuditResult, explain, score
from lightning_sas.audit.sharding import gather_result, shard_positions
from lightning_sas.methods import GradCAM, GradientSHAP, SaS
from lightning_sas.methods.base import AttributionMethod
from lightning_sas.probes.probe_set import Probes
from lightning_sas.runtime.distributed import all_ranks_together
from lightning_sas.scores.faithfulness import Faithfulness
from lightning_sas.trust.intervention import Artifacts

COUNT, SIZE = 5, 32  # odd: rank 1's shard is padded


class Flaky(nn.Module):
    """Class 1 for red, class 2 for blue in the top-left quarter, else class 0 (a shortcut model
    with clear maps and flips); raises on forward while ``fail`` is set (a rank-local fault)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        torch.manual_seed(0)  # the same weights on every rank, as DDP keeps them
        with torch.no_grad():
            weight = torch.rand(4, 3, 3, 3) / 4
            weight[:2, 1:] = weight[2:, :2] = 0  # channels 0 and 1 see red, 2 and 3 blue
            self.features[0].weight.copy_(weight)
            self.features[0].bias.fill_(-0.35)
            self.head[2].weight.copy_(torch.tensor([[0.0, 0, 0, 0], [30, 30, 0, 0], [0, 0, 30, 30]]))
            self.head[2].bias.copy_(torch.tensor([2.0, 0, 0]))
        where = torch.full((SIZE, SIZE), 0.25)
        where[: SIZE // 2, : SIZE // 2] = 1.0
        self.register_buffer("where", where)
        self.fail = False

    def forward(self, images: Tensor) -> Tensor:
        if self.fail:
            raise RuntimeError("injected fault")
        return self.head(self.features(images * self.where))


class FragileOnRank(GradCAM):
    """Grad-CAM that raises on one rank only."""

    name = "fragile"

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        if dist.is_initialized() and dist.get_rank() == self.rank:
            raise ValueError("fragile fails on this rank")
        return super()._attribute(model, images, targets)


class FaithfulnessFailingOnRank(Faithfulness):
    """Faithfulness whose model forwards fail on one rank, after its first agreement."""

    def __init__(self, model: Flaky, rank: int | None) -> None:
        super().__init__(steps=4, max_batch=4)
        self.model, self.rank = model, rank

    def __call__(self, *args, **kwargs):
        self.model.fail = self.rank is not None and dist.is_initialized() and dist.get_rank() == self.rank
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self.model.fail = False


def make_probes() -> Probes:
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(COUNT, 3, SIZE, SIZE, generator=generator) * 0.4
    for image, (y, x, channel) in zip(images, [(0, 0, 0), (16, 16, 0), (0, 16, 2), (4, 4, 2), (8, 8, 0)], strict=True):
        image[channel, y : y + 16, x : x + 16] += 0.6  # a red or blue square
    roi = torch.zeros(COUNT, SIZE, SIZE, dtype=torch.bool)
    roi[:, :12, :12] = True
    roi[-1] = False  # a probe without ROI
    labels = torch.tensor([0, 1, 2, 1, 0])
    return Probes(images=images, labels=labels, roi=roi, names=[f"p{i}" for i in range(COUNT)])


def make_artifacts() -> Artifacts:
    patches = torch.zeros(2, 3, 16, 16)
    patches[:, 0] = 1.0  # red, and magenta: flips to class 1 where it lands in the top-left quarter
    patches[1, 2] = 1.0
    return Artifacts(target_class=1, patches=patches, masks=torch.ones(2, 16, 16), trials=3, seed=5)


def audit_settings(model: Flaky, failing_rank: int | None) -> dict:
    """``explain`` keywords; with ``failing_rank``, the fragile method and the failing faithfulness.

    The methods are bound to the whole probe set before sharding, as the callback does (GradientSHAP's
    ``background="probes"``).
    """
    methods: dict[str, AttributionMethod] = {
        "sas": SaS(iterations=2, num_masks=4, max_batch=8),
        "gradcam": GradCAM(),
        "gradientshap": GradientSHAP(samples=4),
    }
    if failing_rank is not None:
        methods = {"fragile": FragileOnRank(failing_rank), **methods}
    everything = make_probes().images
    return {
        "methods": {name: method.bind_probe_set(everything) for name, method in methods.items()},
        "faithfulness": FaithfulnessFailingOnRank(model, failing_rank),
        "artifacts": make_artifacts(),
        "sanity_stages": 2,
    }


def plain(result: AuditResult) -> dict:
    """What the tests compare, as plain tensors and numbers."""
    intervention = result.intervention
    return {
        "maps": result.maps,
        "masks": result.masks,
        "predictions": result.predictions,
        "logits": result.logits,
        "roi_share": result.roi_share,
        "mean_scores": result.mean_scores(),
        "errors": result.errors,
        "deletion": {name: curves.deletion for name, curves in result.faithfulness.items()},
        "flip_rate": None if intervention is None else intervention.flip_rate,
        "probability_change": None if intervention is None else intervention.probability_change,
        "sanity": None if result.sanity is None else (result.sanity.per_probe, result.sanity.similarity),
    }


def audit_shard(model: Flaky, probes: Probes, failing_rank: int | None, rank: int, world_size: int) -> dict:
    """One rank's sharded audit, gathered and scored (what the callback does)."""

    def all_gather(tensor: Tensor) -> Tensor:  # as LightningModule.all_gather: [world, *shape]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    shard = probes.subset(shard_positions(len(probes), world_size, rank))
    with all_ranks_together():
        local = explain(model, shard, **audit_settings(model, failing_rank))
        result = gather_result(local, len(probes), world_size, all_gather)
    return plain(score(result, probes.roi))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # SaS's advice on these tiny random logits
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    model, probes = Flaky().eval(), make_probes()
    results = {
        "sharded": audit_shard(model, probes, None, rank, world_size),
        "failing": audit_shard(model, probes, 1, rank, world_size),
    }
    torch.save(results, out / f"sharding{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
