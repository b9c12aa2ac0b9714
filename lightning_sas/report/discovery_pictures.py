"""Pictures of shortcut discovery: the candidates a reviewer should look at, and each class's strategies.

* :func:`candidate_sheet` -- a row per candidate (most suspicious first): up to three of its
  source probes with the region marked, and one probe of another class with the region pasted
  on, labelled with the class it pushes, where it sits, how often it recurs and what pasting
  it did.
* :func:`strategy_sheet` -- a row per cluster of a class's maps (SpRAy): its mean map over its
  first representative, then representatives with their own maps, so a class predicted two
  ways ("the lesion" / "something at the border") shows as two rows.

Both are drawn by :func:`~lightning_sas.report.render.comparison_grid` (fixed tile sizes,
nearest-neighbour enlargement), so they read like the audit's other pictures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_sas.probes.probe_set import class_label
from lightning_sas.report.colour import overlay
from lightning_sas.report.render import comparison_grid
from lightning_sas.trust.discovery import Candidate, Discovery

#: Rows of the candidate sheet (the report and summary.json list every candidate).
SHOWN_CANDIDATES = 4
#: Source probes shown per candidate.
SHOWN_SOURCES = 3


def _marked(image: Tensor, mask: Tensor) -> Tensor:
    """``image`` ``[3, H, W]`` with ``mask`` tinted and its outline drawn, so the region stands out."""
    mask = mask.to(image.device).float()
    inside = image * 0.55 + torch.tensor([1.0, 0.85, 0.0], device=image.device).view(3, 1, 1) * 0.45
    padded = torch.nn.functional.pad(mask[None, None], (1, 1, 1, 1))
    eroded = -torch.nn.functional.max_pool2d(-padded, 3, stride=1)[0, 0]
    edge = (mask - eroded).clamp(0, 1)
    marked = torch.where(mask[None] > 0, inside, image)
    return torch.where(edge[None] > 0, torch.tensor([1.0, 0.0, 0.0], device=image.device).view(3, 1, 1), marked)


def _fraction(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0%}"


def candidate_label(candidate: Candidate, class_names: Sequence[str] | None) -> str:
    """One line: the class it pushes, where and how large, how often, what pasting it did."""
    y0, x0, y1, x1 = candidate.box
    return (
        f"{class_label(candidate.class_index, class_names)}: y {y0:.2f}-{y1:.2f} x {x0:.2f}-{x1:.2f} "
        f"({candidate.area:.1%}), {len(candidate.sources)} probes; pasted: flips {_fraction(candidate.flip_rate)} "
        f"(control {_fraction(candidate.control_flip_rate)})"
    )


def candidate_sheet(
    display: Tensor,
    discovery: Discovery,
    predictions: Tensor,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> np.ndarray | None:
    """The candidates as one picture (``None`` without candidates).

    Args:
        display: The probes ``[N, 3, H, W]`` in ``[0, 1]`` (:func:`~lightning_sas.report.colour.to_display`).
        discovery: What :func:`~lightning_sas.trust.discovery.discover` found.
        predictions: ``[N]`` the predicted classes (to pick a probe of another class to paste onto).
        class_names: Names of the classes.
        title: Text on top.
    """
    shown = discovery.candidates[:SHOWN_CANDIDATES]
    if not shown:
        return None
    predictions = predictions.cpu()
    columns: dict[str, list[Tensor]] = {f"source {k + 1}": [] for k in range(1, SHOWN_SOURCES)}
    columns["pasted on another class"] = []
    firsts = []
    for candidate in shown:
        masks = candidate.masks
        sources = [_marked(display[source], masks[k]) for k, source in enumerate(candidate.sources[:SHOWN_SOURCES])]
        sources += [sources[-1]] * (SHOWN_SOURCES - len(sources))
        firsts.append(sources[0])
        for k in range(1, SHOWN_SOURCES):
            columns[f"source {k + 1}"].append(sources[k])
        others = torch.nonzero(predictions != candidate.class_index).flatten().tolist()
        recipient = display[others[0]] if others else torch.zeros_like(display[0])
        region = masks[0].to(display.device)
        pasted = torch.where(region[None], display[candidate.sources[0]], recipient)
        columns["pasted on another class"].append(_marked(pasted, masks[0]))
    labels = [candidate_label(candidate, class_names) for candidate in shown]
    stacked = {name: torch.stack(tiles) for name, tiles in columns.items()}
    sheet_title = title or "shortcut candidates"
    return comparison_grid(torch.stack(firsts), stacked, labels, title=sheet_title, first_heading="source 1")


def strategy_sheet(
    display: Tensor,
    maps: Tensor,
    discovery: Discovery,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> np.ndarray | None:
    """Each class's clusters of maps as one picture (``None`` without clusters).

    Args:
        display: The probes ``[N, 3, H, W]`` in ``[0, 1]``.
        maps: The maps discovery read ``[N, H, W]``.
        discovery: What :func:`~lightning_sas.trust.discovery.discover` found.
        class_names: Names of the classes.
        title: Text on top.
    """
    rows: list[tuple[str, Tensor, list[Tensor]]] = []
    for class_index, strategies in sorted(discovery.strategies.items()):
        for cluster, representatives in enumerate(strategies.representatives):
            if not representatives:
                continue
            members = int((strategies.labels == cluster).sum())
            label = (
                f"{class_label(class_index, class_names)}: strategy {cluster + 1} of {len(strategies.representatives)}"
                f", {members} probes"
            )
            first = representatives[0]
            mean_map = strategies.mean_maps[cluster].to(display.device)
            examples = [overlay(display[p : p + 1], maps[p : p + 1].to(display.device))[0] for p in representatives]
            examples += [examples[-1]] * (SHOWN_SOURCES - len(examples))
            rows.append((label, overlay(display[first : first + 1], mean_map[None])[0], examples[:SHOWN_SOURCES]))
    if not rows:
        return None
    means = torch.stack([row[1] for row in rows])
    columns = {f"example {k + 1}": torch.stack([row[2][k] for row in rows]) for k in range(SHOWN_SOURCES)}
    labels, sheet_title = [row[0] for row in rows], title or "strategies (clusters of maps)"
    return comparison_grid(means, columns, labels, title=sheet_title, first_heading="mean map")
