"""Before the first training step: what an audit will cost, and which layer each Grad-CAM explains.

Both need the Trainer (its precision, its training loader) and the chosen probes, so they run
at ``on_train_start``; both are measured on a couple of probes only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lightning_sas.audit.cost import TIMED_PROBES, AuditCost, estimate_audit
from lightning_sas.callback.messages import cost_report
from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.gradcam import GradCAM
from lightning_sas.probes.probe_set import Probes
from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector


class AuditTiming(Protocol):
    """The callback's settings the estimate reads."""

    output: OutputSelector
    every_n_epochs: int


def estimate_cost(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    probes: Probes,
    passes: Mapping[str, tuple[int, bool]],
    settings: AuditTiming,
    warning_share: float,
) -> tuple[AuditCost, str, str | None]:
    """Time one pass on a few probes and say what each audit will cost against the training time
    between two audits: ``(cost, text, warning or None)`` (see
    :func:`~lightning_sas.callback.messages.cost_report`)."""
    output, every_n_epochs = settings.output, settings.every_n_epochs
    images = trainer.precision_plugin.convert_input(probes.images[:TIMED_PROBES].to(pl_module.device))
    with trainer.precision_plugin.forward_context():
        cost = estimate_audit(pl_module, images, passes, output)
    batch_size = getattr(trainer.train_dataloader, "batch_size", None)
    batches = trainer.num_training_batches
    training_images = None
    if isinstance(batch_size, int) and isinstance(batches, int | float) and math.isfinite(batches):
        training_images = batches * batch_size * every_n_epochs
    return cost_report(cost, len(probes), training_images, warning_share)


def locate_layers(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    probes: Probes,
    methods: Mapping[str, AttributionMethod],
    output: OutputSelector,
) -> dict[str, tuple[str, str]]:
    """Per Grad-CAM method, ``(layer, "given" | "chosen automatically")``, found on two probes.

    Raises:
        MisconfigurationException: If a given layer name is not in the model (with the nearest
            valid names): a configuration error, before any training step.
        ValueError: If the automatic search finds no layer (audit work: reported per ``on_error``).
    """
    grad_cams = {name: method for name, method in methods.items() if isinstance(method, GradCAM)}
    if not grad_cams:
        return {}
    images = trainer.precision_plugin.convert_input(probes.images[:2].to(pl_module.device))
    layers = {}
    with attribution_mode(pl_module) as model, trainer.precision_plugin.forward_context():
        classifier = ClassifierOutput.wrap(model, output)
        for name, method in grad_cams.items():
            try:
                layer = method.layer_name(classifier, images)
            except ValueError as error:
                if method.target_layer is None:
                    raise
                raise MisconfigurationException(f"SASAuditCallback: method {name!r}: {error}") from error
            layers[name] = (layer, "given" if method.target_layer is not None else "chosen automatically")
    return layers
