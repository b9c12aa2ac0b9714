"""What a region shows: its crops, in the probe set's standardised units, and how alike two are.

Discovery compares regions by content: across a candidate's sources (``consistency``), against
what the other classes show at the same place (``other_class_similarity``), and between places
(one thing seen along several edges). All of it works on:

* :func:`standardised` images -- per-channel units of the probe set's own spread, so a distance
  means the same for any normalisation and data set (two random pixels differ by 2 on average);
* :func:`crops` -- a region's bounding box resampled to ``CROP_SIDE`` x ``CROP_SIDE`` (area-averaged:
  pixel noise and a pixel's shift do not count, the region's layout of colours does), with
  :func:`crop_weights`, how much of each cell the region's own mask covers;
* :func:`content_distance` -- the mask-weighted mean squared difference of two crops, at the best
  of the 8 rotations and flips (:data:`DIHEDRAL`): a ruler along the top edge and one along the
  left edge, or a sticker in two corners, are one thing.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CROP_SIDE",
    "DIHEDRAL",
    "boxes_of",
    "content_distance",
    "crop_weights",
    "crops",
    "dihedral",
    "mean_crop",
    "similarity",
    "standardised",
]

#: Side of the crops that compare a region's content across probes.
CROP_SIDE = 8
#: The 8 rotations and flips (the dihedral group) a region's content is compared under.
DIHEDRAL = [(turns, flip) for flip in (False, True) for turns in range(4)]


def standardised(images: Tensor) -> Tensor:
    """Images in units of the probe set's per-channel spread (so content distances mean the same
    for any normalisation and data set)."""
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6)
    return (images - mean) / std


def boxes_of(masks: Tensor) -> Tensor:
    """``[R, 4]`` each mask's bounding box ``(y0, x0, y1, x1)`` in pixels (``y1``, ``x1`` exclusive)."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    index_h = torch.arange(masks.shape[1])
    index_w = torch.arange(masks.shape[2])
    y0 = torch.where(rows, index_h, masks.shape[1]).amin(dim=1)
    y1 = torch.where(rows, index_h, -1).amax(dim=1) + 1
    x0 = torch.where(cols, index_w, masks.shape[2]).amin(dim=1)
    x1 = torch.where(cols, index_w, -1).amax(dim=1) + 1
    return torch.stack([y0, x0, y1, x1], dim=1)


def _box_grid(boxes: Tensor, height: int, width: int) -> Tensor:
    """``[R, 2s, 2s, 2]`` ``grid_sample`` points: a 2x2 sample per crop cell, spread over each box."""
    side = 2 * CROP_SIDE
    steps = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    boxes = boxes.float()
    ys = boxes[:, :1] + steps * (boxes[:, 2:3] - boxes[:, :1])  # pixel-edge coordinates
    xs = boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2])
    # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the image's outer edges.
    grid_y, grid_x = torch.broadcast_tensors((2 * ys / height - 1)[:, :, None], (2 * xs / width - 1)[:, None, :])
    return torch.stack([grid_x, grid_y], dim=-1)


def crops(images: Tensor, probes: Tensor, boxes: Tensor) -> Tensor:
    """``[R, C, s, s]``: box ``r`` of ``images[probes[r]]``, resampled to ``CROP_SIDE`` (the nearest
    pixel at 2x2 points per cell, averaged: every sample lies inside the box, none blends in a
    neighbour outside it).

    One ``grid_sample`` per distinct image (its boxes side by side), so no image is copied per box.
    """
    channels, height, width = images.shape[1:]
    grid = _box_grid(boxes, height, width)
    side = grid.shape[1]
    result = torch.empty(len(probes), channels, side, side)
    for probe in torch.unique(probes).tolist():
        rows = torch.nonzero(probes == probe).flatten()
        points = grid[rows].permute(1, 0, 2, 3).reshape(1, side, len(rows) * side, 2)
        sampled = F.grid_sample(
            images[probe : probe + 1], points, mode="nearest", align_corners=False, padding_mode="border"
        )
        result[rows] = sampled.view(channels, side, len(rows), side).permute(2, 0, 1, 3)
    return F.avg_pool2d(result, 2)


def crop_weights(masks: Tensor, boxes: Tensor) -> Tensor:
    """``[R, s, s]``: how much of each crop cell the region's own mask covers."""
    grid = _box_grid(boxes, *masks.shape[-2:])
    sampled = F.grid_sample(masks[:, None].float(), grid, mode="nearest", align_corners=False, padding_mode="zeros")
    return F.avg_pool2d(sampled, 2)[:, 0]


def dihedral(tensor: Tensor, turns: int, flip: bool) -> Tensor:
    """``tensor`` turned ``turns`` quarter turns over its last two dimensions, then mirrored if ``flip``."""
    turned = torch.rot90(tensor, turns, dims=(-2, -1))
    return turned.flip(-1) if flip else turned


def content_distance(crops: Tensor, weights: Tensor, aligned: bool = True) -> Tensor:
    """``[R, R]``: mean squared difference per channel and pixel of each pair of crops, weighted by
    both masks' coverage, at the best of the 8 rotations/flips (``aligned=False``: as they are)."""
    channels = crops.shape[1]
    a = crops.flatten(2)  # [R, C, P]
    w = weights.flatten(1)  # [R, P]
    transforms = DIHEDRAL if aligned else [(0, False)]
    # Every rotation/flip of every crop at once: [G, R, C, P] and [G, R, P].
    b = torch.stack([dihedral(crops, turns, flip) for turns, flip in transforms]).flatten(3)
    v = torch.stack([dihedral(weights, turns, flip) for turns, flip in transforms]).flatten(2)
    # sum_p w v (a - b)^2 = sum_p w v a^2 - 2 sum_p (w a)(v b) + sum_p w v b^2, as matrix products.
    cross = (a * w[:, None]).flatten(1) @ (b * v[:, :, None]).flatten(2).transpose(1, 2)
    weighted = (w * (a * a).sum(dim=1)) @ v.transpose(1, 2) - 2 * cross + w @ (v * (b * b).sum(dim=2)).transpose(1, 2)
    overlap = w @ v.transpose(1, 2)
    distance = weighted.clamp(min=0) / (channels * overlap.clamp(min=1e-6))
    # Crops whose masks barely overlap (in any alignment) are not compared.
    distance = torch.where(overlap > 0.05 * CROP_SIDE**2, distance, torch.full_like(distance, math.inf))
    return distance.amin(dim=0)


def mean_crop(crops: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """One place's typical content: its crops turned to match the first one, then averaged."""
    reference, reference_weight = crops[0], weights[0]
    aligned, aligned_weights = [], []
    for crop, weight in zip(crops, weights, strict=True):
        options = [(dihedral(crop, turns, flip), dihedral(weight, turns, flip)) for turns, flip in DIHEDRAL]
        costs = [
            float(((option - reference) ** 2 * (reference_weight * option_weight)).sum())
            / max(float((reference_weight * option_weight).sum()), 1e-6)
            for option, option_weight in options
        ]
        best = int(np.argmin(costs))
        aligned.append(options[best][0])
        aligned_weights.append(options[best][1])
    return torch.stack(aligned).mean(dim=0), torch.stack(aligned_weights).mean(dim=0)


def similarity(distance: Tensor) -> float:
    """1 - half the mean squared difference (standardised units: two random pixels differ by 2);
    NaN when no distance is finite."""
    finite = distance[torch.isfinite(distance)]
    return float(1.0 - finite.mean() / 2) if finite.numel() else math.nan
