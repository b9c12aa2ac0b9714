"""Finding the layer Grad-CAM explains: by name, by module, or automatically."""

from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

from lightning_sas.model_state import attribution_mode


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Look up ``layer`` (a dotted name or a submodule) in ``model``.

    Returns:
        ``(name, module)``.

    Raises:
        ValueError: If the name is not a submodule of ``model`` (the nearest valid names are
            listed) or the module is not part of ``model``.
    """
    named = dict(model.named_modules())
    named.pop("", None)
    if isinstance(layer, str):
        if layer in named:
            return layer, named[layer]
        nearest = difflib.get_close_matches(layer, list(named), n=5, cutoff=0.0)
        raise ValueError(
            f"`target_layer`={layer!r} is not a submodule of {type(model).__name__}; "
            f"nearest valid names: {', '.join(repr(name) for name in nearest)}."
        )
    for name, module in named.items():
        if module is layer:
            return name, module
    raise ValueError(f"`target_layer` {type(layer).__name__} is not a submodule of {type(model).__name__}.")


def find_target_layer(model: nn.Module, example_images: Tensor) -> tuple[str, nn.Module]:
    """Find the last module whose output is still a spatial feature map.

    A dry forward of one image records, in completion order, every submodule's output; the
    answer is the last one that returns a 4-D map with more than one spatial position,
    skipping modules that run more than once per forward (shared activations such as
    ResNet's ``relu``). Global pooling (1×1) is never chosen; for inputs so small that a
    network's last stage is 1×1 (ResNet at 32 px), the last stage that still has extent is.
    The model's state is restored afterwards, also when the forward fails.

    Args:
        model: The classifier.
        example_images: ``[B, C, H, W]`` input the model accepts; only the first image is used.

    Returns:
        ``(name, module)`` of the layer.

    Raises:
        ValueError: If no submodule produces a spatial map (e.g. an MLP on flattened pixels).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> find_target_layer(net, torch.zeros(1, 3, 8, 8))[0]
        '1'
    """
    candidates: list[tuple[str, nn.Module]] = []
    calls: dict[str, int] = {}
    spatial: dict[str, bool] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            # A 1x1 output (global pooling, or a map shrunk to a point) has no spatial extent
            # left to explain.
            spatial[name] = isinstance(output, Tensor) and output.dim() == 4 and output.shape[-2:].numel() > 1
            candidates.append((name, module))

        return hook

    with attribution_mode(model) as forward_module:
        handles = [
            module.register_forward_hook(record(name))
            for name, module in forward_module.named_modules()
            if name  # the model itself is the classifier, never the answer
        ]
        try:
            with torch.no_grad():
                forward_module(example_images[:1])
        finally:
            for handle in handles:
                handle.remove()
    for name, module in reversed(candidates):
        if spatial[name] and calls[name] == 1:
            return name, module
    raise ValueError(
        f"`model` ({type(model).__name__}) has no submodule whose output is a spatial feature map "
        "[B, C, h, w]; Grad-CAM needs one. Pass `target_layer` explicitly or use a method that "
        "does not need a feature map (e.g. SaS)."
    )
