"""One audit: explain the probes with every method and score the maps against the ROIs.

Each method runs on its own: one that fails is reported in :attr:`AuditResult.errors` and the
others' results are kept. A probe whose model output or map is not finite is never scored as
if its map were meaningful: its map is NaN, its scores are NaN, and it is listed in
:attr:`AuditResult.nonfinite`. A flat (constant) map carries no evidence: its scores are NaN
too, and it is listed in :attr:`AuditResult.flat`. :meth:`AuditResult.evidence` hands the
scores to :func:`lightning_sas.audit.verdict.decide` as plain data.

Inside :func:`~lightning_sas.runtime.distributed.all_ranks_together` (a DDP audit, each rank on
its shard) the ranks agree on every part: a part that fails on one rank fails on all of them
(``"... failed on another rank"``), so every rank returns the same parts and makes the same
collectives, and none waits for a failed one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_sas.audit.cost import method_passes
from lightning_sas.audit.discovery import DiscoveryOptions, run_discovery
from lightning_sas.audit.result import AuditResult
from lightning_sas.methods import METHODS, AttributionMethod
from lightning_sas.probes.probe_set import Probes
from lightning_sas.runtime.distributed import failing_together
from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector
from lightning_sas.runtime.progress import accounted
from lightning_sas.scores.faithfulness import Faithfulness, FaithfulnessCurves
from lightning_sas.scores.metrics import flat_maps, roi_mass, roi_share
from lightning_sas.trust.intervention import Artifacts, InterventionResult, intervene
from lightning_sas.trust.sanity import SanityResult, cascading_randomization

Target = Literal["pred", "label"]


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


@runtime_checkable
class WarmStartable(Protocol):
    """A method that can start from the state its previous call ended in (the model moves
    little between two audits, so a warm start needs fewer steps than a cold one).

    ``attribute_from(model, images, targets, initial_state, iterations)`` returns
    ``(maps, state)``; ``initial_state`` is ``None`` (a cold start) or a ``state`` returned
    earlier for the same images, whose first dimension is the batch; ``iterations`` is the
    number of steps for this call, ``None`` for the method's own.
    """

    def attribute_from(
        self, model: nn.Module, images: Tensor, targets: Tensor, initial_state: Any, iterations: int | None
    ) -> tuple[Tensor, Tensor]: ...


def predict(model: nn.Module, images: Tensor, output: OutputSelector = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(predicted class, its softmax probability, finite, logits)`` per image, without side effects.

    ``finite`` is ``[N]`` bool: whether every logit of the image is finite; ``logits`` the
    float32 output ``[N, C]``. Warns when the output looks like probabilities (every row
    non-negative and summing to 1): the methods explain logits.

    Raises:
        ValueError: If the model's output cannot be read as class logits (the message names
            its type and shape and the ``output`` argument).
    """
    with attribution_mode(ClassifierOutput.wrap(model, output)) as forward_module, torch.no_grad():
        logits = forward_module(images).float()
    if looks_like_probabilities(logits):
        warnings.warn(
            "the model's output looks like probabilities, not logits: every probe's output row is non-negative "
            "and sums to 1. The maps explain the output as logits (gradients through a softmax saturate, and the "
            "confidences become a softmax of probabilities); pass `output=` to pick the logits out of the model's "
            "output, or return logits from forward.",
            stacklevel=2,
        )
    finite = torch.isfinite(logits).all(dim=1)
    confidences, predictions = logits.softmax(dim=1).max(dim=1)
    return predictions, confidences, finite, logits


def looks_like_probabilities(logits: Tensor) -> bool:
    """Whether every row of ``logits`` ``[N, C]`` is non-negative and sums to 1 (to 1e-4): a
    softmax output passed as logits (one host sync)."""
    rows_sum_to_one = ((logits.sum(dim=1) - 1).abs() <= 1e-4).all()
    return logits.shape[0] > 0 and bool((logits >= 0).all() & rows_sum_to_one)


@contextmanager
def _recorded(errors: dict[str, str], part: str, device: torch.device) -> Iterator[None]:
    """Run one part of the audit on its own: its failure, on this rank or on another rank of a
    distributed audit (all ranks agree, see :func:`~lightning_sas.runtime.distributed.failing_together`),
    is recorded as ``errors[part]`` and the audit goes on."""
    try:
        with failing_together(device, part):
            yield
    except Exception as error:  # noqa: BLE001 - one part's failure must not lose the others' results
        errors[part] = f"{type(error).__name__}: {error}"


def explain(
    model: nn.Module,
    probes: Probes,
    methods: Mapping[str, AttributionMethod],
    target: Target = "pred",
    progress: Callable[[str], None] | None = None,
    initial_states: Mapping[str, Any] | None = None,
    warm_start_iterations: int | None = None,
    output: OutputSelector = None,
    artifacts: Artifacts | None = None,
    faithfulness: Faithfulness | None = None,
    sanity_stages: int = 0,
    sanity_seed: int = 0,
) -> AuditResult:
    """Explain ``probes`` with each method (scores left empty: see :func:`score`).

    The model is wrapped once (:class:`~lightning_sas.runtime.outputs.ClassifierOutput`) and put
    in :func:`~lightning_sas.runtime.model_state.attribution_mode` once, for every part: modes,
    flags, hooks and RNG are restored once, at the end. Its output is read first
    (:func:`predict`): an output that is not logits fails before any attribution work. Then each
    method runs on its own (a failure goes to ``errors``; the others go on); ``progress`` is
    called with each part's name. :class:`WarmStartable` methods with an ``initial_states``
    entry start from it for ``warm_start_iterations`` steps; their final states are ``masks``.
    Then, each on its own (``errors["faithfulness"]`` etc. on failure): the deletion / insertion
    curves, the intervention with ``artifacts``, and the randomisation check with
    ``sanity_stages``. Under DDP the ranks agree on every part (see the module docstring).

    Raises:
        ValueError: If ``target="label"`` and a probe has no label, or the output is not logits.
    """
    started = time.perf_counter()
    with attribution_mode(ClassifierOutput.wrap(model, output)) as adapter:
        predictions, confidences, finite_logits, logits, targets = _read_output(adapter, probes, target)
        errors: dict[str, str] = {}
        maps, masks = _explain_methods(
            adapter, probes, methods, targets, errors, progress, initial_states, warm_start_iterations
        )
        maps = {name: _nan_where(~finite_logits, method_maps) for name, method_maps in maps.items()}
        checks = (artifacts, faithfulness, sanity_stages, sanity_seed)
        curves, intervention, sanity = _check_maps(adapter, probes, methods, targets, maps, errors, progress, *checks)
    return AuditResult(
        maps=maps,
        predictions=predictions,
        confidences=confidences,
        targets=targets,
        roi_share={},
        roi_mass={},
        seconds=time.perf_counter() - started,
        masks=masks,
        errors=errors,
        nonfinite={name: nonfinite_positions(method_maps) for name, method_maps in maps.items()},
        logits=logits,
        intervention=intervention,
        faithfulness=curves,
        sanity=sanity,
    )


def _read_output(
    adapter: ClassifierOutput, probes: Probes, target: Target
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Predictions, confidences, finite rows, logits and the classes to explain, read once."""
    # Under DDP every rank raises if one does (a shard's missing label, an unreadable output).
    with failing_together(probes.images.device, "reading the model's output"):
        predictions, confidences, finite_logits, logits = predict(adapter, probes.images)
        if target == "label" and bool((probes.labels < 0).any()):
            raise ValueError("`target`='label' needs a label for every probe; some probes have none.")
    targets = probes.labels.to(predictions.device) if target == "label" else predictions
    return predictions, confidences, finite_logits, logits, targets


def _nan_where(bad: Tensor, maps: Tensor) -> Tensor:
    """NaN maps for the probes ``bad`` marks, never a zero map scored at chance: their scores become NaN."""
    bad = bad.to(maps.device)
    return torch.where(bad[:, None, None], torch.full_like(maps, float("nan")), maps)


def _check_maps(
    adapter: ClassifierOutput,
    probes: Probes,
    methods: Mapping[str, AttributionMethod],
    targets: Tensor,
    maps: dict[str, Tensor],
    errors: dict[str, str],
    progress: Callable[[str], None] | None,
    artifacts: Artifacts | None,
    faithfulness: Faithfulness | None,
    sanity_stages: int,
    sanity_seed: int,
) -> tuple[dict[str, FaithfulnessCurves], InterventionResult | None, SanityResult | None]:
    """The faithfulness curves, the intervention and the sanity check, each recorded on failure."""
    device = probes.images.device
    curves: dict[str, FaithfulnessCurves] = {}
    if faithfulness is not None and maps:
        if progress is not None:
            progress("faithfulness")
        passes = (2 + 2 * (faithfulness.steps - 1) * len(maps)) * len(probes)
        with _recorded(errors, "faithfulness", device), accounted(passes):
            curves = faithfulness(adapter, probes.images, targets, maps)
    intervention = None
    if artifacts is not None:
        with _recorded(errors, "intervention", device), accounted((artifacts.trials + 1) * len(probes)):
            intervention = intervene(adapter, probes.images, artifacts)
    sanity = None
    explained = {name: method for name, method in methods.items() if name in maps}
    if sanity_stages and explained:
        if progress is not None:
            progress("sanity check")
        passes = (sanity_stages + 1) * sum(method_passes(m) for m in explained.values()) * len(probes)
        with _recorded(errors, "sanity", device), accounted(passes):
            sanity = cascading_randomization(
                adapter, probes.images, targets, explained, stages=sanity_stages, seed=sanity_seed
            )
    return curves, intervention, sanity


def _explain_methods(
    adapter: nn.Module,
    probes: Probes,
    methods: Mapping[str, AttributionMethod],
    targets: Tensor,
    errors: dict[str, str],
    progress: Callable[[str], None] | None,
    initial_states: Mapping[str, Any] | None,
    warm_start_iterations: int | None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(maps, final states)`` of each method that succeeded; the others' errors go to ``errors``."""
    maps: dict[str, Tensor] = {}
    masks: dict[str, Any] = {}
    for name, method in methods.items():
        if progress is not None:
            progress(name)
        with _recorded(errors, name, probes.images.device), accounted(method_passes(method) * len(probes)):
            if isinstance(method, WarmStartable):
                start = (initial_states or {}).get(name)
                if start is not None and start.shape[0] != len(probes):
                    start = None  # the probe set changed: start cold
                iterations = warm_start_iterations if start is not None else None
                maps[name], masks[name] = method.attribute_from(adapter, probes.images, targets, start, iterations)
            else:
                maps[name] = method.attribute(adapter, probes.images, targets)
    return maps, masks


def nonfinite_positions(maps: Tensor) -> list[int]:
    """Positions of the maps ``[N, H, W]`` that hold a non-finite value (one host sync)."""
    return torch.nonzero(~torch.isfinite(maps.flatten(1)).all(dim=1)).flatten().tolist()


def score(result: AuditResult, roi: Tensor) -> AuditResult:
    """Fill in ``roi_share`` / ``roi_mass`` per method (NaN for probes without an ROI or with a
    non-finite or flat map), the flat maps, and each probe's ROI size: its pixel count and its
    chance level ``|R| / HW`` (NaN without an ROI)."""
    area = roi.flatten(1).float().mean(dim=1)
    result.chance = torch.where(area > 0, area, torch.full_like(area, float("nan")))
    result.roi_pixels = roi.flatten(1).sum(dim=1).long()
    for name, maps in result.maps.items():
        probe_roi = roi.to(maps.device)
        flat = flat_maps(maps)
        result.flat[name] = torch.nonzero(flat).flatten().tolist()
        # A flat map ranks nothing: scored like a non-finite one (NaN), never at chance.
        finite = torch.isfinite(maps.flatten(1)).all(dim=1) & ~flat
        # The rank scores need finite values; NaN rows are scored on zeros and then masked.
        safe = torch.where(finite[:, None, None], maps, torch.zeros_like(maps))
        nan = torch.full(finite.shape, float("nan"), device=maps.device)
        result.roi_share[name] = torch.where(finite, roi_share(safe, probe_roi), nan)
        result.roi_mass[name] = torch.where(finite, roi_mass(safe, probe_roi), nan)
    return result


def run_audit(
    model: nn.Module,
    probes: Probes,
    methods: Mapping[str, AttributionMethod],
    discovery: DiscoveryOptions | None = None,
    **options: Any,
) -> AuditResult:
    """Explain ``probes`` with each method, score the maps against the probes' ROIs, and look for
    shortcuts nobody named (with ``discovery``, when it applies: :mod:`lightning_sas.audit.discovery`).

    Args:
        model: The classifier (on the probes' device).
        probes: Probe images, labels, ROI masks (and object masks).
        methods: Method objects by name.
        discovery: When and how to run shortcut discovery; ``None``: never.
        **options: :func:`explain`'s keyword arguments (``target``, ``progress``, ``output``,
            ``artifacts``, ``faithfulness``, ``sanity_stages``, ``sanity_seed``, ...).

    Returns:
        The :class:`AuditResult` (failed methods in ``errors``, non-finite probes in ``nonfinite``).

    Raises:
        ValueError: If ``target="label"`` and a probe has no label, or the model's output is
            not class logits.
    """
    result = score(explain(model, probes, methods, **options), probes.roi)
    if discovery is not None and discovery.applies(probes, options.get("artifacts") is not None):
        run_discovery(model, probes, result, discovery, options.get("output"))
    return result


def problems(result: AuditResult, names: Sequence[str]) -> list[str]:
    """One sentence per failed method, per method with non-finite or flat maps, and for a model whose
    output ignores its input (for warnings and reports)."""
    parts = {
        "faithfulness": "faithfulness could not be scored",
        "sanity": "the sanity check failed",
        "intervention": "the intervention could not be measured",
        "discovery": "shortcut discovery failed",
    }
    lines = [
        f"{parts.get(method, f'{method} failed and has no maps')} ({error})" for method, error in result.errors.items()
    ]
    kinds = (
        (result.nonfinite, "the model's output or the map is not finite (NaN/inf)", "their scores are NaN"),
        (result.flat, "no evidence (a flat, constant map)", "they are left out of its scores and of the alert rule"),
    )
    for per_method, what, consequence in kinds:
        for method, positions in per_method.items():
            if positions:
                listed = ", ".join(names[i] for i in positions)
                lines.append(f"{method}: {what} for {len(positions)} probe(s): {listed}; {consequence}")
    if result.input_independent():
        lines.append(
            "the model gives every probe the same output: nothing in the images changes its prediction, so the "
            "maps and the intervention carry no evidence and the audit cannot tell whether it uses a shortcut"
        )
    return lines
