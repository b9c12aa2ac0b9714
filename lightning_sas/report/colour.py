"""Colour for display: undo the input normalisation, colour maps with a colormap, quantise to uint8.

The math runs on the tensors' device, without a host sync; only :func:`to_uint8`'s result is
copied to the host. The colour lookup samples matplotlib's colormaps without importing
``matplotlib.pyplot`` or touching the user's matplotlib state.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from torch import Tensor

from lightning_sas.validation import check_normalization, per_channel, require_tensor, shape_of

__all__ = ["overlay", "to_display", "to_uint8"]

# Colormap lookup tables have 256 entries, as matplotlib's own built-in colormaps do.
_LUT_SIZE = 256

# Red, green, blue weights of the grey shown for a map that has no finite values.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _channel_constants(function: str, name: str, values: Sequence[float], channels: int, like: Tensor) -> Tensor:
    """``values`` read by the project's one rule (:func:`per_channel`), as ``[1, C, 1, 1]``.

    The result is a float32 tensor on ``like``'s device.
    """
    try:
        expanded = per_channel(name, values, channels)
    except ValueError as error:
        raise ValueError(f"{function}: {error}") from None
    return torch.tensor(expanded, dtype=torch.float32, device=like.device).view(1, channels, 1, 1)


def _check_display_inputs(
    images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """Check :func:`to_display`'s arguments; returns ``mean`` and ``std`` as the validation rule reads them."""
    require_tensor("to_display", "images", images)
    if images.dim() != 4:
        raise ValueError(f"to_display: `images` must have shape [B, C, H, W], got {shape_of(images)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"to_display: `images` must have 1 or 3 channels [B, 1 or 3, H, W], got {shape_of(images)}")
    try:
        return check_normalization(mean, std)
    except ValueError as error:
        raise ValueError(f"to_display: {error}") from None


def _min_max_scaled(pixels: Tensor) -> Tensor:
    """Each image of ``pixels`` ``[B, C, H, W]`` stretched to ``[0, 1]`` over all its channels together."""
    flat = pixels.reshape(pixels.shape[0], -1)
    low = flat.amin(dim=-1).view(-1, 1, 1, 1)
    high = flat.amax(dim=-1).view(-1, 1, 1, 1)
    # A constant image has no range to stretch; it maps to 0 instead of 0/0.
    span = torch.where(high > low, high - low, torch.ones_like(high))
    return ((pixels - low) / span).clamp(0.0, 1.0)


def to_display(
    images: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Bring model inputs back to displayable RGB in ``[0, 1]``.

    With ``mean`` and/or ``std`` the input normalisation is undone (``x * std + mean``;
    a missing one defaults to 0 / 1) and the result clipped to ``[0, 1]``. Each is read
    by the rule of :mod:`lightning_sas.validation`: one value applies to every
    channel, otherwise there must be exactly one value per channel. With neither, each
    image is min-max scaled on its own, over all channels together so that colours keep
    their balance; a constant image becomes black. Grey images are repeated to three
    channels. The math runs on the images' device.

    Args:
        images: Batch ``[B, C, H, W]`` with ``C`` 1 or 3, any real dtype and device.
            Gradients are not tracked through the result.
        mean: Means used to normalise the inputs: one value for every channel, or
            ``C`` values (one per channel).
        std: Standard deviations used to normalise the inputs, all positive: one value
            for every channel, or ``C`` values.

    Returns:
        Float32 tensor ``[B, 3, H, W]`` in ``[0, 1]`` on the images' device.

    Raises:
        TypeError: If ``images`` is not a tensor.
        ValueError: If ``images`` is not 4-D or ``C`` is not 1 or 3; if ``mean`` / ``std``
            holds a value that is not a finite number (or a ``std`` value that is not
            positive), or has neither 1 nor ``C`` values.

    Example:
        >>> normalised = (torch.rand(2, 3, 8, 8) - 0.5) / 0.25
        >>> to_display(normalised, mean=[0.5], std=[0.25, 0.25, 0.25]).shape
        torch.Size([2, 3, 8, 8])
    """
    mean, std = _check_display_inputs(images, mean, std)
    channels = images.shape[1]
    pixels = images.detach().to(torch.float32)
    if mean is not None or std is not None:
        if std is not None:
            pixels = pixels * _channel_constants("to_display", "std", std, channels, pixels)
        if mean is not None:
            pixels = pixels + _channel_constants("to_display", "mean", mean, channels, pixels)
        pixels = pixels.clamp(0.0, 1.0)
    else:
        pixels = _min_max_scaled(pixels)
    if channels == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels.contiguous()


@functools.lru_cache(maxsize=64)
def _colormap_table(cmap: str, device: torch.device) -> Tensor:
    """The colormap sampled at 256 points as a [256, 3] float32 tensor on ``device``."""
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"overlay: `cmap` must be the name of a matplotlib colormap, got {cmap!r}") from None
    # For 256-colour maps (all of matplotlib's continuous ones) this samples exactly
    # matplotlib's own lookup table, entry by entry.
    table = colormap(np.linspace(0.0, 1.0, _LUT_SIZE))[:, :3]
    return torch.as_tensor(table, dtype=torch.float32).to(device)


def _check_overlay_inputs(display: Tensor, maps: Tensor, alpha: float) -> None:
    """Check :func:`overlay`'s arguments (shapes, devices, ``alpha``)."""
    require_tensor("overlay", "display", display)
    require_tensor("overlay", "maps", maps)
    if display.dim() != 4 or display.shape[1] != 3:
        raise ValueError(f"overlay: `display` must have shape [B, 3, H, W], got {shape_of(display)}")
    if maps.dim() != 3:
        raise ValueError(f"overlay: `maps` must have shape [B, H, W], got {shape_of(maps)}")
    expected = [display.shape[0], display.shape[2], display.shape[3]]
    if shape_of(maps) != expected:
        raise ValueError(
            f"overlay: `maps` must match `display`'s batch and image size {expected}, got {shape_of(maps)}"
        )
    if maps.device != display.device:
        raise ValueError(
            f"overlay: `maps` must be on the same device as `display` ({display.device}), got {maps.device}"
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"overlay: `alpha` must be in [0, 1], got {alpha}")


def overlay(
    display: Tensor,
    maps: Tensor,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Tensor:
    """Colour attribution maps with a colormap and blend them onto the images.

    The colour lookup follows matplotlib's quantisation (``floor(value * 256)``, the top
    value included in the last bin), so ``alpha=1`` gives the colours that
    ``matplotlib.colormaps[cmap](value)`` gives. Values outside ``[0, 1]`` are clipped.
    Everything runs on the inputs' device, without a host sync.

    A map with any non-finite value (NaN or infinity: the method had no answer for that
    image, e.g. because the model's output or gradient was not finite) gets no heat at
    all, whatever ``alpha`` is: its row shows the image desaturated to grey and faded
    halfway to mid-grey, so it reads as "no map" rather than as a map that happens to
    be flat or to peak somewhere.

    Args:
        display: Images ``[B, 3, H, W]`` in ``[0, 1]``, e.g. from :func:`to_display`.
        maps: Attribution maps ``[B, H, W]`` in ``[0, 1]``, same ``B``, ``H``, ``W`` and
            device as ``display``.
        cmap: Name of a matplotlib colormap.
        alpha: Weight of the heatmap colour, in ``[0, 1]``: 0 shows only the image,
            1 only the heatmap.

    Returns:
        Float32 tensor ``[B, 3, H, W]`` in ``[0, 1]`` on the inputs' device; rows whose
        map is not finite are grey (all three channels equal).

    Raises:
        TypeError: If ``display`` or ``maps`` is not a tensor.
        ValueError: If a shape does not fit, the devices differ, ``alpha`` is outside
            ``[0, 1]``, or ``cmap`` is not a known colormap.

    Example:
        >>> display = torch.zeros(2, 3, 8, 8)
        >>> maps = torch.rand(2, 8, 8)
        >>> overlay(display, maps, cmap="jet", alpha=0.5).shape
        torch.Size([2, 3, 8, 8])
    """
    _check_overlay_inputs(display, maps, alpha)
    table = _colormap_table(cmap, display.device)
    images = display.detach().to(torch.float32)
    values = maps.detach().to(torch.float32)
    finite = torch.isfinite(values).flatten(1).all(dim=1).view(-1, 1, 1, 1)
    # Non-finite rows are replaced below; zeros only keep the colour lookup in range.
    values = torch.where(finite[:, 0], values, 0.0).clamp(0.0, 1.0)
    # Same binning as matplotlib's Colormap.__call__: floor(x * N), with x == 1 -> N - 1.
    indices = (values * _LUT_SIZE).floor().long().clamp(max=_LUT_SIZE - 1)
    colours = table[indices].permute(0, 3, 1, 2)
    blended = (1.0 - alpha) * images + alpha * colours
    # Drawing a NaN map as zeros would show a confident-looking "nothing here" heatmap; a
    # washed-out grey image with no colour at all cannot be mistaken for a result.
    no_map = 0.5 * _luminance(images) + 0.25
    return torch.where(finite, blended, no_map).clamp(0.0, 1.0)


def _luminance(images: Tensor) -> Tensor:
    """Grey version ``[B, 3, H, W]`` of RGB ``images`` (ITU-R BT.601 luma weights)."""
    weights = images.new_tensor(_LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1)


def to_uint8(images: Tensor) -> np.ndarray:
    """Convert RGB images in ``[0, 1]`` to a numpy uint8 batch ``[N, H, W, 3]``.

    Values are clipped to ``[0, 1]`` and rounded to the nearest of 256 levels on the
    images' device; the uint8 result is the only data copied to the host (a quarter of
    the float32 size). This is the form matplotlib, Pillow and TensorBoard take.

    Args:
        images: Float tensor ``[N, 3, H, W]`` in ``[0, 1]`` (e.g. from :func:`to_display`
            or :func:`overlay`), any device. Gradients are not tracked.

    Returns:
        numpy uint8 array ``[N, H, W, 3]`` (channels last), on the host.

    Raises:
        TypeError: If ``images`` is not a tensor.
        ValueError: If ``images`` is not ``[N, 3, H, W]``.

    Example:
        >>> to_uint8(torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1))
        array([[[[  0, 128, 255]]]], dtype=uint8)
    """
    require_tensor("to_uint8", "images", images)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"to_uint8: `images` must have shape [N, 3, H, W], got {shape_of(images)}")
    quantised = (images.detach().to(torch.float32).clamp(0.0, 1.0) * 255).round()
    return quantised.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
