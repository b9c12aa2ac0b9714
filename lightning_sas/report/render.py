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

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import IdentityTransform
from PIL import Image
from torch import Tensor

from lightning_sas.report.colour import overlay, to_display, to_uint8
from lightning_sas.report.tiles import DPI, Cell, Frame, check_scores, fit_tiles, format_score, grid_tiles, tile_size
from lightning_sas.validation import require_tensor, shape_of

__all__ = ["to_display", "overlay", "to_uint8", "method_grid", "probe_panel", "comparison_grid", "save_png"]


def _draw(
    rows: Sequence[Sequence[Cell]],
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
    frame = Frame.around(
        rows,
        title=title is not None,
        row_labels=row_labels is not None,
        heading_rows=len(heading_rows),
        caption_lines=caption_lines,
    )
    width, height = frame.width, frame.height
    # The quarter pixel keeps Agg's integer canvas size from rounding down a pixel.
    figure = Figure(figsize=((width + 0.25) / DPI, (height + 0.25) / DPI), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    try:
        texts = _place(
            figure, frame, rows, title=title, labels=row_labels, heading_rows=heading_rows, captions=caption_lines
        )
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


def _place(
    figure: Figure,
    frame: Frame,
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None,
    labels: Sequence[str] | None,
    heading_rows: Sequence[int],
    captions: int,
) -> list[tuple[Text, float]]:
    """Put the title, the tiles and their text on ``figure``; returns each text with the width it may take."""
    layout, width, tile_width, tile_height = frame.layout, frame.width, frame.tile_width, frame.tile_height
    texts: list[tuple[Text, float]] = []

    def text(x: float, top: float, slot: float, content: str, size: float, max_width: float, **style: Any) -> None:
        texts.append((_text(figure, frame.height - top - slot / 2, x, content, size, **style), max_width))

    top = layout.margin  # pixels from the top edge
    if title is not None:
        text(width / 2, top, frame.title_height, title, layout.title_size, width - 2 * layout.margin, fontweight="bold")
        top += frame.title_height
    for index, row in enumerate(rows):
        lefts = [layout.margin + column * (tile_width + layout.gap) for column in range(len(row))]
        if index in heading_rows:
            for left, cell in zip(lefts, row, strict=True):
                text(left + tile_width / 2, top, frame.heading_height, cell.heading, layout.heading_size, tile_width)
            top += frame.heading_height
        if labels is not None:
            text(width / 2, top, frame.label_height, labels[index], layout.label_size, width - 2 * layout.margin)
            top += frame.label_height
        for left, cell in zip(lefts, row, strict=True):
            if cell.picture is not None:
                figure.figimage(
                    cell.picture, xo=left, yo=frame.height - top - tile_height, origin="upper", interpolation="nearest"
                )
        top += tile_height
        for left, cell in zip(lefts, row, strict=True):
            for line, content in enumerate(cell.caption):
                top_of_line = top + line * frame.caption_line
                slot_width = tile_width + layout.gap
                text(left + tile_width / 2, top_of_line, frame.caption_line, content, layout.caption_size, slot_width)
        top += captions * frame.caption_line + layout.gap
    return texts


def _text(figure: Figure, y: float, x: float, content: str, size: float, **style: Any) -> Text:
    """A centred text at pixel ``(x, y)`` (from the bottom left); its look is explicit, whatever the user's style."""
    # Colours, TeX and math parsing are explicit so a user's style cannot change them.
    return figure.text(
        x,
        y,
        content,
        transform=IdentityTransform(),
        ha="center",
        va="center",
        fontsize=size,
        color="black",
        usetex=False,
        parse_math=False,
        **style,
    )


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
    tile_pixels = tile_size("method_grid", panel_inches, dpi)
    tiles, labels = grid_tiles("method_grid", display, {"overlays": overlays}, row_labels, tile_pixels)
    checked = check_scores("method_grid", scores, len(labels))
    rows = [
        [
            Cell(tiles[0][row]),
            Cell(tiles[1][row], caption=tuple(f"{name} {format_score(v[row])}" for name, v in checked.items())),
        ]
        for row in range(len(labels))
    ]
    return _draw(rows, title=title, row_labels=labels, heading_rows=(), caption_lines=len(checked))


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
    tile_pixels = _check_panel_inputs(display_one, overlays, scores, max_columns, panel_inches, dpi)
    scores = dict(scores or {})
    score_names = list(dict.fromkeys(name for method in scores.values() for name in method))
    stacked = torch.stack([display_one] + [picture.to(display_one.device) for picture in overlays.values()])
    tiles = fit_tiles(stacked, tile_pixels)
    cells = [Cell(tiles[0], heading="image")]
    for method, tile in zip(overlays, tiles[1:], strict=True):
        values = scores.get(method, {})
        caption = tuple(f"{score} {format_score(values.get(score))}" for score in score_names)
        cells.append(Cell(tile, heading=str(method), caption=caption))
    rows = _wrapped(cells, max_columns)
    return _draw(rows, title=title, row_labels=None, heading_rows=range(len(rows)), caption_lines=len(score_names))


def _wrapped(cells: list[Cell], max_columns: int) -> list[list[Cell]]:
    """``cells`` in balanced rows of at most ``max_columns`` (9 cells make 3 rows of 3), the last one padded."""
    row_count = math.ceil(len(cells) / max_columns)
    columns = math.ceil(len(cells) / row_count)
    cells = cells + [Cell(None)] * (row_count * columns - len(cells))
    return [cells[start : start + columns] for start in range(0, len(cells), columns)]


def _check_panel_inputs(
    display_one: Tensor,
    overlays: Mapping[str, Tensor],
    scores: Mapping[str, Mapping[str, float]] | None,
    max_columns: int,
    panel_inches: float,
    dpi: int,
) -> int:
    """Check :func:`probe_panel`'s arguments; returns the tile size in pixels."""
    require_tensor("probe_panel", "display_one", display_one)
    if display_one.dim() != 3 or display_one.shape[0] != 3:
        raise ValueError(f"probe_panel: `display_one` must have shape [3, H, W], got {shape_of(display_one)}")
    if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 1:
        raise ValueError(f"probe_panel: `max_columns` must be an integer >= 1, got {max_columns!r}")
    tile_pixels = tile_size("probe_panel", panel_inches, dpi)
    names = [str(name) for name in overlays]
    for name, picture in overlays.items():
        require_tensor("probe_panel", f"overlays[{name!r}]", picture)
        if picture.shape != display_one.shape:
            raise ValueError(
                f"probe_panel: `overlays[{name!r}]` must have the same shape as "
                f"`display_one` {shape_of(display_one)}, got {shape_of(picture)}"
            )
    unknown = [name for name in scores or {} if name not in overlays]
    if unknown:
        raise ValueError(f"probe_panel: `scores` names methods that are not in `overlays` {names}: {unknown}")
    return tile_pixels


def comparison_grid(
    display: Tensor,
    overlays: Mapping[str, Tensor],
    row_labels: Sequence[str],
    title: str | None = None,
    *,
    panel_inches: float = 2.0,
    dpi: int = 100,
    first_heading: str = "image",
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
        first_heading: The first column's heading.

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
    tile_pixels = tile_size("comparison_grid", panel_inches, dpi)
    headings = [first_heading, *(str(name) for name in overlays)]
    columns = {f"overlays[{name!r}]": pictures for name, pictures in overlays.items()}
    tiles, labels = grid_tiles("comparison_grid", display, columns, row_labels, tile_pixels)
    rows = [
        [Cell(column[row], heading=heading) for heading, column in zip(headings, tiles, strict=True)]
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
