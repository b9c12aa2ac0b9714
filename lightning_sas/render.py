"""Turn images and attribution maps into pictures for TensorBoard and reports.

The math (undoing the input normalisation, the colormap lookup, alpha blending) runs on
the tensors' device; data leaves the device only at the end, as uint8, to build the
figure. Figures are drawn with :class:`matplotlib.figure.Figure` and the Agg canvas
directly: this module never imports ``matplotlib.pyplot``, never calls
``matplotlib.use`` and never changes ``rcParams``, so the user's global matplotlib state
(backend, open figures, style) is left alone, and nothing is kept alive between calls.

Every figure has a size fixed by its inputs' shapes (not by the text drawn in it), so
TensorBoard's step slider shows images of the same size at every step. Pictures are pasted
pixel for pixel: small probes are enlarged by a whole factor (nearest-neighbour, so pixels
stay honest), large ones shrunk by area averaging, to tiles of about ``panel_inches * dpi``
pixels. Text is sized relative to the tiles, and per-probe panels wrap after three tiles,
so labels stay legible where a viewer shrinks the whole picture to a fixed width
(TensorBoard's images dashboard: 350 px).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import IdentityTransform
from PIL import Image
from torch import Tensor

from lightning_sas.normalization import check_normalization, per_channel
from lightning_sas.tensor_checks import require_tensor, shape_of

__all__ = [
    "to_display",
    "overlay",
    "to_uint8",
    "method_grid",
    "probe_panel",
    "comparison_grid",
    "save_png",
]

# Colormap lookup tables have 256 entries, as matplotlib's own built-in colormaps do.
_LUT_SIZE = 256

# Layout, as shares of the tile width (text scales with the pictures; see _Layout). At the
# default tile (192 px for a 64-px probe) headings are 19 px tall; in a 3-tile-wide panel
# that TensorBoard shrinks to 350 px they are still 11 px.
_SPACING_SHARE = 0.04
_TITLE_SHARE = 0.11
_HEADING_SHARE = 0.10
_LABEL_SHARE = 0.09
_CAPTION_SHARE = 0.095
_LINE_SPACING = 1.45
# Tiles narrower than 110 px still get 11-px headings (text then may be shrunk to fit).
_MIN_FONT_PIXELS = 11.0
# At 72 dots per inch a point is a pixel: font sizes and positions are given in pixels.
_DPI = 72

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


def to_display(
    images: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Bring model inputs back to displayable RGB in ``[0, 1]``.

    With ``mean`` and/or ``std`` the input normalisation is undone (``x * std + mean``;
    a missing one defaults to 0 / 1) and the result clipped to ``[0, 1]``. Each is read
    by the rule of :mod:`lightning_sas.normalization`: one value applies to every
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
    require_tensor("to_display", "images", images)
    if images.dim() != 4:
        raise ValueError(f"to_display: `images` must have shape [B, C, H, W], got {shape_of(images)}")
    channels = images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"to_display: `images` must have 1 or 3 channels [B, 1 or 3, H, W], got {shape_of(images)}")
    try:
        mean, std = check_normalization(mean, std)
    except ValueError as error:
        raise ValueError(f"to_display: {error}") from None
    pixels = images.detach().to(torch.float32)
    if mean is not None or std is not None:
        if std is not None:
            pixels = pixels * _channel_constants("to_display", "std", std, channels, pixels)
        if mean is not None:
            pixels = pixels + _channel_constants("to_display", "mean", mean, channels, pixels)
        pixels = pixels.clamp(0.0, 1.0)
    else:
        flat = pixels.reshape(pixels.shape[0], -1)
        low = flat.amin(dim=-1).view(-1, 1, 1, 1)
        high = flat.amax(dim=-1).view(-1, 1, 1, 1)
        # A constant image has no range to stretch; it maps to 0 instead of 0/0.
        span = torch.where(high > low, high - low, torch.ones_like(high))
        pixels = ((pixels - low) / span).clamp(0.0, 1.0)
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


def _fit_tiles(pictures: Tensor, tile_pixels: int) -> np.ndarray:
    """Bring pictures ``[N, 3, H, W]`` to the tile size, as uint8 ``[N, h, w, 3]`` on the host.

    Small pictures are enlarged by the largest whole factor that keeps the longer side within
    ``tile_pixels`` (each pixel becomes a ``k x k`` block: nearest-neighbour, so no pixel is
    invented or smoothed away); larger ones are shrunk to it by area averaging. The work runs
    on the pictures' device; only the uint8 result is copied to the host.
    """
    height, width = pictures.shape[-2:]
    longest = max(height, width)
    pictures = pictures.detach().to(torch.float32)
    factor = 1
    if longest > tile_pixels:
        size = (max(1, round(height * tile_pixels / longest)), max(1, round(width * tile_pixels / longest)))
        pictures = torch.nn.functional.interpolate(pictures, size=size, mode="area")
    else:
        factor = max(1, tile_pixels // longest)
    quantised = (pictures.clamp(0.0, 1.0) * 255).round().to(torch.uint8)
    if factor > 1:
        quantised = quantised.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return quantised.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _tile_pixels(function: str, panel_inches: float, dpi: int) -> int:
    """The tile size ``panel_inches * dpi`` in pixels, checked."""
    for name, value in (("panel_inches", panel_inches), ("dpi", dpi)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{function}: `{name}` must be a positive number, got {value!r}")
    return max(1, round(panel_inches * dpi))


@dataclass(frozen=True)
class _Cell:
    """One tile of a figure: its picture (``None``: left blank), the text above it and the lines below it."""

    picture: np.ndarray | None
    heading: str = ""
    caption: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Layout:
    """Pixel sizes of a figure's parts, all proportional to the tile width.

    Text scales with the tile, so the ratio of text size to picture width is fixed by the
    number of columns alone: a viewer that shrinks the picture to a fixed width (TensorBoard
    draws every image 350 px wide until clicked) shrinks text and tiles alike.
    """

    margin: int
    gap: int
    title_size: float
    heading_size: float
    label_size: float
    caption_size: float

    @classmethod
    def for_tile(cls, tile_width: int) -> _Layout:
        scale = max(float(tile_width), _MIN_FONT_PIXELS / _HEADING_SHARE)
        return cls(
            margin=max(4, round(_SPACING_SHARE * tile_width)),
            gap=max(4, round(_SPACING_SHARE * tile_width)),
            title_size=_TITLE_SHARE * scale,
            heading_size=_HEADING_SHARE * scale,
            label_size=_LABEL_SHARE * scale,
            caption_size=_CAPTION_SHARE * scale,
        )

    @staticmethod
    def line(size: float) -> int:
        return round(_LINE_SPACING * size)


def _draw(
    rows: Sequence[Sequence[_Cell]],
    *,
    title: str | None,
    row_labels: Sequence[str] | None,
    heading_rows: Sequence[int],
    caption_lines: int,
) -> np.ndarray:
    """Draw tiles in rows into a uint8 RGB array, pixel for pixel.

    Every tile is pasted unscaled at whole-pixel offsets (``figimage``), so the figure shows
    exactly the pixels it is given. Text is placed in pixel coordinates, centred in slots
    whose sizes depend only on the tile size and on which slots are used: the figure's size
    never depends on the text. Text wider than its slot is shrunk to fit it.
    """
    first = next(cell.picture for row in rows for cell in row if cell.picture is not None)
    tile_height, tile_width = first.shape[:2]
    layout = _Layout.for_tile(tile_width)
    columns = max(len(row) for row in rows)
    title_height = layout.line(layout.title_size) if title is not None else 0
    label_height = layout.line(layout.label_size) if row_labels is not None else 0
    heading_height = layout.line(layout.heading_size)
    caption_line = layout.line(layout.caption_size)
    width = 2 * layout.margin + columns * tile_width + (columns - 1) * layout.gap
    height = (
        2 * layout.margin
        + title_height
        + len(rows) * (label_height + tile_height + caption_lines * caption_line)
        + len(heading_rows) * heading_height
        + (len(rows) - 1) * layout.gap
    )
    # The quarter pixel keeps Agg's integer canvas size from rounding down a pixel.
    figure = Figure(figsize=((width + 0.25) / _DPI, (height + 0.25) / _DPI), dpi=_DPI, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    pixels = IdentityTransform()
    texts: list[tuple[Text, float]] = []

    def text(x: float, top: float, slot: float, content: str, size: float, max_width: float, **style: Any) -> None:
        # Colours, TeX and math parsing are explicit so a user's style cannot change them.
        artist = figure.text(
            x,
            height - top - slot / 2,
            content,
            transform=pixels,
            ha="center",
            va="center",
            fontsize=size,
            color="black",
            usetex=False,
            parse_math=False,
            **style,
        )
        texts.append((artist, max_width))

    try:
        top = layout.margin  # pixels from the top edge
        if title is not None:
            text(width / 2, top, title_height, title, layout.title_size, width - 2 * layout.margin, fontweight="bold")
            top += title_height
        for index, row in enumerate(rows):
            lefts = [layout.margin + column * (tile_width + layout.gap) for column in range(len(row))]
            if index in heading_rows:
                for left, cell in zip(lefts, row, strict=True):
                    text(left + tile_width / 2, top, heading_height, cell.heading, layout.heading_size, tile_width)
                top += heading_height
            if row_labels is not None:
                text(width / 2, top, label_height, row_labels[index], layout.label_size, width - 2 * layout.margin)
                top += label_height
            for left, cell in zip(lefts, row, strict=True):
                if cell.picture is not None:
                    figure.figimage(
                        cell.picture, xo=left, yo=height - top - tile_height, origin="upper", interpolation="nearest"
                    )
            top += tile_height
            for left, cell in zip(lefts, row, strict=True):
                for line, content in enumerate(cell.caption):
                    text(
                        left + tile_width / 2,
                        top + line * caption_line,
                        caption_line,
                        content,
                        layout.caption_size,
                        tile_width + layout.gap,
                    )
            top += caption_lines * caption_line + layout.gap
        renderer = canvas.get_renderer()
        for artist, max_width in texts:
            drawn = artist.get_window_extent(renderer).width
            if drawn > max_width:
                artist.set_fontsize(artist.get_fontsize() * max_width / drawn)
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        return rgba[:height, :width, :3].copy()
    finally:
        # Not registered with pyplot, so dropping the references frees it; clearing
        # first breaks the figure <-> artist cycles so memory returns without a GC pass.
        figure.clear()


def _format_score(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.2f}"


def _check_scores(function: str, scores: Mapping[str, Sequence[float] | Tensor] | None, count: int) -> dict:
    """Score name -> ``count`` floats (one per row), checked."""
    if scores is None:
        return {}
    checked = {}
    for name, values in scores.items():
        listed = values.detach().flatten().tolist() if isinstance(values, Tensor) else list(values)
        if len(listed) != count:
            raise ValueError(
                f"{function}: `scores[{name!r}]` must have one value per image ({count}), got {len(listed)}"
            )
        checked[str(name)] = [None if value is None else float(value) for value in listed]
    return checked


def method_grid(
    display: Tensor,
    overlays: Tensor,
    row_labels: Sequence[str],
    title: str | None = None,
    *,
    scores: Mapping[str, Sequence[float] | Tensor] | None = None,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> np.ndarray:
    """One figure for one method: a row per probe, image next to its heatmap overlay.

    Each row carries its label above it (e.g. ``"true: melanoma  pred: melanoma
    (0.93)"``) and, with ``scores``, one line per score under the overlay (e.g.
    ``"roi_share 0.42"``; ``–`` for a missing or NaN value). Small images are enlarged by
    a whole factor (each pixel a block of pixels, nothing smoothed) to about
    ``panel_inches * dpi`` pixels; text scales with the tiles, so it stays legible where a
    viewer shrinks the picture to a fixed width. The picture's size depends only on ``B``,
    the image size, whether a title is given, the score names, ``panel_inches`` and
    ``dpi`` -- not on the text -- so successive audits line up in TensorBoard. Text wider
    than the figure is shrunk to fit.

    Args:
        display: Images ``[B, 3, H, W]`` in ``[0, 1]`` (from :func:`to_display`).
        overlays: Heatmap overlays, same shape as ``display`` (from :func:`overlay`).
        row_labels: One label per probe, ``B`` strings.
        title: Text on top of the figure, e.g. the method name and epoch.
        scores: Score name -> one value per probe (``B`` floats or a tensor), shown under
            each overlay.
        panel_inches: Size of each image tile in inches (at ``dpi``).
        dpi: Pixels per inch of ``panel_inches``.

    Returns:
        numpy uint8 array ``[H', W', 3]`` (RGB).

    Raises:
        TypeError: If ``display`` or ``overlays`` is not a tensor.
        ValueError: If ``display`` is not ``[B, 3, H, W]`` with ``B >= 1``, ``overlays``'
            shape differs, the number of ``row_labels`` or of a score's values is not
            ``B``, or ``panel_inches`` / ``dpi`` is not positive.

    Example:
        >>> picture = method_grid(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16),
        ...                       ["probe 0", "probe 1"], title="Grad-CAM",
        ...                       scores={"roi_share": [0.5, float("nan")]})
        >>> picture.dtype, picture.shape[-1]
        (dtype('uint8'), 3)
    """
    tile_pixels = _tile_pixels("method_grid", panel_inches, dpi)
    tiles, labels = _grid_tiles("method_grid", display, {"overlays": overlays}, row_labels, tile_pixels)
    checked = _check_scores("method_grid", scores, len(labels))
    rows = [
        [
            _Cell(tiles[0][row]),
            _Cell(tiles[1][row], caption=tuple(f"{name} {_format_score(v[row])}" for name, v in checked.items())),
        ]
        for row in range(len(labels))
    ]
    return _draw(rows, title=title, row_labels=labels, heading_rows=(), caption_lines=len(checked))


def _grid_tiles(
    function: str, display: Tensor, columns: Mapping[str, Tensor], row_labels: Sequence[str], tile_pixels: int
) -> tuple[list[np.ndarray], list[str]]:
    """Check a grid's inputs and turn them into uint8 tiles (one transfer off the device).

    ``columns`` maps each overlay argument's name, as error messages show it, to its tensor.
    Returns the tiles per column (the images first, then every overlay column), ``[B, h, w, 3]``
    each, and the labels.
    """
    require_tensor(function, "display", display)
    if display.dim() != 4 or display.shape[1] != 3 or display.shape[0] == 0:
        raise ValueError(f"{function}: `display` must have shape [B, 3, H, W] with B >= 1, got {shape_of(display)}")
    for argument, pictures in columns.items():
        require_tensor(function, argument, pictures)
        if pictures.shape != display.shape:
            raise ValueError(
                f"{function}: `{argument}` must have the same shape as `display` "
                f"{shape_of(display)}, got {shape_of(pictures)}"
            )
    labels = [str(label) for label in row_labels]
    if len(labels) != display.shape[0]:
        raise ValueError(
            f"{function}: `row_labels` must have one label per image ({display.shape[0]}), got {len(labels)}"
        )
    stacked = _fit_tiles(
        torch.cat([display, *(pictures.to(display.device) for pictures in columns.values())]), tile_pixels
    )
    return list(stacked.reshape(1 + len(columns), display.shape[0], *stacked.shape[1:])), labels


def probe_panel(
    display_one: Tensor,
    overlays: Mapping[str, Tensor],
    title: str,
    *,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    max_columns: int = 3,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> np.ndarray:
    """One figure for one probe: the image, then one heatmap overlay per method.

    Every tile carries its title above it (``"image"``, then the method names in
    ``overlays``' order) and, with ``scores``, one line per score under each overlay (e.g.
    ``"roi_share 0.42"`` and ``"faithfulness 0.31"``; ``–`` for a missing or NaN value).
    Tiles wrap into rows of at most ``max_columns`` (balanced: 9 tiles make 3 rows of 3),
    so the figure stays narrow enough for its text to be read where a viewer shrinks it
    to a fixed width (TensorBoard: 350 px); ``max_columns=len(overlays) + 1`` keeps one
    row. Small images are enlarged by a whole factor to about ``panel_inches * dpi``
    pixels (nearest-neighbour). The picture's size depends only on the number of
    methods, the image size, the score names, ``max_columns``, ``panel_inches`` and
    ``dpi``, so the panel of one probe keeps its size across audits (TensorBoard step
    slider).

    Args:
        display_one: One image ``[3, H, W]`` in ``[0, 1]``.
        overlays: Method name -> overlay ``[3, H, W]`` of the same shape.
        title: Text on top, e.g. ``"probe 3  true: melanoma  pred: nevus (0.61)"``.
        scores: Method name -> {score name -> value}, shown under that method's tile.
        max_columns: Most tiles side by side.
        panel_inches: Size of each image tile in inches (at ``dpi``).
        dpi: Pixels per inch of ``panel_inches``.

    Returns:
        numpy uint8 array ``[H', W', 3]`` (RGB).

    Raises:
        TypeError: If ``display_one`` or an overlay is not a tensor.
        ValueError: If ``display_one`` is not ``[3, H, W]``, an overlay's shape differs,
            ``scores`` names a method that is not in ``overlays``, ``max_columns`` is not a
            positive integer, or ``panel_inches`` / ``dpi`` is not positive.

    Example:
        >>> picture = probe_panel(torch.rand(3, 16, 16), {"SaS": torch.rand(3, 16, 16)},
        ...                       "probe 0", scores={"SaS": {"roi_share": 0.42}})
        >>> picture.ndim
        3
    """
    require_tensor("probe_panel", "display_one", display_one)
    if display_one.dim() != 3 or display_one.shape[0] != 3:
        raise ValueError(f"probe_panel: `display_one` must have shape [3, H, W], got {shape_of(display_one)}")
    if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 1:
        raise ValueError(f"probe_panel: `max_columns` must be an integer >= 1, got {max_columns!r}")
    tile_pixels = _tile_pixels("probe_panel", panel_inches, dpi)
    names = [str(name) for name in overlays]
    for name, picture in overlays.items():
        require_tensor("probe_panel", f"overlays[{name!r}]", picture)
        if picture.shape != display_one.shape:
            raise ValueError(
                f"probe_panel: `overlays[{name!r}]` must have the same shape as "
                f"`display_one` {shape_of(display_one)}, got {shape_of(picture)}"
            )
    scores = dict(scores or {})
    unknown = [name for name in scores if name not in overlays]
    if unknown:
        raise ValueError(f"probe_panel: `scores` names methods that are not in `overlays` {names}: {unknown}")
    score_names = list(dict.fromkeys(name for method in scores.values() for name in method))
    stacked = torch.stack([display_one] + [picture.to(display_one.device) for picture in overlays.values()])
    tiles = _fit_tiles(stacked, tile_pixels)
    cells = [_Cell(tiles[0], heading="image")]
    for method, tile in zip(overlays, tiles[1:], strict=True):
        values = scores.get(method, {})
        caption = tuple(f"{score} {_format_score(values.get(score))}" for score in score_names)
        cells.append(_Cell(tile, heading=str(method), caption=caption))
    row_count = math.ceil(len(cells) / max_columns)
    columns = math.ceil(len(cells) / row_count)
    cells += [_Cell(None)] * (row_count * columns - len(cells))
    rows = [cells[start : start + columns] for start in range(0, len(cells), columns)]
    return _draw(rows, title=title, row_labels=None, heading_rows=range(row_count), caption_lines=len(score_names))


def comparison_grid(
    display: Tensor,
    overlays: Mapping[str, Tensor],
    row_labels: Sequence[str],
    title: str | None = None,
    *,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> np.ndarray:
    """One figure comparing methods on several images: a row per image, a column per method.

    Each row shows the image, then its overlay from every method in ``overlays``' order,
    with the row's label above it; the columns are titled ``"image"`` and the method
    names (a title wider than its column is shrunk to fit, so 8 methods side by side stay
    apart). It combines :func:`method_grid` (one method, many images) and
    :func:`probe_panel` (many methods, one image). Small images are enlarged by a whole
    factor (nearest-neighbour). The picture's size depends only on ``B``, the number of
    methods, the image size, whether a title is given, ``panel_inches`` and ``dpi`` -- not
    on the text.

    Args:
        display: Images ``[B, 3, H, W]`` in ``[0, 1]`` (from :func:`to_display`).
        overlays: Method name -> overlays of the same shape as ``display`` (from
            :func:`overlay`); at least one method.
        row_labels: One label per image, ``B`` strings.
        title: Text on top of the figure.
        panel_inches: Size of each image tile in inches (at ``dpi``).
        dpi: Pixels per inch of ``panel_inches``.

    Returns:
        numpy uint8 array ``[H', W', 3]`` (RGB).

    Raises:
        TypeError: If ``display`` or an overlay is not a tensor.
        ValueError: If ``display`` is not ``[B, 3, H, W]`` with ``B >= 1``, ``overlays``
            is empty or one of its shapes differs, the number of ``row_labels`` is not
            ``B``, or ``panel_inches`` / ``dpi`` is not positive.

    Example:
        >>> display = torch.rand(2, 3, 16, 16)
        >>> picture = comparison_grid(
        ...     display, {"Grad-CAM": display, "SaS": display}, ["probe 0", "probe 1"])
        >>> picture.dtype, picture.shape[-1]
        (dtype('uint8'), 3)
    """
    if len(overlays) == 0:
        raise ValueError(
            "comparison_grid: `overlays` must map at least one method name to its overlays, got an empty mapping"
        )
    tile_pixels = _tile_pixels("comparison_grid", panel_inches, dpi)
    headings = ["image", *(str(name) for name in overlays)]
    columns = {f"overlays[{name!r}]": pictures for name, pictures in overlays.items()}
    tiles, labels = _grid_tiles("comparison_grid", display, columns, row_labels, tile_pixels)
    rows = [
        [_Cell(column[row], heading=heading) for heading, column in zip(headings, tiles, strict=True)]
        for row in range(len(labels))
    ]
    return _draw(rows, title=title, row_labels=labels, heading_rows=(0,), caption_lines=0)


def save_png(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write an RGB uint8 picture as a PNG file, creating parent folders.

    Written with Pillow (a matplotlib dependency) as 8-bit RGB, so reading it back
    gives the same pixels.

    Args:
        array: numpy uint8 array ``[H, W, 3]``, e.g. from :func:`method_grid`.
        path: Destination file; its parent folders are created when missing.

    Raises:
        TypeError: If ``array`` is not a numpy uint8 array.
        ValueError: If ``array`` is not ``[H, W, 3]``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_png(np.zeros((4, 4, 3), dtype=np.uint8), Path(folder) / "a" / "b.png")
    """
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        description = f"numpy array of {array.dtype}" if isinstance(array, np.ndarray) else type(array).__name__
        raise TypeError(f"save_png: `array` must be a numpy uint8 array, got {description}")
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"save_png: `array` must have shape [H, W, 3], got {list(array.shape)}")
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(destination, format="PNG")
