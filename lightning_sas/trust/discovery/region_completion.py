"""Grow a probe's region to the whole visual thing it sits on.

A region is the top ``top_fraction`` of a map's pixels: when the thing the model reads is larger
than that (a 6x6 square on a 16-px image is 14% of it, a ruler runs along a whole edge), the
region covers only part of it, and pasting the part need not move the model (a model that needs
the whole square is not fooled by a third of it). Completion grows each region over the pixels
that look like it:

1. the region's colour is the per-channel median of its pixels in the probe set's standardised
   units (:func:`~lightning_sas.trust.discovery.region_content.standardised`); each pixel's distance to it
   is the root mean square over the channels;
2. a pixel is *alike* when that distance is at most ``max(COLOUR_TOLERANCE, SPREAD_FACTOR × the
   median distance of the region's own pixels)``: the tolerance widens with the region's own
   spread of colours (a textured thing), the median keeps a rim of background in the region
   from setting it;
3. the region is filled over 8-connected alike pixels (a flood fill from its pixels), off the
   (dilated) object where object masks are given: the thing it sits on, up to the thing's edge.
   If the thing is larger than ``MAX_GROWTH`` times the region or ``MAX_AREA`` of the image, the
   region has no edge near it (it sits on background, on skin): it is not a thing, and the region
   stays as it was. The region's own pixels always stay in it.

No knowledge of what the thing is: a white square, a ruler, a sticker are filled to their edges; a
region on a uniform background stays as it was. Regions of one probe that fill one thing become
one region. One connected-component labelling (SciPy's, per image slice) fills every region at
once; the result is deterministic.

Measured on the discovery study's 63 cached runs (32 biased, 31 clean; occlusion maps, 32 px,
the default alert rule): with object masks, completion raised the artifact candidates' median
coverage of the artifact from 0.34 to 0.51 and their median flip rate from 0.47 to 0.61; the rule
fired on 16 biased runs instead of 13, still on no clean one. Without object masks a clean model's
top region *is* the object, and completing it pastes the whole object: the rule fired on 5 clean
runs instead of 3 (biased 13 instead of 11). So
:func:`~lightning_sas.trust.discovery.candidate_regions.propose_candidates` completes regions only with
object masks by default (``completion=None``), where growth stays off the object.

Stopping at the limit instead (keeping the first ``MAX_GROWTH``-fold of a fill that has no edge,
grown ring by ring) was measured worse: with object masks the rule then fired on 10 of 26 biased
runs (of the 51 cached then) instead of 14 -- the regions spread over the skin around the artifact.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_sas.trust.discovery.probe_regions import Region

__all__ = ["COLOUR_TOLERANCE", "MAX_AREA", "MAX_GROWTH", "SPREAD_FACTOR", "complete_regions", "fill"]

#: Smallest colour tolerance, in standardised units (RMS over channels; two random pixels of the
#: probe set are about 1.4 apart).
COLOUR_TOLERANCE = 0.5
#: The tolerance is at least this many times the region's own median distance to its colour.
SPREAD_FACTOR = 2.0
#: A completed region is at most this many times its seed's area ...
MAX_GROWTH = 4.0
#: ... and at most this share of the image.
MAX_AREA = 0.25


def fill(seeds: Tensor, alike: Tensor) -> Tensor:
    """``[R, H, W]`` bool: the pixels 8-connected to each seed through ``alike`` pixels (the seed
    included): a flood fill of every seed at once.

    Args:
        seeds: ``[R, H, W]`` bool, the regions to fill from.
        alike: ``[R, H, W]`` bool, the pixels each may fill.
    """
    from scipy.ndimage import label

    within_slice = np.zeros((3, 3, 3), dtype=bool)
    within_slice[1] = True  # 8-connected inside each [H, W] slice, never across slices
    labels = torch.from_numpy(label((alike | seeds).numpy(), structure=within_slice)[0].astype(np.int64))
    touched = torch.zeros(int(labels.max()) + 1, dtype=torch.bool)
    touched[labels[seeds]] = True
    touched[0] = False  # the background label
    return touched[labels]


def complete_regions(
    regions: list[list[Region]], standard: Tensor, mass: Tensor, blocked: Tensor | None
) -> list[list[Region]]:
    """Each region grown to the thing it sits on (see the module docstring).

    Args:
        regions: Per probe its regions (:func:`~lightning_sas.trust.discovery.probe_regions.probe_regions`).
        standard: The probes ``[N, C, H, W]`` in standardised units.
        mass: ``[N, H, W]`` each probe's map mass per pixel (a region's ``mass`` is its sum).
        blocked: Optional ``[N, H, W]`` bool pixels no region may grow into (the dilated object).

    Returns:
        Per probe its completed regions, most mass first; regions that grew into each other are one.
    """
    flat = [region for probe_regions in regions for region in probe_regions]
    if not flat:
        return [list(probe_regions) for probe_regions in regions]
    seeds = torch.stack([region.mask for region in flat])
    probes = torch.tensor([region.probe for region in flat])
    alike = _alike(seeds, standard[probes])
    if blocked is not None:
        alike &= ~blocked[probes]
    height, width = seeds.shape[-2:]
    area = seeds.flatten(1).sum(dim=1).float()
    limits = torch.clamp(torch.minimum(MAX_GROWTH * area, torch.tensor(MAX_AREA * height * width)), min=area)
    grown = fill(seeds, alike)
    unbounded = grown.flatten(1).sum(dim=1) > limits
    grown[unbounded] = seeds[unbounded]  # no edge within the limits: not a thing, keep the region
    completed, start = [], 0
    for probe_regions in regions:
        count = len(probe_regions)
        completed.append(_merged(probe_regions[0].probe, list(grown[start : start + count]), mass) if count else [])
        start += count
    return completed


def _alike(seeds: Tensor, images: Tensor) -> Tensor:
    """``[R, H, W]`` bool: the pixels of each region's image close to the region's colour."""
    pixels = images.flatten(2)  # [R, C, P]
    inside = seeds.flatten(1)  # [R, P]
    colour = torch.stack([image[:, mask].median(dim=1).values for image, mask in zip(pixels, inside, strict=True)])
    distance = ((pixels - colour[:, :, None]) ** 2).mean(dim=1).sqrt()  # [R, P]
    spread = torch.stack([row[mask].median() for row, mask in zip(distance, inside, strict=True)])
    tolerance = torch.clamp(SPREAD_FACTOR * spread, min=COLOUR_TOLERANCE)
    return (distance <= tolerance[:, None]).view_as(seeds)


def _merged(probe: int, masks: list[Tensor], mass: Tensor) -> list[Region]:
    """One probe's grown masks as regions: masks that overlap are one region; most mass first."""
    kept: list[Tensor] = []
    for mask in masks:
        overlapping = [index for index, other in enumerate(kept) if bool((other & mask).any())]
        for index in reversed(overlapping):
            mask = mask | kept.pop(index)
        kept.append(mask)
    found = [Region(probe, mask, float(mass[probe][mask].sum())) for mask in kept]
    return sorted(found, key=lambda region: -region.mass)
