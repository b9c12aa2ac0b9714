"""What an audit will cost, said before it is paid.

An audit's time is almost all model passes: SaS alone costs ``iterations × 2 × schedule_subset``
passes per probe (950 at the defaults; 3,800 for ``SaS.paper()``), against one for Grad-CAM.
:func:`audit_passes` counts the passes of every part of an audit from the settings;
:func:`estimate_audit` times one pass of the real model on the real probes and multiplies, so
the callback (before the first training step) and the CLI (before it starts) can say how long
an audit will take, and what to change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector

#: Images timed for the per-pass estimate: the audit forwards large chunks, so a batch of one
#: would overstate the per-image cost of small models; probes are repeated up to this count.
TIMED_PROBES = 8
#: Timed repetitions of each kind of pass (the fastest counts).
TIMINGS = 3


def method_passes(method: object) -> int:
    """Model passes per probe a method declares (``passes_per_probe()``); 1 if it declares none."""
    declared = getattr(method, "passes_per_probe", None)
    return int(declared()) if callable(declared) else 1


@dataclass
class AuditCost:
    """The expected cost of one audit.

    Attributes:
        passes: Per part of the audit (each method, ``faithfulness``, ``intervention``,
            ``sanity``), ``(model passes, whether they need a backward)``.
        seconds_per_pass: Measured seconds per image for a forward + backward, and for a
            forward alone.
        seconds: The estimated total.
        device: Where it was measured.
    """

    passes: dict[str, tuple[int, bool]]
    seconds_per_pass: tuple[float, float]
    seconds: float
    device: str

    def describe(self) -> str:
        """``"≈ 812 s on cpu (sas 30,400 passes, gradcam 8, ...)"``."""
        parts = ", ".join(f"{name} {count:,} passes" for name, (count, _) in self.passes.items())
        return f"≈ {self.seconds:,.0f} s on {self.device} ({parts})"


def audit_passes(
    methods: Mapping[str, object],
    num_probes: int,
    *,
    faithfulness_steps: int | None = None,
    intervention_trials: int | None = None,
    sanity_stages: int = 0,
    discovery_passes: int = 0,
) -> dict[str, tuple[int, bool]]:
    """Model passes of each part of an audit of ``num_probes`` probes.

    Example:
        >>> from lightning_sas.methods import GradCAM, SaS
        >>> audit_passes({"sas": SaS(iterations=10), "gradcam": GradCAM()}, 8, faithfulness_steps=20)
        {'sas': (800, True), 'gradcam': (8, True), 'faithfulness': (624, False)}
    """
    per_method = {name: method_passes(method) * num_probes for name, method in methods.items()}
    passes = {name: (count, True) for name, count in per_method.items()}
    if faithfulness_steps is not None:
        # The image and the baseline once, then 2 (steps − 1) composites per method and probe.
        passes["faithfulness"] = ((2 + 2 * (faithfulness_steps - 1) * len(methods)) * num_probes, False)
    if intervention_trials is not None:
        passes["intervention"] = ((intervention_trials + 1) * num_probes, False)
    if sanity_stages:
        # The trained model's maps once more, then one attribution per randomisation stage.
        passes["sanity"] = ((sanity_stages + 1) * sum(per_method.values()), True)
    if discovery_passes:
        passes["discovery"] = (discovery_passes, False)  # the transplant test's forwards
    return passes


def seconds_per_pass(model: nn.Module, images: Tensor, output: OutputSelector = None) -> tuple[float, float]:
    """Seconds per image of a forward + backward (w.r.t. the input) and of a forward alone.

    Times a batch of :data:`TIMED_PROBES` probes :data:`TIMINGS` times each way after a
    warm-up (the fastest counts), with the model in attribution mode (no trace left on it or
    on the random number generators).
    """
    repeats = -(-TIMED_PROBES // images.shape[0])  # ceil
    sample = images.detach().repeat(repeats, 1, 1, 1)[:TIMED_PROBES]
    with attribution_mode(ClassifierOutput.wrap(model, output)) as forward_module:
        warm_up = sample.clone().requires_grad_(True)  # lazy initialisation, kernel selection
        torch.autograd.grad(forward_module(warm_up).float().sum(), warm_up)
        # The fastest of a few repetitions: a busy machine only ever slows a run down.
        forward = both = math.inf
        for _ in range(TIMINGS):
            with torch.no_grad():
                _synchronize(sample)
                started = time.perf_counter()
                forward_module(sample)
                _synchronize(sample)
                forward = min(forward, time.perf_counter() - started)
            started = time.perf_counter()
            inputs = sample.clone().requires_grad_(True)
            torch.autograd.grad(forward_module(inputs).float().sum(), inputs)
            _synchronize(sample)
            both = min(both, time.perf_counter() - started)
    return both / len(sample), forward / len(sample)


def estimate_audit(
    model: nn.Module, images: Tensor, passes: dict[str, tuple[int, bool]], output: OutputSelector = None
) -> AuditCost:
    """Time one pass on ``images`` and scale it to ``passes`` (from :func:`audit_passes`)."""
    with_grad, forward_only = seconds_per_pass(model, images, output)
    seconds = sum(count * (with_grad if backward else forward_only) for count, backward in passes.values())
    return AuditCost(passes, (with_grad, forward_only), seconds, str(images.device))


def _synchronize(tensor: Tensor) -> None:
    if tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)
