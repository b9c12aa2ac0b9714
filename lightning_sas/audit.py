"""One audit: explain the probes with every method and score the maps against the ROIs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_sas.methods import METHODS, AttributionMethod, SaS
from lightning_sas.metrics import roi_mass, roi_share
from lightning_sas.model_state import attribution_mode
from lightning_sas.probes import Probes

Target = Literal["pred", "label"]


@dataclass
class AuditResult:
    """What one audit found, still on the device (maps) or as small tensors (scores).

    Attributes:
        maps: Per method, ``[N, H, W]`` attribution maps in [0, 1].
        predictions: ``[N]`` predicted classes.
        confidences: ``[N]`` softmax probability of the predicted class.
        targets: ``[N]`` the classes that were explained.
        roi_share: Per method, ``[N]`` relevance rank accuracy (NaN for probes without ROI).
        roi_mass: Per method, ``[N]`` relevance mass accuracy (NaN for probes without ROI).
        seconds: Wall time of the audit.
        masks: Per SaS method, the final mask parameter ``[N, 1, h, w]`` (to warm-start the
            next audit from).
    """

    maps: dict[str, Tensor]
    predictions: Tensor
    confidences: Tensor
    targets: Tensor
    roi_share: dict[str, Tensor]
    roi_mass: dict[str, Tensor]
    seconds: float
    masks: dict[str, Tensor] = field(default_factory=dict)

    def mean_scores(self) -> dict[str, dict[str, float]]:
        """Per method: ``roi_share`` and ``roi_mass`` averaged over the probes that have an ROI.

        Methods are left out when no probe has an ROI.
        """
        means: dict[str, dict[str, float]] = {}
        for method in self.maps:
            share, mass = self.roi_share[method], self.roi_mass[method]
            if bool(torch.isnan(share).all()):
                continue
            means[method] = {"roi_share": float(share.nanmean()), "roi_mass": float(mass.nanmean())}
        return means


def resolve_methods(methods: Sequence[str | AttributionMethod]) -> dict[str, AttributionMethod]:
    """Method objects by name from names (``"sas"``, ``"gradcam"``) or objects with ``attribute``.

    Raises:
        ValueError: For an unknown name, a duplicate name, or an empty list.
        TypeError: For an object without an ``attribute`` method.
    """
    if isinstance(methods, str) or not isinstance(methods, Sequence) or len(methods) == 0:
        raise ValueError(f"`methods` must be a non-empty list of method names or objects, got {methods!r}.")
    resolved: dict[str, AttributionMethod] = {}
    for method in methods:
        if isinstance(method, str):
            if method not in METHODS:
                raise ValueError(f"`methods` has an unknown method name {method!r}; known names: {sorted(METHODS)}.")
            method = METHODS[method]()
        elif not callable(getattr(method, "attribute", None)):
            raise TypeError(
                f"`methods` entries must be names or objects with .attribute(model, images, targets), "
                f"got {type(method).__name__}."
            )
        name = getattr(method, "name", None) or type(method).__name__.lower()
        if name in resolved:
            raise ValueError(f"`methods` lists {name!r} twice; give each method once (or distinct `name`s).")
        resolved[name] = method
    return resolved


def predict(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """``(predicted class, its softmax probability)`` for each image, without side effects."""
    with attribution_mode(model) as forward_module, torch.no_grad():
        probabilities = forward_module(images).float().softmax(dim=1)
    confidences, predictions = probabilities.max(dim=1)
    return predictions, confidences


def explain(
    model: nn.Module,
    probes: Probes,
    methods: Mapping[str, AttributionMethod],
    target: Target = "pred",
    progress: Callable[[str], None] | None = None,
    initial_masks: Mapping[str, Tensor] | None = None,
    warm_start_iterations: int | None = None,
) -> AuditResult:
    """Explain ``probes`` with each method (scores left empty: see :func:`score`).

    ``progress``, if given, is called with each method's name before it runs. SaS methods
    with an entry in ``initial_masks`` start from it and run ``warm_start_iterations`` steps
    (their own ``iterations`` when ``None``); every SaS method's final mask is returned in
    ``masks``.

    Raises:
        ValueError: If ``target="label"`` and a probe has no label.
    """
    started = time.perf_counter()
    predictions, confidences = predict(model, probes.images)
    if target == "label":
        if bool((probes.labels < 0).any()):
            raise ValueError("`target`='label' needs a label for every probe; some probes have none.")
        targets = probes.labels.to(predictions.device)
    else:
        targets = predictions
    maps, masks = {}, {}
    for name, method in methods.items():
        if progress is not None:
            progress(name)
        if isinstance(method, SaS):
            start = (initial_masks or {}).get(name)
            if start is not None and start.shape[0] != len(probes):
                start = None  # the probe set changed: start cold
            iterations = warm_start_iterations if start is not None else None
            maps[name], masks[name] = method.attribute_from(model, probes.images, targets, start, iterations)
        else:
            maps[name] = method.attribute(model, probes.images, targets)
    return AuditResult(
        maps=maps,
        predictions=predictions,
        confidences=confidences,
        targets=targets,
        roi_share={},
        roi_mass={},
        seconds=time.perf_counter() - started,
        masks=masks,
    )


def score(result: AuditResult, roi: Tensor) -> AuditResult:
    """Fill in ``roi_share`` / ``roi_mass`` per method (NaN for probes without an ROI)."""
    for name, maps in result.maps.items():
        probe_roi = roi.to(maps.device)
        result.roi_share[name] = roi_share(maps, probe_roi)
        result.roi_mass[name] = roi_mass(maps, probe_roi)
    return result


def run_audit(
    model: nn.Module,
    probes: Probes,
    methods: Mapping[str, AttributionMethod],
    target: Target = "pred",
    progress: Callable[[str], None] | None = None,
) -> AuditResult:
    """Explain ``probes`` with each method and score the maps against the probes' ROIs.

    Args:
        model: The classifier (on the probes' device).
        probes: Probe images, labels and ROI masks.
        methods: Method objects by name.
        target: Explain the model's prediction (``"pred"``) or the true label (``"label"``).
        progress: Called with each method's name before it runs (e.g. to advance a progress bar).

    Returns:
        The :class:`AuditResult`.

    Raises:
        ValueError: If ``target="label"`` and a probe has no label.
    """
    return score(explain(model, probes, methods, target, progress), probes.roi)
