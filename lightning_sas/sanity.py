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
  copy) an attached Lightning ``Trainer`` or ``Fabric`` and data sets held on the module.
* Similarity: :func:`lightning_sas.metrics.spearman` per probe; a method's similarity at a
  stage is the median over the probes. A map that became constant after randomisation (a
  dead Grad-CAM) has no ranking left in common with the trained map and counts as 0; a probe
  whose trained map is constant or non-finite carries no information and is NaN (left out
  of the median).

Default threshold (:data:`DEFAULT_THRESHOLD` = 0.9), chosen from measurements printed by
``.venv/bin/python tests/test_sanity.py`` (CPU, one thread, torch 2.14; 4.5 minutes).
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
"""

from __future__ import annotations

import copy
import math
import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_sas.methods.base import AttributionMethod, minmax_normalize, validate_images_and_targets
from lightning_sas.metrics import spearman
from lightning_sas.model_state import _rng_devices, attribution_mode, uncompiled, unwrap_model
from lightning_sas.outputs import ClassifierOutput, OutputSelector, check_output_selector, inner_model

__all__ = [
    "DEFAULT_STAGES",
    "DEFAULT_THRESHOLD",
    "ImageEdges",
    "SanityResult",
    "cascading_randomization",
    "randomization_stages",
]

#: A method is flagged when its median Spearman with the trained maps, after every parameter
#: has been randomised, is above this (see the module docstring for the measurements).
DEFAULT_THRESHOLD = 0.9
#: Cumulative randomisation stages by default.
DEFAULT_STAGES = 4
# Attributes through which a LightningModule reaches its Trainer / Fabric: shared, never copied.
_SHARED_ATTRIBUTES = ("_trainer", "_fabric")


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


def randomization_stages(
    model: nn.Module, example_images: Tensor | None = None, stages: int | None = DEFAULT_STAGES
) -> list[list[str]]:
    """The modules :func:`cascading_randomization` re-initialises at each stage.

    The candidates are the modules that own parameters directly (and normalisation layers
    with running statistics but no affine parameters), ordered output end first: by the
    reverse of their first call in a dry forward of ``example_images[:1]`` (the model's
    state is restored afterwards); a module the forward never calls keeps its place after
    the module registered before it. Without ``example_images``, registration order is used.

    Args:
        model: The classifier (names are those of ``model.named_modules()``, behind any
            DDP, ``torch.compile`` or :class:`~lightning_sas.outputs.ClassifierOutput` wrapper).
        example_images: ``[B, C, H, W]`` input the model accepts, or ``None``.
        stages: Number of cumulative stages ``S``: stage ``s`` holds the last
            ``ceil(s * n / S)`` of the ``n`` modules, so the final stage holds them all.
            More stages than modules gives one stage per module, and so does ``None``.

    Returns:
        ``S`` cumulative lists of module names (``min(S, n)`` lists), output end first.

    Raises:
        TypeError: If ``model`` is not a module or ``example_images`` not a float tensor.
        ValueError: If ``stages`` is not a positive integer, ``example_images`` is not
            ``[B, C, H, W]``, or the model has no parameters.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> randomization_stages(net, torch.zeros(1, 3, 8, 8), stages=2)
        [['4', '1'], ['4', '1', '0']]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    _check_stages(stages)
    if example_images is not None:
        _check_images(example_images)
    model = uncompiled(unwrap_model(inner_model(model)))
    names = [name for name, _ in _ordered_modules(model, example_images)]
    names.reverse()
    count = len(names)
    wanted = count if stages is None else stages
    # For S <= n the cut points ceil(s n / S) strictly increase; for S > n repeats merge.
    cuts = sorted({math.ceil(stage * count / wanted) for stage in range(1, wanted + 1)})
    return [names[:cut] for cut in cuts]


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

    On a deep copy of the model, the modules of :func:`randomization_stages` are
    re-initialised stage by stage from the output end; after each stage every method
    explains the same ``targets`` on the same images again, and its maps are compared with
    the trained model's maps by Spearman rank correlation (per probe; median over probes).

    Costs ``len(methods) * (num_stages + 1)`` attributions and one extra copy of the model's
    weights. ``model`` is left exactly as it was (parameters, buffers, ``.grad``, flags), and
    so are the global torch, NumPy and Python random streams. Forward hooks registered on the
    model are copied with it and also run for the copy's forwards.

    Args:
        model: The trained classifier (see
            :meth:`~lightning_sas.methods.AttributionMethod.attribute` for the outputs accepted).
        images: Probe images ``[B, C, H, W]``, normalised as the model expects, on its device.
        targets: ``[B]`` classes to explain, kept for every stage (the classes the audit
            explains); ``None`` explains the trained model's predicted classes.
        methods: Name -> method (anything with ``attribute(model, images, targets)``
            returning ``[B, H, W]``). A method whose ``target_layer`` is a module of ``model``
            is pointed at the same module of the copy.
        stages: Number of cumulative stages (see :func:`randomization_stages`); ``None``
            randomises one more module per stage.
        threshold: Flag a method whose final-stage similarity is above this, in [-1, 1].
        seed: Seed of the re-initialisation (non-negative integer).
        output: Where the logits are in the model's output (see
            :class:`~lightning_sas.outputs.ClassifierOutput`); ignored when ``model`` already
            is a ``ClassifierOutput``.

    Returns:
        A :class:`SanityResult`; its tensors are float32 on the CPU.

    Raises:
        TypeError: If an argument has the wrong type, or the model cannot be deep-copied.
        ValueError: If an argument is out of range (the message names it and its value).

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
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    _check_stages(stages)
    checked_methods = _check_methods(methods)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must be a number in [-1, 1] (a Spearman correlation), got {threshold!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    check_output_selector(output)
    if targets is None:
        images = _check_images(images)
    else:
        images, targets = validate_images_and_targets(images, targets)

    # The same adapter the methods build: the outermost output selector, DDP removed; the
    # eager module behind torch.compile (a compiled graph cannot be deep-copied reliably).
    adapter = ClassifierOutput.wrap(model, output)
    original = uncompiled(unwrap_model(adapter.model))
    # Inference mode (Lightning's validation loop) would make the copy's weights inference
    # tensors, which autograd refuses to use outside it; the methods need autograd.
    with torch.inference_mode(False):
        duplicate = _detached_copy(original)
        named = dict(inner_model(duplicate).named_modules())
        stage_names = randomization_stages(duplicate, images, stages)
        subject = ClassifierOutput(duplicate, adapter.output)
        if targets is None:
            with attribution_mode(subject) as forward_module, torch.no_grad():
                targets = forward_module(images).argmax(dim=1)
        bound = {name: _bind_to_copy(method, original, duplicate) for name, method in checked_methods.items()}
        trained = {name: method.attribute(subject, images, targets) for name, method in bound.items()}

        per_probe: dict[str, list[Tensor]] = {name: [] for name in bound}
        randomised = 0
        for stage in stage_names:
            # Stages are cumulative: only the modules new to this stage are re-initialised.
            _reinitialise([(name, named[name]) for name in stage[randomised:]], seed, duplicate)
            randomised = len(stage)
            for name, method in bound.items():
                maps = method.attribute(subject, images, targets)
                per_probe[name].append(_similarity(trained[name], maps))

    stacked = {name: torch.stack(values).float().cpu() for name, values in per_probe.items()}
    return SanityResult(
        stages=stage_names,
        similarity={name: _median_over_probes(values) for name, values in stacked.items()},
        per_probe=stacked,
        threshold=float(threshold),
    )


# ---------------------------------------------------------------------- helpers


def _check_stages(stages: object) -> None:
    if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int) or stages < 1):
        raise ValueError(f"`stages` must be a positive integer (or None for one stage per module), got {stages!r}.")


def _check_images(images: object) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"`images` must be a floating-point tensor [B, C, H, W], got {type(images).__name__}.")
    # The shared check, with stand-in targets (it checks the images first).
    return validate_images_and_targets(images, torch.zeros(images.shape[:1], dtype=torch.long))[0]


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


def _owns_state(module: nn.Module) -> bool:
    """Parameters of its own, or running statistics (a BatchNorm without affine parameters)."""
    if next(module.parameters(recurse=False), None) is not None:
        return True
    has_buffers = next(module.buffers(recurse=False), None) is not None
    return has_buffers and callable(getattr(module, "reset_running_stats", None))


def _ordered_modules(model: nn.Module, example_images: Tensor | None) -> list[tuple[str, nn.Module]]:
    """The modules that own state, input end first (first call in a dry forward)."""
    registered = [(name, module) for name, module in model.named_modules() if _owns_state(module)]
    if not registered:
        raise ValueError(f"`model` ({type(model).__name__}) has no parameters to randomise.")
    if example_images is None:
        return registered
    first_call: dict[int, int] = {}

    def record(module: nn.Module, inputs: tuple) -> None:
        first_call.setdefault(id(module), len(first_call))

    handles = [module.register_forward_pre_hook(record) for _, module in registered]
    try:
        # Attribution mode: eval (BatchNorm statistics untouched), RNG forked, flags restored.
        with attribution_mode(model) as forward_module, torch.no_grad():
            forward_module(example_images[:1])
    finally:
        for handle in handles:
            handle.remove()
    # A module the forward did not call (its weights used functionally by a parent) keeps
    # its registration place after the last called module registered before it.
    keys = []
    previous = -1
    for index, (_, module) in enumerate(registered):
        called = first_call.get(id(module))
        keys.append((called, 0, index) if called is not None else (previous, 1, index))
        previous = called if called is not None else previous
    return [registered[index] for *_, index in sorted(keys)]


def _detached_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that shares, not copies, what the forward never needs.

    A LightningModule keeps its Trainer (and Fabric); copying them would copy the whole run
    (loaders, optimisers, loggers, the model itself again). Seeding ``deepcopy``'s memo with
    them makes every reference to them in the copy point to the originals. Data sets and
    loaders held on a module are shared for the same reason.
    """
    shared: list[object] = []
    for submodule in module.modules():
        for value in vars(submodule).values():
            if isinstance(value, Dataset | DataLoader):
                shared.append(value)
        for attribute in _SHARED_ATTRIBUTES:
            value = vars(submodule).get(attribute)
            if value is not None:
                shared.append(value)
    memo = {id(value): value for value in shared}
    try:
        duplicate = copy.deepcopy(module, memo)
    except Exception as error:  # pickling-style failures vary: TypeError, RuntimeError, ...
        raise TypeError(
            f"`model` ({type(module).__name__}) must be deep-copyable for the randomisation test "
            f"(the original is never modified); copy.deepcopy failed: {error}"
        ) from error
    for parameter in duplicate.parameters():
        parameter.grad = None  # the copy's gradients are never read; free their memory
    return duplicate


def _module_seed(seed: int, name: str) -> int:
    # From (seed, name), not from the stage: a module gets the same weights for any `stages`.
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def _reinitialise(modules: list[tuple[str, nn.Module]], seed: int, owner: nn.Module) -> None:
    """Re-initialise each module's own parameters (and running statistics), RNG forked."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=_rng_devices(owner)):
        try:
            with torch.no_grad():
                for name, module in modules:
                    torch.manual_seed(_module_seed(seed, name))
                    reset = getattr(module, "reset_parameters", None)
                    # A container's reset_parameters may also reset its children (later
                    # stages); only a leaf's resets exactly the parameters it owns.
                    if callable(reset) and next(module.children(), None) is None:
                        reset()
                    else:
                        for parameter in module.parameters(recurse=False):
                            fan_in = parameter[0].numel() if parameter.dim() >= 2 else 1
                            parameter.normal_(0.0, 1.0 / math.sqrt(fan_in))
                    reset_stats = getattr(module, "reset_running_stats", None)
                    if callable(reset_stats):
                        reset_stats()
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _bind_to_copy(method: AttributionMethod, original: nn.Module, duplicate: nn.Module) -> AttributionMethod:
    """``method``, or a shallow copy of it whose module-valued ``target_layer`` names the copy's layer."""
    layer = getattr(method, "target_layer", None)
    if not isinstance(layer, nn.Module):
        return method
    for name, module in inner_model(original).named_modules():
        if module is layer:
            bound = copy.copy(method)
            bound.target_layer = dict(inner_model(duplicate).named_modules())[name]
            return bound
    return method  # not a layer of this model: the method reports that itself


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


def _median_over_probes(per_probe: Tensor) -> Tensor:
    # nanquantile averages the two middle values for an even count (torch.median does not).
    return torch.nanquantile(per_probe, 0.5, dim=1)
