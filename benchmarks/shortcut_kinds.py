"""Shortcut artifacts drawn on the ruler-bias demo's procedural lesions (for the discovery study).

Each localised kind is a function ``draw(images, lesion_masks, has, rng, style=None)`` that
takes clean lesion images ``[N, 3, H, W]`` in [0, 1], their lesion (object) masks ``[N, H, W]``,
a boolean "has the artifact" per image and a ``numpy.random.Generator``, and returns
``(images with the artifact drawn, artifact masks [N, H, W] float32 in {0, 1})``: the mask is 1
exactly on the pixels the artifact changed (all zeros for images without it). ``style`` holds the
per-run look of the artifact (colour, size range) so that a run's training, probe and
counterfactual splits show the same kind of artifact; :func:`draw_style` draws one, and ``None``
draws a fresh one from ``rng``. Size and position vary per image, and all geometry is a fraction
of the image side (with a floor of about a pixel on thin strokes), so the artifacts look alike
from 32 to 224 px.

Kinds:

- ``ruler``: the demo's own rulers (drawn by ``data._generate_full`` through its
  ``p_ruler_*`` arguments; :func:`render` handles it, there is no ``draw`` function);
- ``patch``: a coloured square in a random corner (as ``alert_study``'s), side 10-25% of the image;
- ``ink``: surgical ink -- a few dark purple/blue strokes and dots on a partial ring around the
  lesion, outside it;
- ``vignette``: dark dermoscope corners (black outside a circle of varying radius); the clean
  images already carry a soft, partial vignette in half of them, this one is hard and black;
- ``text``: a date / ID imprint (real characters, ``cv2.putText`` at high resolution, then
  area-downsampled) in a bright colour near a random border;
- ``bandaid``: a beige rounded strip with a lighter pad (and perforation dots when there are
  pixels enough) near the border on the side away from the lesion;
- ``colour_cast``: the non-local control -- a global warm tint; its mask is the whole image.

:func:`render` makes a whole split (lesions, labels, lesion masks, artifact masks) with exactly
``round(rate * class size)`` artifacts per class, as ``data.generate`` assigns rulers.

    python benchmarks/shortcut_kinds.py --preview outputs/kinds.png     # a grid of every kind
    python benchmarks/shortcut_kinds.py --time                          # 2,000 images of 32 px per kind
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "ruler_bias"))

from data import _generate_full

KINDS = ("ruler", "patch", "ink", "vignette", "text", "bandaid", "colour_cast")
#: Kinds whose artifact is a region of the image (``colour_cast`` is not).
LOCAL_KINDS = KINDS[:-1]

Draw = Callable[..., tuple[Tensor, Tensor]]


# ----------------------------------------------------------------------------- helpers


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates as fractions of the side: x ``[1, 1, S]``, y ``[1, S, 1]``."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return coords.view(1, 1, size), coords.view(1, size, 1)


def _column(values: np.ndarray, *shape: int) -> Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.float32).reshape(-1, *shape)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 0.012) -> Tensor:
    """Sensor-like noise so that drawn artifacts are not perfectly flat (as the skin is not)."""
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * sigma)


def _paint(images: Tensor, mask: Tensor, colour: Tensor, alpha: Tensor | float, rng: np.random.Generator) -> Tensor:
    """``images`` with ``colour`` ([N, 3, H, W] or broadcastable) blended in at ``alpha`` on ``mask``."""
    blended = images * (1 - alpha) + colour * alpha + _noise(rng, tuple(images.shape))
    return torch.where(mask.unsqueeze(1), blended.clamp(0, 1), images)


def lesion_geometry(lesion_masks: Tensor) -> tuple[Tensor, Tensor]:
    """Each lesion's centroid ``[N, 2]`` (x, y as fractions) and largest distance of a lesion pixel
    from it ``[N]`` (fractions; the centre 0.5 and 0 for an empty mask)."""
    size = lesion_masks.shape[-1]
    x, y = _grid(size)
    weight = lesion_masks.float()
    total = weight.flatten(1).sum(dim=1)
    safe = total.clamp_min(1)
    cx = torch.where(total > 0, (weight * x).flatten(1).sum(dim=1) / safe, torch.full_like(total, 0.5))
    cy = torch.where(total > 0, (weight * y).flatten(1).sum(dim=1) / safe, torch.full_like(total, 0.5))
    distance = torch.sqrt((x - cx.view(-1, 1, 1)) ** 2 + (y - cy.view(-1, 1, 1)) ** 2)
    extent = (distance * weight).flatten(1).amax(dim=1)
    return torch.stack([cx, cy], dim=1), extent


def _dilate(masks: Tensor, pixels: int) -> Tensor:
    if pixels <= 0:
        return masks.bool()
    kernel = 2 * pixels + 1
    return torch.nn.functional.max_pool2d(masks.float().unsqueeze(1), kernel, 1, pixels).squeeze(1) > 0


def _segment_distance(x: Tensor, y: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    """Distance of every pixel to segments a-b (``[N, K, 1, 1]`` end points) -> ``[N, K, H, W]``."""
    dx, dy = bx - ax, by - ay
    length2 = (dx * dx + dy * dy).clamp_min(1e-12)
    t = (((x - ax) * dx + (y - ay) * dy) / length2).clamp(0, 1)
    return torch.sqrt((x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2)


# ----------------------------------------------------------------------------- styles (per run)


def draw_style(kind: str, rng: np.random.Generator) -> dict:
    """The per-run look of a kind's artifact (JSON-serialisable)."""
    if kind == "ruler":
        return {}
    if kind == "patch":
        return {"side": float(rng.uniform(0.10, 0.25)), "colour": rng.uniform(0, 1, 3).tolist()}
    if kind == "ink":
        # Gentian violet to surgical-marker blue.
        return {"colour": [float(rng.uniform(0.12, 0.38)), float(rng.uniform(0.08, 0.2)), float(rng.uniform(0.4, 0.6))]}
    if kind == "vignette":
        low = float(rng.uniform(0.46, 0.52))
        return {"radius": [low, low + 0.08], "darkness": float(rng.uniform(0.02, 0.08))}
    if kind == "text":
        colours = ([1.0, 0.72, 0.2], [1.0, 1.0, 1.0], [1.0, 0.95, 0.3], [0.3, 1.0, 0.4])
        return {
            "colour": list(colours[rng.integers(len(colours))]),
            "height": float(rng.uniform(0.08, 0.11)),
            "format": int(rng.integers(3)),
        }
    if kind == "bandaid":
        return {
            "colour": (np.array([0.88, 0.72, 0.57]) + rng.normal(0, 0.03, 3)).clip(0, 1).tolist(),
            "pad": (np.array([0.96, 0.93, 0.9]) + rng.normal(0, 0.015, 3)).clip(0, 1).tolist(),
            "length": float(rng.uniform(0.26, 0.36)),
        }
    if kind == "colour_cast":
        warm = np.array([1.0, 0.3, -0.9])
        return {"direction": (warm + rng.normal(0, 0.1, 3)).tolist(), "strength": float(rng.uniform(0.10, 0.16))}
    raise ValueError(f"unknown kind {kind!r}; known: {KINDS}")


# ----------------------------------------------------------------------------- kinds


def patch(images: Tensor, lesion_masks: Tensor, has: Tensor, rng: np.random.Generator, style: dict | None = None):
    """A coloured square in a random corner; side the run's (10-25% of the side) times 0.85-1.15."""
    style = style or draw_style("patch", rng)
    n, _, size, _ = images.shape
    side = np.clip(np.rint(size * style["side"] * rng.uniform(0.85, 1.15, n)), 2, size // 3)
    corner = rng.integers(0, 4, n)
    inset = np.maximum(1, np.rint(size * rng.uniform(0.0, 0.04, (n, 2))))
    y0 = np.where(corner < 2, inset[:, 0], size - side - inset[:, 0])
    x0 = np.where(corner % 2 == 0, inset[:, 1], size - side - inset[:, 1])
    rows = torch.arange(size).view(1, size, 1)
    cols = torch.arange(size).view(1, 1, size)
    y0t, x0t, st = _column(y0, 1, 1), _column(x0, 1, 1), _column(side, 1, 1)
    mask = (rows >= y0t) & (rows < y0t + st) & (cols >= x0t) & (cols < x0t + st)
    mask &= has.view(n, 1, 1)
    colour = (torch.tensor(style["colour"]).view(1, 3, 1, 1) + _column(rng.normal(0, 0.03, (n, 3)), 3, 1, 1)).clamp(
        0, 1
    )
    return _paint(images, mask, colour, 1.0, rng), mask.float()


def ink(images: Tensor, lesion_masks: Tensor, has: Tensor, rng: np.random.Generator, style: dict | None = None):
    """Surgical ink: 3-6 strokes and dots on a partial ring 0.04-0.09 outside the lesion."""
    style = style or draw_style("ink", rng)
    n, _, size, _ = images.shape
    marks = 6
    centre, extent = lesion_geometry(lesion_masks)
    ring = extent.numpy() + rng.uniform(0.04, 0.09, n) + 1.5 / size
    start = rng.uniform(0, 2 * math.pi, n)
    span = rng.uniform(0.5, 1.3, n) * math.pi
    count = rng.integers(3, marks + 1, n)
    k = np.arange(marks)[None]
    angle = (
        start[:, None] + span[:, None] * (k + rng.uniform(-0.2, 0.2, (n, marks))) / np.maximum(count - 1, 1)[:, None]
    )
    radius = ring[:, None] + rng.uniform(-0.015, 0.015, (n, marks))
    mx = np.clip(centre[:, :1].numpy() + radius * np.cos(angle), 0.04, 0.96)
    my = np.clip(centre[:, 1:].numpy() + radius * np.sin(angle), 0.04, 0.96)
    stroke = rng.random((n, marks)) < 0.6
    length = np.where(stroke, rng.uniform(0.05, 0.11, (n, marks)), 0.0)
    direction = angle + math.pi / 2 + rng.normal(0, 0.5, (n, marks))  # about tangential
    half_x, half_y = 0.5 * length * np.cos(direction), 0.5 * length * np.sin(direction)
    thickness = np.maximum(
        np.where(stroke, rng.uniform(0.012, 0.02, (n, marks)), rng.uniform(0.018, 0.03, (n, marks))), 0.75 / size
    )
    x, y = _grid(size)
    x, y = x.unsqueeze(1), y.unsqueeze(1)
    distance = _segment_distance(
        x,
        y,
        _column(mx - half_x, marks, 1, 1),
        _column(my - half_y, marks, 1, 1),
        _column(mx + half_x, marks, 1, 1),
        _column(my + half_y, marks, 1, 1),
    )
    active = torch.from_numpy(k < count[:, None]).view(n, marks, 1, 1)
    mask = ((distance <= _column(thickness, marks, 1, 1)) & active).any(dim=1)
    mask &= ~_dilate(lesion_masks, 1) & has.view(n, 1, 1)
    colour = (torch.tensor(style["colour"]).view(1, 3, 1, 1) + _column(rng.normal(0, 0.03, (n, 3)), 3, 1, 1)).clamp(
        0, 1
    )
    alpha = _column(rng.uniform(0.75, 0.92, n), 1, 1, 1)
    return _paint(images, mask, colour, alpha, rng), mask.float()


def vignette(images: Tensor, lesion_masks: Tensor, has: Tensor, rng: np.random.Generator, style: dict | None = None):
    """Dark dermoscope corners: near black outside a circle (radius per image in the run's range)."""
    style = style or draw_style("vignette", rng)
    n, _, size, _ = images.shape
    radius = _column(rng.uniform(*style["radius"], n), 1, 1)
    cx = _column(0.5 + rng.normal(0, 0.015, n), 1, 1)
    cy = _column(0.5 + rng.normal(0, 0.015, n), 1, 1)
    x, y = _grid(size)
    distance = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    mask = (distance > radius) & has.view(n, 1, 1)
    # A one-pixel soft rim, then black.
    alpha = ((distance - radius) * size / 1.5 + 0.5).clamp(0.5, 1.0).unsqueeze(1) * 0.97
    dark = torch.full((n, 3, 1, 1), style["darkness"]) + _column(rng.uniform(-0.01, 0.01, n), 1, 1, 1)
    return _paint(images, mask, dark.clamp(0, 1), alpha, rng), mask.float()


def _stamp_text(rng: np.random.Generator, form: int) -> str:
    day, month, year = rng.integers(1, 29), rng.integers(1, 13), rng.integers(0, 25)
    if form == 0:
        return f"{day:02d}.{month:02d}.{year:02d}"
    if form == 1:
        return f"20{year:02d}/{month:02d}/{day:02d}"
    return f"ID {rng.integers(1000, 99999)}"


def text(images: Tensor, lesion_masks: Tensor, has: Tensor, rng: np.random.Generator, style: dict | None = None):
    """A date / ID imprint near a random border: ``cv2.putText`` at >= 128 px, area-downsampled."""
    style = style or draw_style("text", rng)
    n, _, size, _ = images.shape
    scale = max(1, math.ceil(128 / size))
    big = size * scale
    coverage = np.zeros((n, size, size), dtype=np.float32)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for index in torch.nonzero(has).flatten().tolist():
        words = _stamp_text(rng, style["format"])
        height = style["height"] * rng.uniform(0.85, 1.15) * big
        thickness = max(1, round(height / 7))
        (width0, height0), _ = cv2.getTextSize(words, font, 1.0, thickness)
        font_scale = min(height / height0, 0.8 * big / width0)
        (width, text_height), baseline = cv2.getTextSize(words, font, font_scale, thickness)
        margin = rng.uniform(0.03, 0.06, 2) * big
        left = [margin[0], (big - width) / 2, big - width - margin[0]][rng.integers(3)]
        bottom_edge = rng.random() < 0.5
        base_y = big - margin[1] - baseline if bottom_edge else margin[1] + text_height
        canvas = np.zeros((big, big), dtype=np.uint8)
        cv2.putText(canvas, words, (int(left), int(base_y)), font, font_scale, 255, thickness, cv2.LINE_AA)
        coverage[index] = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA) / 255.0
    alpha = torch.from_numpy(np.clip(coverage * 1.6, 0, 1))
    mask = alpha > 0.2
    colour = torch.tensor(style["colour"]).view(1, 3, 1, 1)
    return _paint(images, mask, colour, alpha.unsqueeze(1), rng), mask.float()


def bandaid(images: Tensor, lesion_masks: Tensor, has: Tensor, rng: np.random.Generator, style: dict | None = None):
    """A beige rounded strip with a lighter pad (perforation dots when dots get >= 4 px apart),
    near the border on one of the three sides where the lesion reaches least far, about
    tangential to it."""
    style = style or draw_style("bandaid", rng)
    n, _, size, _ = images.shape
    x, y = _grid(size)
    # How far the lesion reaches from the image centre along 8 directions.
    directions = np.arange(8) * math.pi / 4
    dx = torch.tensor(np.cos(directions), dtype=torch.float32).view(1, 8, 1, 1)
    dy = torch.tensor(np.sin(directions), dtype=torch.float32).view(1, 8, 1, 1)
    projection = (x.unsqueeze(1) - 0.5) * dx + (y.unsqueeze(1) - 0.5) * dy
    lesion = lesion_masks.bool().unsqueeze(1)
    reach = torch.where(lesion, projection, torch.full_like(projection, -1.0)).flatten(2).amax(dim=2).numpy()
    order = np.argsort(reach + rng.uniform(0, 1e-3, reach.shape), axis=1)
    choice = order[np.arange(n), rng.integers(0, 3, n)]
    theta = directions[choice] + rng.normal(0, 0.15, n)
    half_length = 0.5 * style["length"] * rng.uniform(0.85, 1.15, n)
    half_width = np.maximum(half_length * rng.uniform(0.3, 0.38, n), 1.6 / size)
    # Just clear of the lesion where there is room, at most 0.44 from the centre (the strip may
    # run off the image at its ends, as a real one does).
    distance = np.clip(reach[np.arange(n), choice] + half_width + 0.03, 0.3, 0.44)
    cx, cy = 0.5 + distance * np.cos(theta), 0.5 + distance * np.sin(theta)
    along = theta + math.pi / 2 + rng.normal(0, 0.25, n)
    ca, sa = _column(np.cos(along), 1, 1), _column(np.sin(along), 1, 1)
    u = (x - _column(cx, 1, 1)) * ca + (y - _column(cy, 1, 1)) * sa
    v = -(x - _column(cx, 1, 1)) * sa + (y - _column(cy, 1, 1)) * ca
    a, b = _column(half_length, 1, 1), _column(half_width, 1, 1)
    corner = 0.8 * b
    qx, qy = (u.abs() - a + corner).clamp_min(0), (v.abs() - b + corner).clamp_min(0)
    inside = (
        torch.sqrt(qx * qx + qy * qy)
        + torch.minimum(torch.maximum(u.abs() - a + corner, v.abs() - b + corner), torch.zeros(1))
        <= corner
    )
    mask = inside & has.view(n, 1, 1)
    pad = (u.abs() <= 0.32 * a) & (v.abs() <= 0.68 * b)
    colour = torch.tensor(style["colour"]).view(1, 3, 1, 1) + _column(rng.normal(0, 0.02, (n, 3)), 3, 1, 1)
    shade = 1.0 - 0.06 * (v / b).abs().unsqueeze(1)  # a little rounded
    colour = torch.where(pad.unsqueeze(1), torch.tensor(style["pad"]).view(1, 3, 1, 1), colour * shade)
    spacing = 0.045
    if spacing * size >= 4:
        fu = torch.remainder(u / spacing, 1.0) - 0.5
        fv = torch.remainder(v / spacing, 1.0) - 0.5
        dots = (fu * fu + fv * fv < 0.06) & ~pad & (v.abs() <= 0.75 * b) & (u.abs() <= a - corner)
        colour = torch.where(dots.unsqueeze(1), colour * 0.82, colour)
    return _paint(images, mask, colour.clamp(0, 1), 1.0, rng), mask.float()


def colour_cast(images: Tensor, lesion_masks: Tensor, has: Tensor, rng: np.random.Generator, style: dict | None = None):
    """The non-local control: a global warm tint (per-image strength 0.7-1.3 times the run's);
    the mask is the whole image."""
    style = style or draw_style("colour_cast", rng)
    n, _, size, _ = images.shape
    strength = _column(style["strength"] * rng.uniform(0.7, 1.3, n), 1, 1, 1)
    tint = 1.0 + strength * torch.tensor(style["direction"], dtype=torch.float32).view(1, 3, 1, 1)
    mask = has.view(n, 1, 1).expand(n, size, size)
    cast = (images * tint).clamp(0, 1)
    return torch.where(mask.unsqueeze(1), cast, images), mask.float()


DRAW: dict[str, Draw] = {
    "patch": patch,
    "ink": ink,
    "vignette": vignette,
    "text": text,
    "bandaid": bandaid,
    "colour_cast": colour_cast,
}


# ----------------------------------------------------------------------------- whole splits


def assign(labels: np.ndarray, rate_malignant: float, rate_benign: float, rng: np.random.Generator) -> np.ndarray:
    """Which images get the artifact: exactly ``round(rate * class size)`` per class, at random."""
    has = np.zeros(len(labels), dtype=bool)
    for label, rate in ((1, rate_malignant), (0, rate_benign)):
        members = np.flatnonzero(labels == label)
        has[rng.permutation(members)[: int(round(rate * members.size))]] = True
    return has


def render(
    kind: str, count: int, size: int, rate_malignant: float, rate_benign: float, seed: int, style: dict | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One split: ``(images [N, 3, S, S] in [0, 1], labels [N], lesion masks [N, S, S],
    artifact masks [N, S, S])`` (masks float32 in {0, 1}). The lesions depend only on ``seed``
    (not on the kind or the rates), so two kinds with the same seed share their lesions."""
    if kind == "ruler":
        rendered = _generate_full(
            count, image_size=size, p_ruler_malignant=rate_malignant, p_ruler_benign=rate_benign, seed=seed
        )
        return rendered.images, rendered.labels, rendered.lesion_masks, rendered.ruler_masks
    rendered = _generate_full(count, image_size=size, p_ruler_malignant=0.0, p_ruler_benign=0.0, seed=seed)
    rng = np.random.default_rng([seed, 7])
    style = style if style is not None else draw_style(kind, rng)
    has = torch.from_numpy(assign(rendered.labels.numpy(), rate_malignant, rate_benign, rng))
    images, masks = DRAW[kind](rendered.images, rendered.lesion_masks, has, rng, style)
    return images, rendered.labels, rendered.lesion_masks, masks


# ----------------------------------------------------------------------------- self-checks


def preview(path: Path, columns: int = 8) -> None:
    """A grid: per kind one row at 96 px, one row of the same with the artifact mask outlined in
    red and the lesion mask in green, and one row rendered at 32 px (shown enlarged)."""
    tiles = []
    cell = 96
    for row, kind in enumerate(KINDS):
        style = draw_style(kind, np.random.default_rng(100 + row))
        images, _, lesions, masks = render(kind, columns, cell, 1.0, 1.0, seed=row, style=style)
        small, _, _, _ = render(kind, columns, 32, 1.0, 1.0, seed=row, style=style)
        plain = (images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        outlined = plain.copy()
        for index in range(columns):
            for mask, colour in ((lesions[index], (0, 200, 0)), (masks[index], (255, 0, 0))):
                edge = mask.numpy().astype(np.uint8)
                edge = edge - cv2.erode(edge, np.ones((3, 3), np.uint8))
                outlined[index][edge > 0] = colour
        enlarged = (small.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        enlarged = np.stack([cv2.resize(im, (cell, cell), interpolation=cv2.INTER_NEAREST) for im in enlarged])
        for block in (plain, outlined, enlarged):
            tiles.append(np.concatenate([np.pad(im, ((2, 2), (2, 2), (0, 0)), constant_values=255) for im in block], 1))
        label = np.full((18, tiles[-1].shape[1], 3), 255, np.uint8)
        cv2.putText(label, kind, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.insert(len(tiles) - 3, label)
    grid = np.concatenate(tiles, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def timing(count: int = 2000, size: int = 32) -> dict[str, float]:
    """Seconds to draw each kind on ``count`` clean images (75% with the artifact), lesions not counted."""
    torch.set_num_threads(1)
    rendered = _generate_full(count, image_size=size, p_ruler_malignant=0.0, p_ruler_benign=0.0, seed=0)
    seconds = {}
    for kind, draw in DRAW.items():
        rng = np.random.default_rng(1)
        has = torch.from_numpy(rng.random(count) < 0.75)
        started = time.perf_counter()
        _, masks = draw(rendered.images, rendered.lesion_masks, has, rng)
        seconds[kind] = time.perf_counter() - started
        empty = int((masks.flatten(1).sum(dim=1)[has] == 0).sum())
        area = float(masks.flatten(1).mean(dim=1)[has].mean())
        overlap = float((masks * rendered.lesion_masks).flatten(1).sum(dim=1)[has].sum() / masks[has].sum())
        print(
            f"{kind:12s} {seconds[kind]:.2f} s   mean area {area:.3f}   on the lesion {overlap:.3f}   "
            f"empty masks {empty}",
            flush=True,
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preview", type=Path, help="write a PNG grid of every kind")
    parser.add_argument("--time", action="store_true", help="time 2,000 images of 32 px per kind")
    args = parser.parse_args()
    if args.preview:
        preview(args.preview)
        print(f"wrote {args.preview}")
    if args.time:
        timing()


if __name__ == "__main__":
    main()
