"""Where one probe's map points: its top-attributed pixels, split into a few compact regions.

Per probe, the map is box-filtered over about ``smoothing`` of the side (gradient maps are
speckled, and a region is a place, not a set of pixels); its top ``top_fraction`` of pixels are
*hot* (pixels at the map's floor never are, however many share it); the hot pixels' 8-connected
components, at least a tenth of the top-pixel budget in size, are the probe's regions, the
``regions_per_probe`` with most attribution mass kept (a second one only with a quarter of the
first one's mass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Region", "hot_pixels", "probe_regions", "smoothed"]


@dataclass
class Region:
    """One attributed region of one probe."""

    probe: int
    mask: Tensor  # bool [H, W]
    mass: float  # share of the map's mass inside


def smoothed(maps: Tensor, smoothing: float) -> Tensor:
    """Maps box-filtered over about ``smoothing`` of the side: gradient maps are speckled, and a
    region is a place, not a set of pixels."""
    side = max(1, round(smoothing * max(maps.shape[-2:])))
    kernel = side + 1 - side % 2  # odd, so the filter is centred
    if kernel == 1:
        return maps
    return F.avg_pool2d(maps[:, None], kernel, stride=1, padding=kernel // 2, count_include_pad=False)[:, 0]


def hot_pixels(maps: Tensor, usable: Tensor, top_fraction: float, smoothing: float) -> tuple[Tensor, Tensor]:
    """``([N, H, W] bool, [N, H, W])``: each smoothed map's top ``top_fraction`` of pixels, and its
    mass (the smoothed map shifted to a minimum of 0, as a share of its total)."""
    _, height, width = maps.shape
    smooth = smoothed(maps.nan_to_num(0.0), smoothing)
    flat = smooth.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    mass = flat - low
    mass = (mass / mass.sum(dim=1, keepdim=True).clamp(min=1e-12)).view_as(smooth)
    top = max(1, math.ceil(top_fraction * height * width))
    cut = flat.topk(top, dim=1).values[:, -1:]
    # Pixels at the map's floor are never "top", however many share it (a sparse Grad-CAM map).
    hot = ((flat >= cut) & (flat > low)).view_as(smooth) & usable[:, None, None]
    return hot, mass


def probe_regions(hot: Tensor, mass: Tensor, *, top_fraction: float, regions_per_probe: int) -> list[list[Region]]:
    """Per probe its regions: the components of its hot pixels with most mass."""
    from skimage.measure import label as connected_components

    count, height, width = hot.shape
    # A fragment under a tenth of the top-pixel budget is noise, not a place.
    smallest = max(4, math.ceil(0.1 * top_fraction * height * width))
    regions: list[list[Region]] = []
    for index in range(count):
        found = []
        if bool(hot[index].any()):
            labelled = torch.from_numpy(connected_components(hot[index].numpy(), connectivity=2).astype(np.int64))
            for component in range(1, int(labelled.max()) + 1):
                mask = labelled == component
                if int(mask.sum()) >= smallest:
                    found.append(Region(index, mask, float(mass[index][mask].sum())))
        found.sort(key=lambda region: -region.mass)
        # A second region counts only if it holds a fair part of the first one's mass.
        regions.append([region for region in found[:regions_per_probe] if region.mass >= 0.25 * found[0].mass])
    return regions
