"""One audit inside a training run: each rank explains its share of the probes, everyone gets all results.

On one device the share is every probe. Under DDP the parts are agreed across ranks
(:func:`~lightning_sas.runtime.distributed.failing_together`), so a failure on one rank fails
on all of them and none waits in a collective; the result is gathered generically
(:func:`~lightning_sas.audit.sharding.gather_result`) and scored the same on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from lightning_sas.audit.discovery import DiscoveryOptions, run_discovery
from lightning_sas.audit.run import AuditResult, explain, score
from lightning_sas.audit.sharding import gather_result, shard_positions
from lightning_sas.methods.base import AttributionMethod
from lightning_sas.probes.probe_set import Probes
from lightning_sas.runtime.distributed import failing_together


def explain_on_every_rank(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    probes: Probes,
    methods: Mapping[str, AttributionMethod],
    previous_masks: Mapping[str, Tensor],
    discovery: DiscoveryOptions | None = None,
    **options: Any,
) -> AuditResult:
    """Explain and score ``probes`` in the module's precision, sharded over the Trainer's ranks,
    then look for shortcuts nobody named on all of them (``discovery``, when it applies).

    Args:
        trainer: The running Trainer (world size, rank, precision).
        pl_module: The module being trained.
        probes: The whole probe set (on any device).
        methods: Method objects by name.
        previous_masks: Warm-start states of the previous audit, per method, for every probe.
        discovery: When and how to run shortcut discovery (every rank runs it on every probe,
            deterministically: the ranks agree on the verdict).
        **options: The rest of :func:`~lightning_sas.audit.run.explain`'s keyword arguments.
    """
    device, count = pl_module.device, len(probes)
    mine = shard_positions(count, trainer.world_size, trainer.global_rank)
    with failing_together(device, "the audit"):
        # Methods that read the whole probe set (GradientSHAP's background) see all of it, not
        # the rank's shard: the maps do not depend on the number of ranks.
        everything = trainer.precision_plugin.convert_input(probes.images.to(device))
        bound = {
            name: method.bind_probe_set(everything) if hasattr(method, "bind_probe_set") else method
            for name, method in methods.items()
        }
        shard = probes.subset(mine).to(device)
        shard.images = trainer.precision_plugin.convert_input(shard.images)
        initial_states = {name: mask[mine].to(device) for name, mask in previous_masks.items()}
        with trainer.precision_plugin.forward_context():
            local = explain(pl_module, shard, bound, initial_states=initial_states, **options)
    result = score(gather_result(local, count, trainer.world_size, pl_module.all_gather), probes.roi)
    if discovery is not None and discovery.applies(probes, options.get("artifacts") is not None):
        whole = probes.to(device)
        whole.images = everything
        with trainer.precision_plugin.forward_context():
            run_discovery(pl_module, whole, result, discovery, options.get("output"))
    return result
