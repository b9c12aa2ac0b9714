"""Randomising a copy of the model: the stages of modules, the copy, and their re-initialisation.

The mechanics behind :func:`lightning_sas.trust.sanity.cascading_randomization`:

* :func:`randomization_stages`: the modules that own parameters directly (and normalisation
  layers with running statistics), output end first, cut into cumulative stages.
* :func:`detached_copy`: a deep copy of the model that shares, not copies, an attached Lightning
  ``Trainer`` / ``Fabric`` and data sets held on the module; :func:`bind_to_copy` points a
  method's ``target_layer`` at the copy's layer.
* :func:`reinitialise`: each module's own ``reset_parameters()`` (and running statistics), else
  a normal draw, seeded per module from ``(seed, module name)`` inside forked RNG streams;
  the torch, NumPy and Python random states are restored in a ``finally``.
"""

from __future__ import annotations

import copy
import math
import random
import zlib

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_sas.methods.base import AttributionMethod, validate_images_and_targets
from lightning_sas.runtime.model_state import _rng_devices, attribution_mode, uncompiled, unwrap_model
from lightning_sas.runtime.outputs import inner_model

#: Cumulative randomisation stages by default.
DEFAULT_STAGES = 4
# Attributes through which a LightningModule reaches its Trainer / Fabric: shared, never copied.
_SHARED_ATTRIBUTES = ("_trainer", "_fabric")


def randomization_stages(
    model: nn.Module, example_images: Tensor | None = None, stages: int | None = DEFAULT_STAGES
) -> list[list[str]]:
    """The modules :func:`~lightning_sas.trust.sanity.cascading_randomization` re-initialises at each stage.

    The candidates are the modules that own parameters directly (and normalisation layers
    with running statistics but no affine parameters), ordered output end first: by the
    reverse of their first call in a dry forward of ``example_images[:1]`` (the model's
    state is restored afterwards); a module the forward never calls keeps its place after
    the module registered before it. Without ``example_images``, registration order is used.

    Args:
        model: The classifier (names are those of ``model.named_modules()``, behind any
            DDP, ``torch.compile`` or :class:`~lightning_sas.runtime.outputs.ClassifierOutput` wrapper).
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
    check_stages(stages)
    if example_images is not None:
        check_images(example_images)
    model = uncompiled(unwrap_model(inner_model(model)))
    names = [name for name, _ in _ordered_modules(model, example_images)]
    names.reverse()
    count = len(names)
    wanted = count if stages is None else stages
    # For S <= n the cut points ceil(s n / S) strictly increase; for S > n repeats merge.
    cuts = sorted({math.ceil(stage * count / wanted) for stage in range(1, wanted + 1)})
    return [names[:cut] for cut in cuts]


def check_stages(stages: object) -> None:
    """Raise ``ValueError`` unless ``stages`` is a positive integer or ``None`` (one stage per module)."""
    if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int) or stages < 1):
        raise ValueError(f"`stages` must be a positive integer (or None for one stage per module), got {stages!r}.")


def check_images(images: object) -> Tensor:
    """``images`` checked as probe images ``[B, C, H, W]`` (``TypeError`` / ``ValueError`` otherwise)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"`images` must be a floating-point tensor [B, C, H, W], got {type(images).__name__}.")
    # The shared check, with stand-in targets (it checks the images first).
    return validate_images_and_targets(images, torch.zeros(images.shape[:1], dtype=torch.long))[0]


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


def detached_copy(module: nn.Module) -> nn.Module:
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


def reinitialise(modules: list[tuple[str, nn.Module]], seed: int, owner: nn.Module) -> None:
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


def bind_to_copy(method: AttributionMethod, original: nn.Module, duplicate: nn.Module) -> AttributionMethod:
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
