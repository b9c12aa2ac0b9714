"""Line plots for the HTML reports: the faithfulness curves and the trends across checkpoints.

Drawn like :mod:`~lightning_sas.report.render`'s figures: a :class:`matplotlib.figure.Figure`
on the Agg canvas, never ``matplotlib.pyplot``, never ``rcParams``, so the user's matplotlib
state is left alone. Colours, fonts and line styles are given explicitly so a user's style file
cannot change the pictures, and text from the user (method and checkpoint names) is drawn with
math parsing off, so a ``$`` in a name is a dollar sign rather than a TeX error.

The figures are returned as PNG bytes, which the reports embed as ``data:`` URIs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_sas.report.curves import CURVE_KEYS

__all__ = ["Panel", "curve_panels", "line_figure"]

#: Line colours (matplotlib's tab10 without its red, which marks alerts).
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
#: The colour that marks the checkpoints whose alert fired.
ALERT_COLOUR = "#d62728"
#: Longest tick label (a checkpoint name); longer ones are cut with an ellipsis.
MAX_TICK = 18


@dataclass(frozen=True)
class Panel:
    """One axes of a line figure: lines sharing an x axis.

    Attributes:
        title: Text above the axes.
        x: The x positions, shared by every line.
        lines: Label (legend text) -> one y value per x (``None`` for a gap).
        xlabel: The x axis' label.
        ylabel: The y axis' label.
        ylim: The y range, or ``None`` to fit the data.
        markers: Draw a marker at every point (few points), or lines only (dense curves).
        ticks: Tick labels at ``x`` (checkpoint names when steps are unknown), or ``None``.
        marked: x positions to mark with a red band (checkpoints whose alert fired).
        marked_label: The legend text of the band.
    """

    title: str
    x: Sequence[float]
    lines: Mapping[str, Sequence[float | None]]
    xlabel: str
    ylabel: str
    ylim: tuple[float, float] | None = None
    markers: bool = True
    ticks: Sequence[str] | None = None
    marked: Sequence[float] = field(default_factory=tuple)
    marked_label: str = "alert fired"


def line_figure(panels: Sequence[Panel], *, panel_inches: tuple[float, float] = (5.6, 3.6), dpi: int = 100) -> bytes:
    """Panels side by side in one PNG.

    Args:
        panels: The axes, left to right (at least one).
        panel_inches: ``(width, height)`` of each panel in inches.
        dpi: Pixels per inch.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: If ``panels`` is empty.

    Example:
        >>> png = line_figure([Panel("t", [0, 1], {"a": [0.0, None]}, "x", "y")])
        >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    if not panels:
        raise ValueError("line_figure: `panels` must hold at least one panel, got none")
    width, height = panel_inches
    # Constrained layout keeps rotated tick labels and legends inside the picture.
    figure = Figure(figsize=(width * len(panels), height), dpi=dpi, facecolor="white", layout="constrained")
    canvas = FigureCanvasAgg(figure)
    try:
        for axes, panel in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
            _draw_panel(axes, panel)
        buffer = io.BytesIO()
        canvas.print_png(buffer)
        return buffer.getvalue()
    finally:
        figure.clear()


def _draw_panel(axes: Axes, panel: Panel) -> None:
    """Draw one panel's lines, alert bands, labels, ticks and legend on ``axes``."""
    text: dict[str, Any] = {"color": "black", "parse_math": False}
    axes.set_facecolor("white")
    axes.grid(True, color="#dddddd", linewidth=0.6)
    for position in panel.marked:
        axes.axvline(position, color=ALERT_COLOUR, alpha=0.25, linewidth=6, zorder=0)
    if panel.marked:
        axes.plot([], [], color=ALERT_COLOUR, alpha=0.25, linewidth=6, label=panel.marked_label)
    for index, (label, values) in enumerate(panel.lines.items()):
        axes.plot(
            list(panel.x),
            [math.nan if value is None else value for value in values],
            color=COLOURS[index % len(COLOURS)],
            linestyle="-" if index < len(COLOURS) else "--",
            linewidth=1.8,
            marker="o" if panel.markers else None,
            markersize=5,
            label=label,
        )
    axes.set_title(panel.title, fontsize=11, **text)
    axes.set_xlabel(panel.xlabel, fontsize=9, **text)
    axes.set_ylabel(panel.ylabel, fontsize=9, **text)
    axes.tick_params(labelsize=8, colors="black")
    if panel.ylim is not None:
        axes.set_ylim(*panel.ylim)
    if panel.ticks is not None:
        labels = [name if len(name) <= MAX_TICK else name[: MAX_TICK - 1] + "…" for name in panel.ticks]
        axes.set_xticks(list(panel.x), labels, rotation=30, ha="right", fontsize=8, **text)
    if not axes.get_legend_handles_labels()[0]:
        return
    legend = axes.legend(fontsize=8, loc="best", frameon=True)
    for entry in legend.get_texts():
        entry.set_parse_math(False)
        entry.set_color("black")


def curve_panels(methods: Mapping[str, Mapping[str, Any]]) -> list[Panel]:
    """The faithfulness plot's panels: deletion, then insertion, one line per method with its AUC.

    Args:
        methods: ``summary.json``'s ``"methods"``; a method's curve is read from
            ``deletion_curve`` / ``insertion_curve`` and its AUC from ``deletion_auc`` /
            ``insertion_auc``.

    Returns:
        The panels whose curve at least one method has (none without faithfulness).

    Example:
        >>> methods = {"sas": {"deletion_curve": [1.0, 0.5, 0.0], "deletion_auc": 0.5}}
        >>> [(panel.title, list(panel.lines)) for panel in curve_panels(methods)]
        [('Deletion', ['sas (AUC 0.500)'])]
    """
    panels = []
    for kind, key in CURVE_KEYS.items():
        curves = {name: means[key] for name, means in methods.items() if means.get(key)}
        if not curves:
            continue
        points = len(next(iter(curves.values())))
        verb = "removed" if kind == "deletion" else "put back"
        panels.append(
            Panel(
                title=kind.capitalize(),
                x=[k / (points - 1) for k in range(points)],
                lines={_auc_label(name, methods[name].get(f"{kind}_auc")): curve for name, curve in curves.items()},
                xlabel=f"fraction of pixels {verb} (top-ranked first)",
                ylabel="probability of the explained class",
                ylim=(-0.02, 1.02),
                markers=points <= 12,
            )
        )
    return panels


def _auc_label(name: str, auc: float | None) -> str:
    return f"{name} (AUC {'–' if auc is None else f'{auc:.3f}'})"
