"""Turn images and attribution maps into pictures for TensorBoard and reports.

The math (undoing the input normalisation, the colormap lookup, alpha blending) runs on
the tensors' device; data leaves the device only at the end, as uint8, to build the
figure. Figures are drawn with :class:`matplotlib.figure.Figure` and the Agg canvas
directly: this module never imports ``matplotlib.pyplot``, never calls
``matplotlib.use`` and never changes ``rcParams``, so the user's global matplotlib state
(backend, open figures, style) is left alone, and nothing is kept alive between calls.

Every figure has a size fixed by its inputs' shapes (not by the text drawn in it), so
TensorBoard's step slider shows images of the same size at every step.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
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

# Layout, in inches. Thin margins; room for one line of 8-pt text per label.
_MARGIN = 0.06
_COLUMN_GAP = 0.06
_ROW_GAP = 0.06
_TITLE_HEIGHT = 0.32
_COLUMN_TITLE_HEIGHT = 0.22
_ROW_LABEL_HEIGHT = 0.24
_TITLE_FONT_SIZE = 10
_LABEL_FONT_SIZE = 8

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


def _render_grid(
    cells: Sequence[Sequence[np.ndarray]],
    *,
    title: str | None,
    column_titles: Sequence[str] | None,
    row_labels: Sequence[str] | None,
    panel_inches: float,
    dpi: int,
) -> np.ndarray:
    """Draw a rows x columns grid of equally sized RGB images into a uint8 array.

    The figure size depends only on the grid's shape, the image aspect and which text
    slots are used, never on the text itself.
    """
    rows = len(cells)
    columns = len(cells[0])
    image_height, image_width = cells[0][0].shape[:2]
    panel_width = panel_inches
    panel_height = panel_inches * image_height / image_width
    row_label_height = _ROW_LABEL_HEIGHT if row_labels is not None else 0.0
    title_height = _TITLE_HEIGHT if title is not None else 0.0
    column_title_height = _COLUMN_TITLE_HEIGHT if column_titles is not None else 0.0

    width = 2 * _MARGIN + columns * panel_width + (columns - 1) * _COLUMN_GAP
    height = (
        2 * _MARGIN
        + title_height
        + column_title_height
        + rows * (row_label_height + panel_height)
        + (rows - 1) * _ROW_GAP
    )
    figure = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    try:
        # Text colours are explicit so a user's dark style cannot make them invisible.
        if title is not None:
            figure.text(
                0.5,
                1 - (_MARGIN + title_height / 2) / height,
                title,
                ha="center",
                va="center",
                fontsize=_TITLE_FONT_SIZE,
                fontweight="bold",
                color="black",
            )
        top = height - _MARGIN - title_height  # inches from the bottom edge
        if column_titles is not None:
            for column, text in enumerate(column_titles):
                centre = _MARGIN + column * (panel_width + _COLUMN_GAP) + panel_width / 2
                figure.text(
                    centre / width,
                    (top - column_title_height / 2) / height,
                    text,
                    ha="center",
                    va="center",
                    fontsize=_LABEL_FONT_SIZE,
                    color="black",
                )
            top -= column_title_height
        for row, row_cells in enumerate(cells):
            if row_labels is not None:
                figure.text(
                    0.5,
                    (top - row_label_height / 2) / height,
                    row_labels[row],
                    ha="center",
                    va="center",
                    fontsize=_LABEL_FONT_SIZE,
                    color="black",
                )
                top -= row_label_height
            bottom = top - panel_height
            for column, picture in enumerate(row_cells):
                left = _MARGIN + column * (panel_width + _COLUMN_GAP)
                axes = figure.add_axes((left / width, bottom / height, panel_width / width, panel_height / height))
                axes.imshow(picture, interpolation="nearest", aspect="auto")
                axes.set_axis_off()
            top = bottom - _ROW_GAP
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        return rgba[..., :3].copy()
    finally:
        # Not registered with pyplot, so dropping the references frees it; clearing
        # first breaks the figure <-> artist cycles so memory returns without a GC pass.
        figure.clear()


def method_grid(
    display: Tensor,
    overlays: Tensor,
    row_labels: Sequence[str],
    title: str | None = None,
    *,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> np.ndarray:
    """One figure for one method: a row per probe, image next to its heatmap overlay.

    Each row carries its label above it (e.g. ``"true: melanoma  pred: melanoma
    (0.93)"``); pixels are drawn with nearest-neighbour interpolation so small inputs
    stay sharp. The picture's size depends only on ``B``, the image aspect, whether a
    title is given, ``panel_inches`` and ``dpi`` -- not on the text -- so successive
    audits line up in TensorBoard. Labels longer than about 60 characters are cut off
    at the figure's edges at the default size.

    Args:
        display: Images ``[B, 3, H, W]`` in ``[0, 1]`` (from :func:`to_display`).
        overlays: Heatmap overlays, same shape as ``display`` (from :func:`overlay`).
        row_labels: One label per probe, ``B`` strings.
        title: Text on top of the figure, e.g. the method name and epoch.
        panel_inches: Width of each image panel in inches.
        dpi: Pixels per inch of the rendered figure.

    Returns:
        numpy uint8 array ``[H', W', 3]`` (RGB).

    Raises:
        TypeError: If ``display`` or ``overlays`` is not a tensor.
        ValueError: If ``display`` is not ``[B, 3, H, W]`` with ``B >= 1``, ``overlays``'
            shape differs, or the number of ``row_labels`` is not ``B``.

    Example:
        >>> picture = method_grid(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16),
        ...                       ["probe 0", "probe 1"], title="Grad-CAM")
        >>> picture.dtype, picture.shape[-1]
        (dtype('uint8'), 3)
    """
    cells, labels = _grid_cells("method_grid", display, {"overlays": overlays}, row_labels)
    return _render_grid(
        cells,
        title=title,
        column_titles=None,
        row_labels=labels,
        panel_inches=panel_inches,
        dpi=dpi,
    )


def _grid_cells(
    function: str, display: Tensor, columns: Mapping[str, Tensor], row_labels: Sequence[str]
) -> tuple[list[list[np.ndarray]], list[str]]:
    """Check a grid's inputs and turn them into uint8 cells (one transfer off the device).

    ``columns`` maps each overlay argument's name, as error messages show it, to its tensor.
    Returns one row per image: the image, then its overlay from every column.
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
    stacked = to_uint8(torch.cat([display, *(pictures.to(display.device) for pictures in columns.values())]))
    grid = stacked.reshape(1 + len(columns), display.shape[0], *display.shape[2:], 3)
    return [list(grid[:, row]) for row in range(display.shape[0])], labels


def probe_panel(
    display_one: Tensor,
    overlays: Mapping[str, Tensor],
    title: str,
    *,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> np.ndarray:
    """One figure for one probe: the image, then one heatmap overlay per method.

    Column titles are ``"image"`` and the method names, in ``overlays``' order. The
    picture's size depends only on the number of methods, the image aspect,
    ``panel_inches`` and ``dpi``, so the panel of one probe keeps its size across
    audits (TensorBoard step slider).

    Args:
        display_one: One image ``[3, H, W]`` in ``[0, 1]``.
        overlays: Method name -> overlay ``[3, H, W]`` of the same shape.
        title: Text on top, e.g. ``"probe 3  true: melanoma  pred: nevus (0.61)"``.
        panel_inches: Width of each image panel in inches.
        dpi: Pixels per inch of the rendered figure.

    Returns:
        numpy uint8 array ``[H', W', 3]`` (RGB).

    Raises:
        TypeError: If ``display_one`` or an overlay is not a tensor.
        ValueError: If ``display_one`` is not ``[3, H, W]`` or an overlay's shape differs.

    Example:
        >>> picture = probe_panel(torch.rand(3, 16, 16),
        ...                       {"SaS": torch.rand(3, 16, 16)}, "probe 0")
        >>> picture.ndim
        3
    """
    require_tensor("probe_panel", "display_one", display_one)
    if display_one.dim() != 3 or display_one.shape[0] != 3:
        raise ValueError(f"probe_panel: `display_one` must have shape [3, H, W], got {shape_of(display_one)}")
    names = [str(name) for name in overlays]
    for name, picture in overlays.items():
        require_tensor("probe_panel", f"overlays[{name!r}]", picture)
        if picture.shape != display_one.shape:
            raise ValueError(
                f"probe_panel: `overlays[{name!r}]` must have the same shape as "
                f"`display_one` {shape_of(display_one)}, got {shape_of(picture)}"
            )
    stacked = torch.stack([display_one] + [picture.to(display_one.device) for picture in overlays.values()])
    pictures = to_uint8(stacked)
    return _render_grid(
        [list(pictures)],
        title=title,
        column_titles=["image", *names],
        row_labels=None,
        panel_inches=panel_inches,
        dpi=dpi,
    )


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
    names. It combines :func:`method_grid` (one method, many images) and
    :func:`probe_panel` (many methods, one image). The picture's size depends only on
    ``B``, the number of methods, the image aspect, whether a title is given,
    ``panel_inches`` and ``dpi`` -- not on the text.

    Args:
        display: Images ``[B, 3, H, W]`` in ``[0, 1]`` (from :func:`to_display`).
        overlays: Method name -> overlays of the same shape as ``display`` (from
            :func:`overlay`); at least one method.
        row_labels: One label per image, ``B`` strings.
        title: Text on top of the figure.
        panel_inches: Width of each image panel in inches.
        dpi: Pixels per inch of the rendered figure.

    Returns:
        numpy uint8 array ``[H', W', 3]`` (RGB).

    Raises:
        TypeError: If ``display`` or an overlay is not a tensor.
        ValueError: If ``display`` is not ``[B, 3, H, W]`` with ``B >= 1``, ``overlays``
            is empty or one of its shapes differs, or the number of ``row_labels`` is
            not ``B``.

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
    names = [str(name) for name in overlays]
    columns = {f"overlays[{name!r}]": pictures for name, pictures in overlays.items()}
    cells, labels = _grid_cells("comparison_grid", display, columns, row_labels)
    return _render_grid(
        cells,
        title=title,
        column_titles=["image", *names],
        row_labels=labels,
        panel_inches=panel_inches,
        dpi=dpi,
    )


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
