"""Model-parameter randomisation: does a method explain the model, or only the image?

The cascading sanity check of Adebayo et al. (2018), "Sanity Checks for Saliency Maps": on a
copy of the model, the parameters are re-initialised from the output end backwards in
stages, each method's maps are recomputed after every stage, and their Spearman rank
correlation with the trained model's maps is reported per stage. A method whose maps stay
similar once *every* parameter is random explains the image, not the model, and is flagged.

* Stages: the modules that own parameters directly (``Linear``, ``Conv2d``, ``BatchNorm``, ...),
  in reverse order of their first call in a dry forward; stage ``s`` of ``S`` randomises the
  last ``ceil(s * n / S)`` of the ``n`` modules, so the first stage randomises the classifier
  head and the last one everything.
* Re-initialisation: each module's own ``reset_parameters()`` (BatchNorm's running statistics
  too), else a normal draw; seeded per module from ``(seed, module name)`` inside forked RNG
  streams, so the training run's torch, NumPy and Python random streams are left alone and
  a module gets the same random weights whatever the number of stages.
* The model itself is never touched: everything runs on a deep copy, which shares (does not
  copy) an attached Lightning ``Trainer`` or ``Fabric`` and data sets held on the module
  (the mechanics are in :mod:`lightning_sas.trust.randomisation`).
* Cost: ``len(methods) * (num_stages + 1)`` attributions and one extra copy of the model's
  weights. The model is left exactly as it was (parameters, buffers, ``.grad``, flags), and
  so are the global torch, NumPy and Python random streams. Forward hooks registered on the
  model are copied with it and also run for the copy's forwards.
* Similarity: :func:`lightning_sas.scores.metrics.spearman` per probe; a method's similarity at a
  stage is the median over the probes. A map that became constant after randomisation (a
  dead Grad-CAM) has no ranking left in common with the trained map and counts as 0; a probe
  whose trained map is constant or non-finite carries no information and is NaN (left out
  of the median).

Default threshold (:data:`DEFAULT_THRESHOLD` = 0.9), chosen from measurements printed by
``.venv/bin/python tests/trust/test_sanity.py`` (CPU, one thread, torch 2.14; 4.5 minutes).
Models: a SmallCNN trained in-process on the corner task (class 1 = a bright top-left
quadrant; 100% accuracy on 64 held-out images, so its decisions need its weights) and
randomly initialised torchvision resnet18s (2 classes) at 32 and 64 px; 8 held-out corner
probes, ``stages=4``. Each entry is the final-stage similarity (every parameter random):
mean [min, max] over randomisation seeds 0-2.

======================  ===================  ===================  ===================  =====
Model                   Grad-CAM             SaS (10 it., K=6)    input x gradient     edges
======================  ===================  ===================  ===================  =====
SmallCNN, 32 px         -0.05 [-0.20, 0.12]  +0.11 [0.08, 0.12]   +0.31 [0.29, 0.33]   1.00
resnet18 random, 32 px  +0.09 [0.00, 0.24]   -0.00 [-0.10, 0.12]  +0.47 [0.47, 0.47]   1.00
resnet18 random, 64 px  +0.12 [0.01, 0.24]   +0.01 [-0.06, 0.08]  +0.46 [0.45, 0.47]   1.00
======================  ===================  ===================  ===================  =====

SaS in the paper's configuration (``SaS.paper()``: 100 iterations, 20 masks) on the SmallCNN: +0.15 [0.11, 0.18].
``edges`` (:class:`ImageEdges`, the image's own gradient magnitude, blind to the weights) is
exactly 1.00 at every stage, for every seed. A single random draw of Grad-CAM is noisy,
though: all probes share one random model, and a coarse map (2x2 for resnet18 at these
sizes) has few orderings to choose from. Over seeds 0-29 (30 draws for each of the three
models, with 8 and with 4 probes: 180 draws) Grad-CAM's final similarity averages about 0
(-0.05 to +0.08 per setting) but its maximum is 0.44-0.67 with 8 probes and 0.50-0.81 with 4
(resnet18 at 32 px, where 3 of 30 draws exceed 0.7); no draw exceeds 0.9.

So the two populations are the model-dependent methods, at most 0.81 in every draw measured
(Grad-CAM 180, SaS 12), and the weight-independent control, 1.0 in every draw: 0.9 sits
midway, about 0.1 from each.
A lower threshold such as 0.5 would flag Grad-CAM on 7 of those 180 draws. The price:
input x gradient, which leans on the image (means 0.31-0.48, at most 0.49; flat across the
stages on the random resnets), is not flagged; its partial dependence shows in :attr:`SanityResult.similarity`.
Near the threshold, repeat the check with other seeds and more probes before judging.

Example:
    >>> from lightning_sas.methods import GradCAM
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(
    ...     nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
    ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    >>> images = torch.randn(4, 3, 16, 16)
    >>> result = cascading_randomization(
    ...     net, images, torch.tensor([0, 1, 0, 1]), {"gradcam": GradCAM(), "edges": ImageEdges()}, stages=3)
    >>> result.stages
    [['6'], ['6', '2'], ['6', '2', '0']]
    >>> result.similarity["edges"]
    tensor([1., 1., 1.])
    >>> result.flagged
    ['edges']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod, minmax_normalize, validate_images_and_targets
from lightning_sas.runtime.model_state import attribution_mode, uncompiled, unwrap_model
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector, check_output_selector, inner_model
from lightning_sas.scores.metrics import spearman
from lightning_sas.trust.randomisation import (
    DEFAULT_STAGES,
    bind_to_copy,
    check_images,
    check_stages,
    detached_copy,
    randomization_stages,
    reinitialise,
)

__all__ = [
    "DEFAULT_STAGES",
    "DEFAULT_THRESHOLD",
    "ImageEdges",
    "SanityResult",
    "cascading_randomization",
    "median_over_probes",
]

#: A method is flagged when its median Spearman with the trained maps, after every parameter
#: has been randomised, is above this (see the module docstring for the measurements).
DEFAULT_THRESHOLD = 0.9


@dataclass
class SanityResult:
    """What :func:`cascading_randomization` measured, as plain data.

    Attributes:
        stages: Module names randomised at each stage, cumulative: ``stages[s]`` holds every
            module randomised after stage ``s``, output end first; ``""`` names a model's own
            (root) parameters.
        similarity: Per method, ``[num_stages]``: the median over probes of the Spearman
            correlation with the trained model's maps (NaN where no probe gives a value).
        per_probe: Per method, ``[num_stages, B]``: the Spearman correlation per probe.
        threshold: Methods whose final-stage similarity is above this are flagged.
    """

    stages: list[list[str]]
    similarity: dict[str, Tensor]
    per_probe: dict[str, Tensor]
    threshold: float

    @property
    def flagged(self) -> list[str]:
        """Methods whose maps still resemble the trained maps with every parameter random."""
        return [name for name, values in self.similarity.items() if bool(values[-1] > self.threshold)]


class ImageEdges(AttributionMethod):
    """A control that ignores the model: the image's own gradient magnitude (Sobel), in [0, 1].

    The sanity check must flag it (similarity 1 at every stage); run it alongside the real
    methods to see that the check itself works.

    Example:
        >>> images = torch.zeros(1, 3, 6, 6)
        >>> images[..., 3:] = 1.0  # a vertical edge between columns 2 and 3
        >>> ImageEdges().attribute(nn.Identity(), images, torch.tensor([0]))[0, 0]
        tensor([0., 0., 1., 1., 0., 0.])
    """

    name = "edges"

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        gray = images.float().mean(dim=1, keepdim=True)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device)
        kernels = torch.stack([sobel, sobel.T])[:, None]
        # Replicate padding: a zero border would add an edge around every image.
        gradients = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
        return minmax_normalize(gradients.square().sum(dim=1).sqrt())


def cascading_randomization(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None,
    methods: Mapping[str, AttributionMethod],
    *,
    stages: int | None = DEFAULT_STAGES,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    output: OutputSelector = None,
) -> SanityResult:
    """Cascading model-parameter randomisation (Adebayo et al., 2018) for several methods.

    On a deep copy of the model, the modules of :func:`~lightning_sas.trust.randomisation.randomization_stages`
    are re-initialised stage by stage from the output end; after each stage every method explains the same
    ``targets`` on the same images again, and its maps are compared with the trained model's maps by
    Spearman rank correlation (per probe; median over probes). ``model`` and the global random streams
    are left exactly as they were (costs: see the module docstring, which also has an example).

    Args:
        model: The trained classifier (see
            :meth:`~lightning_sas.methods.AttributionMethod.attribute` for the outputs accepted).
        images: Probe images ``[B, C, H, W]``, normalised as the model expects, on its device.
        targets: ``[B]`` classes to explain, kept for every stage (the classes the audit
            explains); ``None`` explains the trained model's predicted classes.
        methods: Name -> method (anything with ``attribute(model, images, targets)``
            returning ``[B, H, W]``). A method whose ``target_layer`` is a module of ``model``
            is pointed at the same module of the copy.
        stages: Number of cumulative stages (see
            :func:`~lightning_sas.trust.randomisation.randomization_stages`); ``None`` randomises one more
            module per stage.
        threshold: Flag a method whose final-stage similarity is above this, in [-1, 1].
        seed: Seed of the re-initialisation (non-negative integer).
        output: Where the logits are in the model's output (see
            :class:`~lightning_sas.runtime.outputs.ClassifierOutput`); ignored when ``model`` already
            is a ``ClassifierOutput``.

    Returns:
        A :class:`SanityResult`; its tensors are float32 on the CPU.

    Raises:
        TypeError: If an argument has the wrong type, or the model cannot be deep-copied.
        ValueError: If an argument is out of range (the message names it and its value).
    """
    checked_methods = _check_arguments(model, stages, methods, threshold, seed, output)
    if targets is None:
        images = check_images(images)
    else:
        images, targets = validate_images_and_targets(images, targets)
    # The same adapter the methods build: the outermost output selector, DDP removed; the
    # eager module behind torch.compile (a compiled graph cannot be deep-copied reliably).
    adapter = ClassifierOutput.wrap(model, output)
    original = uncompiled(unwrap_model(adapter.model))
    # Inference mode (Lightning's validation loop) would make the copy's weights inference
    # tensors, which autograd refuses to use outside it; the methods need autograd.
    with torch.inference_mode(False):
        stage_names, per_probe = _cascade(original, adapter.output, images, targets, checked_methods, stages, seed)
    stacked = {name: torch.stack(values).float().cpu() for name, values in per_probe.items()}
    similarity = {name: median_over_probes(values) for name, values in stacked.items()}
    return SanityResult(stages=stage_names, similarity=similarity, per_probe=stacked, threshold=float(threshold))


def median_over_probes(per_probe: Tensor) -> Tensor:
    """The median over the probes of per-probe similarities, NaN left out.

    Args:
        per_probe: ``[num_stages, B]`` Spearman correlations (NaN where a probe gives none).

    Returns:
        ``[num_stages]``: the median of each row; for an even count, the mean of the two middle values.

    Example:
        >>> median_over_probes(torch.tensor([[0.1, 0.5, float("nan"), 0.3], [0.2, 0.4, 0.6, 0.8]]))
        tensor([0.3000, 0.5000])
    """
    # nanquantile averages the two middle values for an even count (torch.median does not).
    return torch.nanquantile(per_probe, 0.5, dim=1)


# ---------------------------------------------------------------------- helpers


def _check_arguments(
    model: object, stages: object, methods: object, threshold: object, seed: object, output: OutputSelector
) -> dict[str, AttributionMethod]:
    """The checks of :func:`cascading_randomization`'s arguments but the probes; the methods as a dict."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    check_stages(stages)
    checked_methods = _check_methods(methods)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must be a number in [-1, 1] (a Spearman correlation), got {threshold!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    check_output_selector(output)
    return checked_methods


def _check_methods(methods: object) -> dict[str, AttributionMethod]:
    if not isinstance(methods, Mapping):
        raise TypeError(f"`methods` must be a mapping name -> attribution method, got {type(methods).__name__}.")
    if not methods:
        raise ValueError("`methods` must name at least one attribution method, got an empty mapping.")
    for name, method in methods.items():
        if not isinstance(name, str):
            raise TypeError(f"`methods` keys must be strings (method names), got {type(name).__name__} {name!r}.")
        if not callable(getattr(method, "attribute", None)):
            raise TypeError(
                f"`methods`[{name!r}] must have an `attribute(model, images, targets)` method, "
                f"got {type(method).__name__}."
            )
    return dict(methods)


def _cascade(
    original: nn.Module,
    output: OutputSelector,
    images: Tensor,
    targets: Tensor | None,
    methods: dict[str, AttributionMethod],
    stages: int | None,
    seed: int,
) -> tuple[list[list[str]], dict[str, list[Tensor]]]:
    """The stages and, per method, the ``[B]`` similarities after each stage, on a copy of ``original``."""
    duplicate = detached_copy(original)
    named = dict(inner_model(duplicate).named_modules())
    stage_names = randomization_stages(duplicate, images, stages)
    subject = ClassifierOutput(duplicate, output)
    if targets is None:
        with attribution_mode(subject) as forward_module, torch.no_grad():
            targets = forward_module(images).argmax(dim=1)
    bound = {name: bind_to_copy(method, original, duplicate) for name, method in methods.items()}
    trained = {name: method.attribute(subject, images, targets) for name, method in bound.items()}

    per_probe: dict[str, list[Tensor]] = {name: [] for name in bound}
    randomised = 0
    for stage in stage_names:
        # Stages are cumulative: only the modules new to this stage are re-initialised.
        reinitialise([(name, named[name]) for name in stage[randomised:]], seed, duplicate)
        randomised = len(stage)
        for name, method in bound.items():
            maps = method.attribute(subject, images, targets)
            per_probe[name].append(_similarity(trained[name], maps))
    return stage_names, per_probe


def _similarity(trained: Tensor, maps: Tensor) -> Tensor:
    """Spearman per probe; 0 where the new map is constant, NaN where the trained map is uninformative."""
    trained = trained.float().flatten(1)
    maps = maps.float().flatten(1).to(trained.device)
    finite = torch.isfinite(trained).all(dim=1) & torch.isfinite(maps).all(dim=1)
    trained = torch.where(finite[:, None], trained, 0.0)
    maps = torch.where(finite[:, None], maps, 0.0)
    correlation = spearman(trained, maps)
    trained_constant = trained.amax(dim=1) == trained.amin(dim=1)
    maps_constant = maps.amax(dim=1) == maps.amin(dim=1)
    correlation = torch.where(maps_constant & ~trained_constant, 0.0, correlation)
    return torch.where(finite & ~trained_constant, correlation, float("nan"))
