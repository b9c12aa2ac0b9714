"""A proposed candidate's measurements: where it sits, how alike its sources are, what the others show there.

:func:`describe` turns one recurring thing (its sources' masks) into a
:class:`~lightning_sas.trust.discovery.candidate.Candidate` with every proposal field set: its box and
places, area, recurrence, centroid spread and distance from the centre, attribution share, the
content signals (``consistency`` across its sources, ``other_class_similarity`` to what probes of
the other classes show under the same masks; :mod:`~lightning_sas.trust.discovery.region_content`) and,
with object masks, its share off the object. :func:`source_accuracy` adds what the probes' labels say
about it once they are known.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lightning_sas.trust.discovery.candidate import Candidate
from lightning_sas.trust.discovery.region_content import boxes_of, content_distance, crop_weights, crops, similarity

__all__ = ["OTHER_PROBES", "describe", "source_accuracy"]

#: Most probes of the other classes whose content is compared with a candidate's.
OTHER_PROBES = 32


def describe(
    class_index: int,
    sources: list[int],
    masks: Tensor,
    masses: list[float],
    standard: Tensor,
    predictions: Tensor,
    usable: Tensor,
    exclude: Tensor,
    object_masks: Tensor | None,
    place_of: list[int],
) -> Candidate:
    """A :class:`~lightning_sas.trust.discovery.candidate.Candidate` with every proposal field measured.

    Args:
        class_index: The sources' predicted class.
        sources: The source probes (ascending).
        masks: ``[len(sources), H, W]`` bool, the thing in each source.
        masses: Per source the share of its map's mass inside the mask.
        standard: All probes in standardised units.
        predictions: ``[N]`` all probes' predicted classes.
        usable: ``[N]`` bool, the probes whose maps rank pixels.
        exclude: ``[len(sources), H, W]`` the pixels the control window avoids.
        object_masks: Optional ``[N, H, W]`` bool object masks.
        place_of: Per source the number of its place (see :attr:`Candidate.places`).
    """
    count = masks.shape[0]
    boxes = boxes_of(masks)
    centroid = _centroids(masks)
    places = _places(boxes, place_of, masks.shape[-2:])
    source_crops, weights = crops(standard, torch.tensor(sources), boxes), crop_weights(masks, boxes)
    others = torch.nonzero((predictions != class_index) & usable).flatten()[:OTHER_PROBES]
    class_probes = int(((predictions == class_index) & usable).sum())
    return Candidate(
        class_index=int(class_index),
        sources=list(sources),
        masks=masks,
        box=places[0][0],
        area=float(masks.flatten(1).float().mean(dim=1).mean()),
        recurrence=count / max(class_probes, 1),
        consistency=_consistency(source_crops, weights),
        outside_object=_outside_object(masks, sources, object_masks),
        exclude=exclude,
        attribution_share=float(np.mean(masses)),
        spread=float((centroid - centroid.mean(dim=0)).norm(dim=1).mean()),
        centre_distance=float((centroid - 0.5).norm(dim=1).mean()),
        other_class_similarity=_other_class_similarity(source_crops, weights, standard, others, boxes),
        places=places,
    )


def _centroids(masks: Tensor) -> Tensor:
    """``[R, 2]`` each mask's centroid ``(y, x)`` as fractions of the image side."""
    height, width = masks.shape[-2:]
    side = torch.tensor([height, width], dtype=torch.float32)
    grid_y, grid_x = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    weights = masks.float() / masks.flatten(1).sum(dim=1).clamp(min=1)[:, None, None]
    return torch.stack([(weights * grid_y).sum(dim=(1, 2)), (weights * grid_x).sum(dim=(1, 2))], dim=1) / side


def _places(
    boxes: Tensor, place_of: list[int], size: tuple[int, int]
) -> list[tuple[tuple[float, float, float, float], int]]:
    """Per place its mean box (fractions of the side) and number of sources, the most frequent first."""
    box_table = boxes.float() / torch.tensor(size, dtype=torch.float32).repeat(2)
    place_table = torch.tensor(place_of)
    places = []
    for number in torch.unique(place_table).tolist():
        members = place_table == number
        box = tuple(float(v) for v in box_table[members].mean(dim=0).tolist())
        places.append((box, int(members.sum())))
    places.sort(key=lambda item: -item[1])
    return places  # type: ignore[return-value]


def _consistency(source_crops: Tensor, weights: Tensor) -> float:
    """How alike the sources' crops are (best of 8 rotations/flips); NaN for one source."""
    count = source_crops.shape[0]
    if count < 2:
        return math.nan
    distance = content_distance(source_crops, weights)
    return similarity(distance[~torch.eye(count, dtype=torch.bool)])


def _other_class_similarity(
    source_crops: Tensor, weights: Tensor, standard: Tensor, others: Tensor, boxes: Tensor
) -> float:
    """How alike the sources' crops are to the other classes' pixels at each source region's place
    (as they are: no rotation); NaN without other probes."""
    if not len(others):
        return math.nan
    count = source_crops.shape[0]
    other_crops = crops(standard, others.repeat_interleave(count), boxes.repeat(len(others), 1))
    other_crops = other_crops.view(len(others), count, *source_crops.shape[1:])
    paired = ((other_crops - source_crops) ** 2 * weights[:, None]).sum(dim=(2, 3, 4))  # [others, sources]
    distance = paired / (source_crops.shape[1] * weights.sum(dim=(1, 2)).clamp(min=1e-6))
    return similarity(distance.flatten())


def _outside_object(masks: Tensor, sources: list[int], object_masks: Tensor | None) -> float:
    """Mean share of the masks' pixels off the (undilated) object; NaN without object masks."""
    if object_masks is None:
        return math.nan
    off = (masks & ~object_masks[sources]).flatten(1).sum(dim=1) / masks.flatten(1).sum(dim=1)
    return float(off.float().mean())


def source_accuracy(labels: Tensor | None, sources: list[int], class_index: int) -> tuple[float, int]:
    """``(accuracy, labelled)``: the share of the labelled ``sources`` whose label is
    ``class_index`` (the model's accuracy on the probes where the region was found), and how many
    sources have a label. Labels below 0 are unknown; ``(NaN, 0)`` when none is known.

    A shortcut predicts its class wherever it appears, so where the probes break its correlation
    with the label (the artifact on images of another class) its sources carry the model's
    errors; the object a clean model reads goes with the label.

    Example:
        >>> import torch
        >>> source_accuracy(torch.tensor([1, 0, 1, -1]), [0, 1, 3], class_index=1)
        (0.5, 2)
    """
    if labels is None or not sources:
        return math.nan, 0
    known = labels.detach().cpu()[torch.tensor(sources)]
    known = known[known >= 0]
    if not len(known):
        return math.nan, 0
    return float((known == class_index).float().mean()), len(known)
