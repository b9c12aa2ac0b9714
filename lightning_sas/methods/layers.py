"""Finding the layer Grad-CAM explains, and reading its output as a spatial map.

A layer's output is read as a map ``[B, C, h, w]`` in one of three layouts (:func:`read_layout`):

* **channels-first** ``[B, C, h, w]``: CNNs (ResNet, MobileNet, EfficientNet, ConvNeXt stages);
* **channels-last** ``[B, h, w, C]``: torchvision Swin stages and its final norm;
* **tokens** ``[B, N, D]``: a vision transformer's sequence, ``N = P + h·w`` with ``P`` leading
  tokens (class, distillation, register tokens) that are dropped before the rest is laid out on
  the ``h×w`` patch grid.

Which reading applies is decided from the shape and the input image's size ``H×W``: a pair
``(h, w)`` *fits* the image when one integer stride ``s`` explains both sides (``h`` is
``H/s`` rounded down or up, ``w`` is ``W/s`` rounded down or up) and the grid keeps the
image's orientation (``h = w`` for a square image, ``h ≥ w`` for a tall one, ``h ≤ w`` for a
wide one), as every stack of convolutions, poolings and patch embeddings gives. A 4-D output
is channels-last only when its dims 1, 2 fit the image and dims 2, 3 do not; otherwise it is
channels-first (PyTorch's convention, and the reading when both or neither fit). A 3-D
output is a token sequence when some ``P`` from 0 to 8 leaves ``h·w`` tokens on a fitting
grid; the smallest such ``P`` wins.

The automatic layer (:func:`locate_target_layer`) is not a layer *inside* an attention
computation (:func:`attention_internals`): a query, key or value projection, a q/k norm, the
attention weights. Their outputs can read as maps (a ``[B, heads, N, head_dim]`` key reads as
channels-first), and the score depends on them, but they are not features of the image at a
position: Grad-CAM on a ViT's key gives stripes. The attention module's own output remains a
candidate; internals are considered only in a model where nothing else is a spatial map.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_sas.runtime.model_state import attribution_mode, uncompiled, unwrap_model
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector, inner_model

#: Most leading non-patch tokens a token sequence may carry (class + distillation + registers).
MAX_PREFIX_TOKENS = 8

#: Child names that mean a query, key or value projection: the module holding one computes attention.
QKV_NAMES = frozenset(
    {"q", "k", "v", "qk", "kv", "qkv", "query", "key", "value", "in_proj", "to_q", "to_k", "to_v", "to_kv", "to_qkv"}
    | {f"{part}_proj" for part in ("q", "k", "v", "kv", "qkv")}
)


@dataclass(frozen=True)
class FeatureLayout:
    """How a layer's output ``[B, ...]`` becomes a map ``[B, C, h, w]``.

    Attributes:
        kind: ``"channels_first"``, ``"channels_last"`` or ``"tokens"``.
        grid: The spatial size ``(h, w)``.
        prefix_tokens: Leading tokens dropped before the grid (``"tokens"`` only).

    Example:
        >>> layout = read_layout((2, 5, 8), (32, 32))  # a class token and a 2x2 patch grid
        >>> layout
        FeatureLayout(kind='tokens', grid=(2, 2), prefix_tokens=1)
        >>> layout.to_map(torch.zeros(2, 5, 8)).shape
        torch.Size([2, 8, 2, 2])
    """

    kind: Literal["channels_first", "channels_last", "tokens"]
    grid: tuple[int, int]
    prefix_tokens: int = 0

    def to_map(self, tensor: Tensor) -> Tensor:
        """``tensor`` (the layer's output, or its gradient) as ``[B, C, h, w]``."""
        if self.kind == "channels_first":
            return tensor
        if self.kind == "channels_last":
            return tensor.permute(0, 3, 1, 2)
        patches = tensor[:, self.prefix_tokens :]
        return patches.reshape(tensor.shape[0], *self.grid, tensor.shape[2]).permute(0, 3, 1, 2)

    def patch_part(self, tensor: Tensor) -> Tensor:
        """The part of ``tensor`` that lies on the grid (the tokens without the prefix)."""
        return tensor[:, self.prefix_tokens :] if self.kind == "tokens" else tensor

    @property
    def spatial(self) -> bool:
        """Whether the map has more than one position (a 1×1 map has nothing to localise)."""
        return self.grid[0] * self.grid[1] > 1


@lru_cache(maxsize=4096)
def grid_fits(grid: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether an ``h×w`` grid can be the ``H×W`` image downsampled by one integer stride.

    Example:
        >>> grid_fits((7, 7), (224, 224)), grid_fits((2, 768), (64, 64)), grid_fits((1, 2), (32, 32))
        (True, False, False)
    """
    (h, w), (height, width) = grid, image_size
    if not (1 <= h <= height and 1 <= w <= width):
        return False
    # Downsampling is monotone and the same for both sides: it keeps the image's orientation.
    if (height == width and h != w) or (height > width and h < w) or (height < width and h > w):
        return False
    # h = H/s rounded either way means H/(h+1) < s < H/(h-1): only a few strides to try.
    low = max(1, height // (h + 1))
    high = height // (h - 1) + 1 if h > 1 else height
    return any(h in (height // s, -(-height // s)) and w in (width // s, -(-width // s)) for s in range(low, high + 1))


def read_layout(shape: tuple[int, ...] | torch.Size, image_size: tuple[int, int]) -> FeatureLayout | None:
    """Read a layer output's shape as a map (see the module docstring for the rule).

    Args:
        shape: The output's shape, batch first.
        image_size: The input images' ``(H, W)``.

    Returns:
        The layout, or ``None`` when the shape is none of the three layouts.

    Example:
        >>> read_layout((1, 512, 2, 2), (64, 64)).kind, read_layout((1, 2, 2, 768), (64, 64)).kind
        ('channels_first', 'channels_last')
        >>> read_layout((1, 197, 768), (224, 224))
        FeatureLayout(kind='tokens', grid=(14, 14), prefix_tokens=1)
        >>> read_layout((1, 10), (32, 32)) is None
        True
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    if len(shape) == 4:
        first, second, third = int(shape[1]), int(shape[2]), int(shape[3])
        if grid_fits((first, second), image_size) and not grid_fits((second, third), image_size):
            return FeatureLayout("channels_last", (first, second))
        return FeatureLayout("channels_first", (second, third))
    if len(shape) == 3:
        tokens = int(shape[1])
        for prefix in range(min(MAX_PREFIX_TOKENS, tokens - 1) + 1):
            grid = _token_grid(tokens - prefix, image_size)
            if grid is not None:
                return FeatureLayout("tokens", grid, prefix)
    return None


def _token_grid(count: int, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """The fitting ``h×w`` grid with ``h·w = count`` closest to the image's aspect ratio, if any."""
    divisors = {d for h in range(1, math.isqrt(count) + 1) if count % h == 0 for d in (h, count // h)}
    fitting = [(h, count // h) for h in divisors if grid_fits((h, count // h), image_size)]
    aspect = image_size[0] / image_size[1]
    return min(fitting, key=lambda grid: abs(math.log(grid[0] / grid[1] / aspect)), default=None)


def describe_layouts(image_size: tuple[int, int]) -> str:
    """The readings a layer output may have, for error messages."""
    height, width = image_size
    return (
        f"a map [B, C, h, w], a channels-last map [B, h, w, C] or a token sequence [B, N, D] (up to "
        f"{MAX_PREFIX_TOKENS} leading class/register tokens, then an h×w patch grid), with h×w a downsampling "
        f"of the {height}×{width} input"
    )


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Look up ``layer`` (a dotted name or a submodule) in ``model``.

    Call it to check a user-given layer before any forward: a typo fails here, naming the layer
    and the closest valid names.

    Returns:
        ``(name, module)``.

    Raises:
        TypeError: If ``layer`` is neither a string nor an ``nn.Module``.
        ValueError: If the name is not a submodule of ``model`` (the nearest valid names are
            listed) or the module is not part of ``model``.

    Example:
        >>> resolve_layer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "1")
        ('1', ReLU())
        >>> resolve_layer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "2")
        Traceback (most recent call last):
        ...
        ValueError: `target_layer`='2' is not a submodule of Sequential; nearest valid names: '1', '0'.
    """
    if not isinstance(layer, str | nn.Module):
        raise TypeError(f"`target_layer` must be a module name or an nn.Module, got {type(layer).__name__} {layer!r}.")
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


def attention_internals(model: nn.Module) -> set[str]:
    """Dotted names of the modules that run inside an attention module of ``model``.

    An *attention module* is a submodule with children that either has a child named like a
    query/key/value projection (:data:`QKV_NAMES`: timm's ``qkv``, ``q``/``k``/``v``, EVA's
    ``q_proj``, MobileNetV4's ``query``/``key``/``value``), or whose class or attribute name
    contains ``attn`` or ``attention``, and that holds no other attention module (so a block
    named ``...AttentionBlock`` or MaxViT's ``PartitionAttentionCl`` counts by the attention
    inside it, and its norms stay candidates). Childless pieces (``attn_drop``) are parts of
    one, not attention modules. Everything below an attention module is internal; the module
    itself is not (its output is the block's update of the features).

    Example:
        >>> import torchvision
        >>> sorted(attention_internals(torchvision.models.resnet18()))
        []
        >>> class Attention(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.qkv, self.k_norm, self.proj = nn.Linear(4, 12), nn.Identity(), nn.Linear(4, 4)
        >>> sorted(attention_internals(nn.Sequential(nn.LayerNorm(4), Attention())))
        ['1.k_norm', '1.proj', '1.qkv']
    """
    named = dict(model.named_modules())
    marked = [name for name, module in named.items() if name and _computes_attention(name.rsplit(".", 1)[-1], module)]
    innermost = [name for name in marked if not any(other.startswith(name + ".") for other in marked)]
    return {name for name in named for outer in innermost if name.startswith(outer + ".")}


def _computes_attention(attribute: str, module: nn.Module) -> bool:
    children = [child for child, _ in module.named_children()]
    label = f"{attribute} {type(module).__name__}".lower()
    return bool(children) and ("attn" in label or "attention" in label or any(c in QKV_NAMES for c in children))


@dataclass(frozen=True)
class LocatedLayer:
    """The answer of :func:`locate_target_layer`.

    Attributes:
        name: The layer's dotted name in the user's model.
        module: The layer.
        layout: How its output is read as a map.
        from_gradient: Whether the model's score had a finite, non-zero gradient somewhere, so
            the choice skipped the layers the score does not depend on. ``False`` (a
            zero-initialised head, a non-finite score) means the answer is the structural
            fallback and should not be remembered for the model.
    """

    name: str
    module: nn.Module
    layout: FeatureLayout
    from_gradient: bool


def find_target_layer(model: nn.Module, example_images: Tensor) -> tuple[str, nn.Module]:
    """Find the last layer whose output is a spatial map the model's score depends on.

    See :func:`locate_target_layer`, which this returns the ``(name, module)`` of.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> find_target_layer(net, torch.zeros(1, 3, 8, 8))[0]
        '1'
    """
    located = locate_target_layer(model, example_images)
    return located.name, located.module


def locate_target_layer(model: nn.Module, example_images: Tensor) -> LocatedLayer:
    """Find the last layer whose output is a spatial map the model's score depends on.

    One dry forward and one gradient of the first two images record, in completion order, every
    submodule's output and the gradient of the images' top logits with respect to it. The answer
    is the last output that reads as a map with more than one position (:func:`read_layout`),
    from a module that runs once per forward (shared activations such as ResNet's ``relu`` run
    several times), and whose grid part has a non-zero gradient. Global pooling (1×1) is never
    chosen; for inputs so small that a network's last stage is 1×1 (ResNet at 32 px), the last
    stage that still has extent is. The gradient condition skips the layers whose positions
    no longer reach the score: in a ViT, only the class token of the last block's output is
    read, so the patch tokens have a zero gradient after the last attention, and the answer is
    the last block's ``ln_1`` / ``norm1`` (the layer pytorch-grad-cam recommends for ViTs).
    Layers inside an attention module (:func:`attention_internals`: the query, key and value
    projections, q/k norms, attention weights) are not the answer: in that last block they
    reach the score through the class token's attention, yet are no map of the image (they are
    only considered when nothing else in the model is a spatial map). When the score
    has no finite non-zero gradient at all (a zero-initialised head), the last map is returned
    with ``from_gradient=False``. The model's state is restored afterwards, also when the
    forward fails.

    Args:
        model: The classifier (possibly wrapped in :class:`~lightning_sas.runtime.outputs.ClassifierOutput`,
            DistributedDataParallel or ``torch.compile``); names are those of the user's model.
        example_images: ``[B, C, H, W]`` input the model accepts; only the first two images are used.

    Returns:
        The layer, its layout and whether the gradient decided it.

    Raises:
        ValueError: If no submodule produces a spatial map (e.g. an MLP on flattened pixels).
    """
    output = model.output if isinstance(model, ClassifierOutput) else None
    named_model = uncompiled(unwrap_model(inner_model(model)))
    image_size = (int(example_images.shape[-2]), int(example_images.shape[-1]))
    # Two images where there are two: a batch dimension is then told apart from a fixed leading 1
    # (a position embedding) or a batch merged with windows.
    dry_images = example_images[:2]
    with attribution_mode(named_model):
        logits, outputs, calls = _recorded_forward(named_model, output, dry_images)
        candidates = _spatial_outputs(outputs, calls, len(dry_images), image_size, attention_internals(named_model))
        if not candidates:
            raise ValueError(
                f"`model` ({type(named_model).__name__}) has no submodule whose output is a spatial feature map "
                f"({describe_layouts(image_size)}); Grad-CAM needs one. Pass `target_layer` (and `reshape`, a "
                "callable mapping its output to [B, C, h, w]) explicitly, or use a method that does not need a "
                "feature map (e.g. SaS)."
            )
        finite = torch.isfinite(logits.detach()).all(dim=1)
        gradients = _gradients_of_top_logit(logits, finite, [result for _, _, result, _ in candidates])
    for (name, module, _, layout), gradient in zip(reversed(candidates), reversed(gradients), strict=True):
        # Only the images with finite logits count: a NaN row's gradient is NaN or zero.
        on_grid = None if gradient is None else layout.patch_part(gradient)[finite]
        if on_grid is not None and bool(on_grid.ne(0).any()) and bool(torch.isfinite(on_grid).all()):
            return LocatedLayer(name, module, layout, from_gradient=True)
    name, module, _, layout = candidates[-1]
    return LocatedLayer(name, module, layout, from_gradient=False)


def _recorded_forward(
    named_model: nn.Module, output: OutputSelector, dry_images: Tensor
) -> tuple[Tensor, list[tuple[str, nn.Module, Tensor | None]], dict[str, int]]:
    """One forward of ``dry_images`` (in attribution mode) recording every submodule's output.

    Returns:
        ``(logits, outputs, calls)``: the logits, each submodule's ``(name, module, output)`` in
        completion order (``None`` for an output that is not a tensor), and how many times each
        submodule ran.
    """
    outputs: list[tuple[str, nn.Module, Tensor | None]] = []
    calls: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, result: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            outputs.append((name, module, result if isinstance(result, Tensor) else None))

        return hook

    handles = [
        module.register_forward_hook(record(name))
        for name, module in named_model.named_modules()
        if name  # the model itself is the classifier, never the answer
    ]
    try:
        # Parameters are frozen in attribution mode; an input that requires grad puts every
        # layer's output into the autograd graph.
        logits = ClassifierOutput(named_model, output)(dry_images.detach().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs, calls


def _spatial_outputs(
    outputs: list[tuple[str, nn.Module, Tensor | None]],
    calls: dict[str, int],
    batch: int,
    image_size: tuple[int, int],
    internal: set[str],
) -> list[tuple[str, nn.Module, Tensor, FeatureLayout]]:
    """The recorded outputs that are spatial maps of the batch, from modules that ran once, in
    completion order; those inside attention modules only where there is no other."""
    found = []
    for name, module, result in outputs:
        usable = result is not None and calls[name] == 1 and result.shape[:1] == (batch,)
        layout = read_layout(result.shape, image_size) if usable else None
        if layout is not None and layout.spatial:
            found.append((name, module, result, layout))
    return [candidate for candidate in found if candidate[0] not in internal] or found


def _gradients_of_top_logit(logits: Tensor, finite: Tensor, activations: list[Tensor]) -> list[Tensor | None]:
    """Gradients of the top logit of each image with finite logits w.r.t. each activation
    (``None`` where an activation is not on the score's path; all ``None`` without such an image)."""
    score = logits.max(dim=1).values[finite].sum()
    if not bool(finite.any()) or not score.requires_grad:
        return [None] * len(activations)
    # A container's output is often its last child's tensor: ask autograd once per tensor.
    unique = list({id(tensor): tensor for tensor in activations if tensor.requires_grad}.values())
    found = torch.autograd.grad(score, unique, allow_unused=True) if unique else ()
    by_id = {id(tensor): gradient for tensor, gradient in zip(unique, found, strict=True)}
    return [by_id.get(id(tensor)) for tensor in activations]
