"""One audit on several processes: each rank explains its share of the probes, every rank gets all results.

Both front doors use it: the training callback under DDP (the Trainer's ranks) and the
command line under Lightning Fabric (``lightning-sas audit --devices N``). On one process the
share is every probe. With several, the parts are agreed across ranks
(:func:`~lightning_sas.runtime.distributed.failing_together`), so a failure on one rank fails
on all of them and none waits in a collective; the result is gathered generically
(:func:`~lightning_sas.audit.sharding.gather_result`) and scored the same on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sas.audit.discovery import DiscoveryOptions, run_discovery
from lightning_sas.audit.run import AuditResult, explain, score
from lightning_sas.audit.sharding import AllGather, gather_result, shard_positions
from lightning_sas.methods.base import AttributionMethod
from lightning_sas.probes.probe_set import Probes
from lightning_sas.runtime.distributed import failing_together

__all__ = ["Ranks", "explain_on_every_rank"]


@dataclass(frozen=True)
class Ranks:
    """The processes that audit together, as a Trainer or Fabric sees them.

    Attributes:
        world_size: How many processes explain a share each.
        rank: This process's global rank.
        all_gather: ``tensor -> [world_size, *tensor.shape]`` (``LightningModule.all_gather``,
            ``Fabric.all_gather``).
        device: Where this rank's model runs.
        precision: A Lightning precision plugin (``convert_input``, ``forward_context``): the
            audit runs in the training precision; ``None``: as the model is.
    """

    world_size: int
    rank: int
    all_gather: AllGather
    device: torch.device
    precision: Any = None


def explain_on_every_rank(
    model: nn.Module,
    probes: Probes,
    methods: Mapping[str, AttributionMethod],
    ranks: Ranks,
    previous_masks: Mapping[str, Tensor] | None = None,
    discovery: DiscoveryOptions | None = None,
    **options: Any,
) -> AuditResult:
    """Explain and score ``probes`` sharded over ``ranks``, then look for shortcuts nobody named
    on all of them (``discovery``, when it applies).

    Args:
        model: The classifier (on ``ranks.device``).
        probes: The whole probe set (on any device).
        methods: Method objects by name.
        ranks: The processes auditing together (one: ``world_size=1``).
        previous_masks: Warm-start states of the previous audit, per method, for every probe.
        discovery: When and how to run shortcut discovery (every rank runs it on every probe,
            deterministically: the ranks agree on the verdict).
        **options: The rest of :func:`~lightning_sas.audit.run.explain`'s keyword arguments.
    """
    device, count = ranks.device, len(probes)
    convert = ranks.precision.convert_input if ranks.precision is not None else (lambda images: images)
    mine = shard_positions(count, ranks.world_size, ranks.rank)
    with failing_together(device, "the audit"):
        # Methods that read the whole probe set (GradientSHAP's background) see all of it, not
        # the rank's shard: the maps do not depend on the number of ranks.
        everything = convert(probes.images.to(device))
        bound = {
            name: method.bind_probe_set(everything) if hasattr(method, "bind_probe_set") else method
            for name, method in methods.items()
        }
        shard = probes.subset(mine).to(device)
        shard.images = convert(shard.images)
        initial_states = {name: mask[mine].to(device) for name, mask in (previous_masks or {}).items()}
        with _forward_context(ranks):
            local = explain(model, shard, bound, initial_states=initial_states, **options)
    result = score(gather_result(local, count, ranks.world_size, ranks.all_gather), probes.roi)
    if discovery is not None and discovery.applies(probes, options.get("artifacts") is not None):
        whole = probes.to(device)
        whole.images = everything
        with failing_together(device, "shortcut discovery"), _forward_context(ranks):
            run_discovery(model, whole, result, discovery, options.get("output"))
    return result


def _forward_context(ranks: Ranks) -> Any:
    return ranks.precision.forward_context() if ranks.precision is not None else nullcontext()
