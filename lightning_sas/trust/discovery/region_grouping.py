"""Which regions of different probes are one recurring thing: places, then things.

A *place* is a set of regions of different probes whose masks overlap (IoU >= ``link_iou``,
average linkage). Places whose typical content (mean crop, aligned over rotations and flips; see
:mod:`lightning_sas.trust.discovery.region_content`) is alike (distance <= ``merge_distance``, mean areas
within a factor 3) are one *thing* seen at several places: a ruler along any edge, a sticker in
any corner. Single crops are too noisy to link on their own (a ruler's ticks at another phase, the
skin around it); the mean crop of a place is not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sas.trust.discovery.probe_regions import Region
from lightning_sas.trust.discovery.region_content import boxes_of, content_distance, crop_weights, crops, mean_crop

__all__ = ["group_regions", "linkage", "pairwise_iou"]

#: Places whose mean areas differ by more than this factor are never one thing (a sticker is not
#: a lesion of the same colour).
AREA_RATIO = 3.0


def pairwise_iou(masks: Tensor) -> Tensor:
    """``[R, R]`` intersection over union of each pair of bool masks ``[R, H, W]``."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    areas = flat.sum(dim=1)
    return inter / (areas[:, None] + areas[None, :] - inter).clamp(min=1)


def linkage(distance: Tensor) -> list[list[int]]:
    """Average-linkage clusters of a symmetric distance matrix cut at 1, largest first."""
    if distance.shape[0] == 1:
        return [[0]]
    from sklearn.cluster import AgglomerativeClustering

    clusters = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=1.0
    ).fit_predict(distance.double().numpy())
    groups: dict[int, list[int]] = {}
    for index, cluster in enumerate(clusters.tolist()):
        groups.setdefault(cluster, []).append(index)
    return sorted(groups.values(), key=lambda members: (-len(members), members[0]))


def group_regions(
    regions: list[Region], standard: Tensor, *, link_iou: float, merge_distance: float
) -> list[list[list[int]]]:
    """Indices into ``regions``, grouped in two stages: places, then things (see the module docstring).

    Args:
        regions: Regions of probes predicted as one class.
        standard: The probes in standardised units (:func:`~lightning_sas.trust.discovery.region_content.standardised`).
        link_iou: Masks at least this alike in place are one place.
        merge_distance: Places at most this far apart in typical content are one thing.

    Returns:
        Things, each a list of places, each a list of region indices; largest first.
    """
    masks = torch.stack([region.mask for region in regions])
    probes = torch.tensor([region.probe for region in regions])
    places = _places(masks, probes, link_iou)
    boxes = boxes_of(masks)
    region_crops, weights = crops(standard, probes, boxes), crop_weights(masks, boxes)
    typical = [mean_crop(region_crops[members], weights[members]) for members in places]
    content = content_distance(torch.stack([c for c, _ in typical]), torch.stack([w for _, w in typical]))
    areas = torch.tensor([float(masks[members].flatten(1).sum(dim=1).float().mean()) for members in places])
    ratio = torch.maximum(areas[:, None] / areas[None, :], areas[None, :] / areas[:, None])
    # A thing keeps its size: a sticker is not a lesion of the same colour.
    content = torch.where(ratio <= AREA_RATIO, content / merge_distance, torch.full_like(content, 10.0)).clamp(max=10.0)
    content.fill_diagonal_(0.0)
    things = linkage(torch.minimum(content, content.T))
    return [[places[index] for index in thing] for thing in things]


def _places(masks: Tensor, probes: Tensor, link_iou: float) -> list[list[int]]:
    """Regions whose masks overlap enough (IoU >= ``link_iou``), never two of one probe."""
    place = ((1.0 - pairwise_iou(masks)) / (1.0 - link_iou)).clamp(max=10.0)  # <= 1: overlapping enough
    # Two regions of one probe are two things in it, never one recurring thing.
    place = torch.where(probes[:, None] == probes[None, :], torch.full_like(place, 10.0), place)
    place.fill_diagonal_(0.0)
    return linkage(place)
