"""The tiles of the audit's figures: pictures brought to the tile size, and the pixel layout around them.

Pictures are pasted pixel for pixel: small probes are enlarged by a whole factor
(nearest-neighbour, so pixels stay honest), large ones shrunk by area averaging, to tiles of
about ``panel_inches * dpi`` pixels. Text is sized relative to the tiles (:class:`Layout`), and
a figure's size (:class:`Frame`) depends only on the tiles and on which text slots are used,
never on the text drawn in them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_sas.validation import require_tensor, shape_of

__all__ = ["DPI", "Cell", "Frame", "Layout", "check_scores", "fit_tiles", "format_score", "grid_tiles", "tile_size"]

# Layout, as shares of the tile width (text scales with the pictures; see Layout). At the
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
DPI = 72


def fit_tiles(pictures: Tensor, tile_pixels: int) -> np.ndarray:
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


def tile_size(function: str, panel_inches: float, dpi: int) -> int:
    """The tile size ``panel_inches * dpi`` in pixels, checked."""
    for name, value in (("panel_inches", panel_inches), ("dpi", dpi)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{function}: `{name}` must be a positive number, got {value!r}")
    return max(1, round(panel_inches * dpi))


@dataclass(frozen=True)
class Cell:
    """One tile of a figure: its picture (``None``: left blank), the text above it and the lines below it."""

    picture: np.ndarray | None
    heading: str = ""
    caption: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
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
    def for_tile(cls, tile_width: int) -> Layout:
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


def format_score(value: float | None) -> str:
    """A score as shown under a tile: two decimals, ``–`` for a missing or non-finite value."""
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.2f}"


def check_scores(function: str, scores: Mapping[str, Sequence[float] | Tensor] | None, count: int) -> dict:
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


def grid_tiles(
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
    stacked = fit_tiles(
        torch.cat([display, *(pictures.to(display.device) for pictures in columns.values())]), tile_pixels
    )
    return list(stacked.reshape(1 + len(columns), display.shape[0], *stacked.shape[1:])), labels


@dataclass(frozen=True)
class Frame:
    """The pixel sizes of one figure: its tiles, its text slots and its whole width and height."""

    layout: Layout
    tile_width: int
    tile_height: int
    title_height: int
    label_height: int
    heading_height: int
    caption_line: int
    width: int
    height: int

    @classmethod
    def around(
        cls,
        rows: Sequence[Sequence[Cell]],
        *,
        title: bool,
        row_labels: bool,
        heading_rows: int,
        caption_lines: int,
    ) -> Frame:
        """The frame of ``rows`` of tiles (all of the first picture's size), with the text slots in use.

        Args:
            rows: The tiles, row by row (at least one picture).
            title: Whether the figure has a title.
            row_labels: Whether each row has a label above it.
            heading_rows: How many rows have headings above their tiles.
            caption_lines: Caption lines under every row.
        """
        first = next(cell.picture for row in rows for cell in row if cell.picture is not None)
        tile_height, tile_width = first.shape[:2]
        layout = Layout.for_tile(tile_width)
        columns = max(len(row) for row in rows)
        title_height = layout.line(layout.title_size) if title else 0
        label_height = layout.line(layout.label_size) if row_labels else 0
        heading_height = layout.line(layout.heading_size)
        caption_line = layout.line(layout.caption_size)
        height = (
            2 * layout.margin
            + title_height
            + len(rows) * (label_height + tile_height + caption_lines * caption_line)
            + heading_rows * heading_height
            + (len(rows) - 1) * layout.gap
        )
        return cls(
            layout=layout,
            tile_width=tile_width,
            tile_height=tile_height,
            title_height=title_height,
            label_height=label_height,
            heading_height=heading_height,
            caption_line=caption_line,
            width=2 * layout.margin + columns * tile_width + (columns - 1) * layout.gap,
            height=height,
        )
