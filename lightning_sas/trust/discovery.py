"""Find a localised shortcut nobody named: recurring attributed regions, transplanted.

The ROI scores and :func:`~lightning_sas.trust.intervention.intervene` need the user to say what the
artifact is. This module looks for it from the maps, at two levels of side information:

* **object masks** (where the legitimate evidence is: a lesion segmentation): the map's
  top-ranked pixels *outside* the (slightly dilated) object are the suspects;
* **nothing**: the map's top-ranked compact regions, the object itself included.

Pipeline (:func:`discover`):

1. :func:`propose_candidates` -- per probe, the top ``top_fraction`` of the (lightly smoothed)
   map's pixels, split into 8-connected components; the ``regions_per_probe`` components with most
   attribution mass are the probe's regions. Regions of probes predicted as the same class are
   grouped where they recur: into places (mask IoU), then places into things with the same
   typical content (a crop comparison that allows rotations and flips, so a sticker in any
   corner is one candidate). Each thing seen in ``min_sources`` probes or more is a
   :class:`Candidate`.
2. :func:`transplant` -- the causal test: each candidate's pixels, cut from its source probes, are
   pasted at the same place onto probes predicted as other classes; the share whose prediction
   moves to the candidate's class is its ``flip_rate``. The *control* pastes, onto the same
   recipients at the same place, a same-shaped window taken from *elsewhere* in the source (off
   its top-attributed pixels and off the object): a non-local cue (a colour cast, the source's
   overall exposure) travels with any window and flips the controls too; a localised shortcut
   does not.
3. :func:`~lightning_sas.trust.strategies.cluster_strategies` -- SpRAy's clusters of each class's
   maps, for the report.

**Telling a shortcut from the object.** Without masks, a clean model's top region *is* the object,
and transplanting a malignant lesion onto a benign image flips it too: a flip rate alone would
call every good model biased. The candidate carries the signals that can separate the two, all
computed without knowing what the artifact looks like:

* ``control_flip_rate`` -- besides non-local cues, the control catches *place* effects: at the
  object's place every recipient has its own object, and pasting anything there (even skin from
  the source) damages it and moves the prediction; at an artifact's place recipients show
  background, and a background window changes nothing. ``flip_rate - control_flip_rate`` is what
  the region's own content does.
* ``other_class_similarity`` -- how alike the region's content is to what probes of the *other*
  classes show at the same place (standardised by the probe set's own pixel statistics: 1
  identical, 0 as different as two random pixels of the probe set). The object is in every image
  (a benign lesion sits where the malignant one does, and looks like one); an artifact is present
  or absent (the other classes mostly show skin there).
* ``consistency`` -- how alike the region's content is across its sources (an artifact is a copy
  of one thing; objects of one class vary). Measured the same way, best of 8 rotations/flips.
* ``spread``, ``centre_distance``, ``area``, ``attribution_share``, ``places`` -- where it sits
  and how much of the map it holds: a dominant central object versus a thing at the side.
* ``outside_object`` -- with masks, the share of the region off the object.

Measured on the ruler demo at 32 px (small CNNs, occlusion and Grad-CAM maps, 64 probes): the
ruler and corner-patch shortcuts gave flip rates 0.56-1.0 with controls 0.10-0.17 and other-class
similarity <= 0 (one candidate over the four edges / corners); the clean model's lesion gave flip
0.84 with control 0.43 and other-class similarity 0.38. ``consistency`` did *not* separate them
there (a ruler's ticks differ in phase and the skin around them varies, 0.2-0.6; lesions are
smooth dark blobs, 0.75): it is reported, not used in :attr:`Candidate.suspicion`. With object
masks the separation is clear: no candidate of the clean or colour-cast models flipped more than
0.1. Grad-CAM's coarse cells at 32 px sit beside a thin ruler rather than on it (its regions
then miss the ruler and do not flip); occlusion and finer maps find it.

:attr:`Candidate.suspicion` combines the signals into one documented ordering score; the alert
rule (thresholds chosen on seeded studies) lives elsewhere and reads the fields.

Every model forward runs inside :func:`~lightning_sas.runtime.model_state.attribution_mode` and
``torch.no_grad()``; every random draw comes from a local ``torch.Generator`` seeded from
``seed`` and the candidate, so the model's flags and the global random streams are untouched and
a candidate's result does not depend on the other candidates measured with it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector
from lightning_sas.scores.metrics import flat_maps
from lightning_sas.scores.object_evidence import dilate, object_enrichment, outside_enrichment, outside_share
from lightning_sas.trust.strategies import Strategies, cluster_strategies
from lightning_sas.validation import require_int, require_tensor, shape_of

__all__ = ["Candidate", "Discovery", "discover", "propose_candidates", "transplant"]

NAN = float("nan")
#: Side of the crops that compare a region's content across probes (area-averaged: pixel noise and
#: a pixel's shift do not count, the region's layout of colours does).
CROP_SIDE = 8
#: A region's content is compared under its 8 rotations and flips (the dihedral group): a ruler
#: along the top edge and one along the left edge, or a sticker in two corners, are one thing.
#: The control window avoids the source map's top quarter of pixels: in a model that follows the
#: object, the whole object ranks there, and a window on the object is no control.
CONTROL_AVOID = 0.25
#: Placements of the region's shape tried for each source's control window (the free ones are kept).
CONTROL_PLACES = 64
DIHEDRAL = [(turns, flip) for flip in (False, True) for turns in range(4)]


@dataclass
class Candidate:
    """One recurring attributed region, suspected of being a shortcut.

    Attributes:
        class_index: The class the region pushes (the predicted class of its source probes).
        sources: Probe positions where the region was found (ascending).
        masks: ``[len(sources), H, W]`` bool: the region in each source probe (CPU).
        box: Where it sits: the mean ``(y0, x0, y1, x1)`` of the sources' bounding boxes at its
            most frequent place (see ``places``), as fractions of the image side (``y1``, ``x1``
            exclusive).
        area: Mean area share of the region in its sources.
        recurrence: Share of the probes predicted as ``class_index`` (with a map that ranks
            pixels) in which the region was found.
        consistency: How alike the region's content is across its sources: 1 minus half the
            mean squared difference of their crops (resized to 8x8, best of 8 rotations/flips,
            over the pixels both masks cover), in units of the probe set's per-channel variance.
            1 identical copies, 0 as different as two random pixels of the probe set. NaN for
            one source.
        outside_object: Mean share of the region's pixels outside the (undilated) object mask;
            NaN without object masks.
        flip_rate: Share of the pastes onto probes predicted as another class whose prediction
            moved to ``class_index`` (NaN before :func:`transplant` or without recipients).
        probability_change: Mean change of ``class_index``'s softmax probability over those pastes.
        control_flip_rate: The same for the control pastes: a same-shaped window from elsewhere
            in the source image, pasted at the same place onto the same recipients.
        trials: Pastes measured (each with its control).
        exclude: ``[len(sources), H, W]`` bool: pixels of each source the control window must
            avoid (its top-attributed pixels and the dilated object); ``None``: the region only.
        attribution_share: Mean share of the source maps' mass (after shifting each map's
            minimum to 0) inside the region.
        spread: Mean distance of the sources' region centroids from their mean, as a fraction of
            the image side (0: always at one place).
        centre_distance: Mean distance of the region centroids from the image centre, as a
            fraction of the side (0 centred, about 0.7 in a corner).
        other_class_similarity: The ``consistency`` measure between the sources' regions and the
            pixels under the same masks in probes predicted as another class (the content the
            recipients already show there); NaN without such probes.
        control_probability_change: ``probability_change`` of the control pastes.
        recipients: Distinct recipient probes of the pastes.
        places: Where it was seen: per place (sources whose regions overlap), its mean box and
            number of sources, the most frequent first. A ruler along two edges has two places.
    """

    class_index: int
    sources: list[int]
    masks: Tensor
    box: tuple[float, float, float, float]
    area: float
    recurrence: float
    consistency: float
    outside_object: float
    flip_rate: float = NAN
    probability_change: float = NAN
    control_flip_rate: float = NAN
    trials: int = 0
    exclude: Tensor | None = field(default=None, repr=False)
    attribution_share: float = NAN
    spread: float = NAN
    centre_distance: float = NAN
    other_class_similarity: float = NAN
    control_probability_change: float = NAN
    recipients: int = 0
    places: list[tuple[tuple[float, float, float, float], int]] = field(default_factory=list)

    @property
    def distinctness(self) -> float:
        """``1 - other_class_similarity``: how unlike the region is to what the other classes show at
        its place (0 alike, 1 as different as two random pixels, above 1 more different still)."""
        return 1.0 - self.other_class_similarity

    @property
    def contrast(self) -> float:
        """``consistency - other_class_similarity``: how much more alike the sources are to each
        other than to what the other classes show at the same place (NaN if either is)."""
        return self.consistency - self.other_class_similarity

    @property
    def suspicion(self) -> float:
        """An ordering score in ``[0, 1]``: high for a recurring, causal region that the other
        classes do not show, off the object.

        ``recurrence × causal × distinct × off_object``:

        * ``causal = clip(flip_rate - control_flip_rate, 0, 1)``: what the region's own content
          does beyond any paste at that place (1 before :func:`transplant`: unknown);
        * ``distinct = clip(1 - other_class_similarity, 0, 1)``: the object is in every image, so
          the other classes show something like it at the same place; a present-or-absent
          artifact is not there in them;
        * ``off_object = outside_object`` with masks (1 without).

        A factor that cannot be measured (no other class, no recipient) counts as 0.5: neither
        evidence for nor against. It orders candidates for reports; the alert decision reads the
        fields themselves, with thresholds chosen on seeded studies.
        """
        distinct = 0.5 if math.isnan(self.distinctness) else min(max(self.distinctness, 0.0), 1.0)
        causal = 1.0
        if self.trials:
            causal = 0.5
            if not math.isnan(self.flip_rate):
                control = 0.0 if math.isnan(self.control_flip_rate) else self.control_flip_rate
                causal = min(max(self.flip_rate - control, 0.0), 1.0)
        off_object = 1.0 if math.isnan(self.outside_object) else self.outside_object
        return self.recurrence * causal * distinct * off_object

    def to_dict(self) -> dict:
        """Plain JSON-able data: every scalar field, the box, the sources; NaN as ``None``; no masks."""
        data: dict = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("masks", "exclude"):  # pixels, not report data
                continue
            if isinstance(value, float):
                value = _json_float(value)
            elif isinstance(value, tuple):
                value = [_json_float(part) for part in value]
            elif item.name == "places":
                value = [{"box": [_json_float(part) for part in box], "sources": count} for box, count in value]
            elif isinstance(value, list):
                value = list(value)
            data[item.name] = value
        data["contrast"] = _json_float(self.contrast)
        data["distinctness"] = _json_float(self.distinctness)
        data["suspicion"] = _json_float(self.suspicion)
        return data

    def summary(self) -> str:
        """One line for logs: class, place, recurrence, the content and causal signals."""
        y0, x0, y1, x1 = self.box
        parts = [
            f"class {self.class_index}: region at y {y0:.2f}-{y1:.2f}, x {x0:.2f}-{x1:.2f}",
            f"{self.area:.1%} of the image",
            f"in {len(self.sources)} probes at {len(self.places)} place(s) ({self.recurrence:.0%} of the class)",
            f"consistency {self.consistency:.2f}, other classes {self.other_class_similarity:.2f}",
        ]
        if not math.isnan(self.outside_object):
            parts.append(f"{self.outside_object:.0%} off the object")
        if self.trials:
            parts.append(
                f"flips {self.flip_rate:.0%} of {self.trials} pastes (control {self.control_flip_rate:.0%}, "
                f"Δp {self.probability_change:+.2f})"
            )
        parts.append(f"suspicion {self.suspicion:.2f}")
        return "; ".join(parts)


@dataclass
class Discovery:
    """What :func:`discover` found.

    Attributes:
        candidates: The candidates, most suspicious first (:attr:`Candidate.suspicion`).
        outside_share: ``[N]`` per probe :func:`~lightning_sas.scores.object_evidence.outside_share`
            (with the object dilated by the discovery's margin); ``None`` without object masks.
        object_area: ``[N]`` object area share per probe; ``None`` without object masks.
        strategies: Per predicted class, SpRAy's clusters of its maps.
        outside_enrichment: Pooled :func:`~lightning_sas.scores.object_evidence.outside_enrichment`
            (0 chance, 1 all top pixels off the object); NaN without object masks.
        object_enrichment: Pooled :func:`~lightning_sas.scores.object_evidence.object_enrichment`
            (1 all top pixels on the object, 0 chance); NaN without object masks.
        settings: The settings used (defaults filled in), for reports.
    """

    candidates: list[Candidate]
    outside_share: Tensor | None
    object_area: Tensor | None
    strategies: dict[int, Strategies]
    outside_enrichment: float = NAN
    object_enrichment: float = NAN
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-able data (tensors as lists, NaN as ``None``, no masks or maps)."""
        return {
            "candidates": [candidate.to_dict() for candidate in self.candidates],
            "outside_share": None
            if self.outside_share is None
            else [_json_float(v) for v in self.outside_share.tolist()],
            "object_area": None if self.object_area is None else [_json_float(v) for v in self.object_area.tolist()],
            "outside_enrichment": _json_float(self.outside_enrichment),
            "object_enrichment": _json_float(self.object_enrichment),
            "strategies": {str(key): value.to_dict() for key, value in sorted(self.strategies.items())},
            "settings": dict(self.settings),
        }

    def summary(self) -> str:
        """A few lines for logs: the object scores, then one line per candidate."""
        lines = []
        if self.outside_share is not None:
            lines.append(
                f"evidence off the object: enrichment {self.outside_enrichment:+.2f} "
                f"(0 chance, 1 all top pixels off it); on it: {self.object_enrichment:+.2f}"
            )
        split = [f"class {key}: {value.clusters}" for key, value in sorted(self.strategies.items())]
        lines.append("strategies per class: " + (", ".join(split) if split else "none"))
        lines += [candidate.summary() for candidate in self.candidates] or ["no recurring region"]
        return "\n".join(lines)


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# ----------------------------------------------------------------------------- checks


def _check_inputs(
    maps: Tensor, predictions: Tensor, images: Tensor, object_masks: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Validated CPU copies: maps float ``[N, H, W]``, predictions int64, images float, masks bool."""
    require_tensor("propose_candidates", "maps", maps)
    require_tensor("propose_candidates", "predictions", predictions)
    require_tensor("propose_candidates", "images", images)
    if maps.dim() != 3 or not maps.is_floating_point():
        raise ValueError(f"`maps` must be a float tensor [N, H, W], got {maps.dtype} {shape_of(maps)}.")
    count, height, width = maps.shape
    if images.dim() != 4 or images.shape[0] != count or images.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"`images` must have shape [{count}, C, {height}, {width}] to match `maps`, got {shape_of(images)}."
        )
    if not images.is_floating_point():
        raise ValueError(f"`images` must be floating point, got {images.dtype}.")
    if predictions.shape != (count,) or predictions.is_floating_point() or predictions.dtype == torch.bool:
        raise ValueError(
            f"`predictions` must be integer class indices [{count}], got {predictions.dtype} {shape_of(predictions)}."
        )
    if object_masks is not None:
        require_tensor("propose_candidates", "object_masks", object_masks)
        if object_masks.shape != maps.shape:
            raise ValueError(
                f"`object_masks` must have the shape of `maps` {shape_of(maps)}, got {shape_of(object_masks)}."
            )
        object_masks = (object_masks > 0.5 if object_masks.is_floating_point() else object_masks != 0).cpu()
    return maps.detach().float().cpu(), predictions.detach().long().cpu(), images.detach().float().cpu(), object_masks


def _check_fraction(name: str, value: object, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise ValueError(f"`{name}` must be a number in ({low}, {high}], got {value!r}.")
    return float(value)


# ----------------------------------------------------------------------------- regions


@dataclass
class _Region:
    probe: int
    mask: Tensor  # bool [H, W]
    mass: float  # share of the map's mass inside


def _smoothed(maps: Tensor, smoothing: float) -> Tensor:
    """Maps box-filtered over about ``smoothing`` of the side: gradient maps are speckled, and a
    region is a place, not a set of pixels."""
    side = max(1, round(smoothing * max(maps.shape[-2:])))
    kernel = side + 1 - side % 2  # odd, so the filter is centred
    if kernel == 1:
        return maps
    return F.avg_pool2d(maps[:, None], kernel, stride=1, padding=kernel // 2, count_include_pad=False)[:, 0]


def _hot_pixels(maps: Tensor, usable: Tensor, top_fraction: float, smoothing: float) -> tuple[Tensor, Tensor]:
    """``([N, H, W] bool, [N, H, W])``: each smoothed map's top ``top_fraction`` of pixels, and its
    mass (the smoothed map shifted to a minimum of 0, as a share of its total)."""
    _, height, width = maps.shape
    smooth = _smoothed(maps.nan_to_num(0.0), smoothing)
    flat = smooth.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    mass = flat - low
    mass = (mass / mass.sum(dim=1, keepdim=True).clamp(min=1e-12)).view_as(smooth)
    top = max(1, math.ceil(top_fraction * height * width))
    cut = flat.topk(top, dim=1).values[:, -1:]
    # Pixels at the map's floor are never "top", however many share it (a sparse Grad-CAM map).
    hot = ((flat >= cut) & (flat > low)).view_as(smooth) & usable[:, None, None]
    return hot, mass


def _probe_regions(hot: Tensor, mass: Tensor, *, top_fraction: float, regions_per_probe: int) -> list[list[_Region]]:
    """Per probe its regions: the components of its hot pixels with most mass."""
    from skimage.measure import label as connected_components

    count, height, width = hot.shape
    # A fragment under a tenth of the top-pixel budget is noise, not a place.
    smallest = max(4, math.ceil(0.1 * top_fraction * height * width))
    regions: list[list[_Region]] = []
    for index in range(count):
        found = []
        if bool(hot[index].any()):
            labelled = torch.from_numpy(connected_components(hot[index].numpy(), connectivity=2).astype(np.int64))
            for component in range(1, int(labelled.max()) + 1):
                mask = labelled == component
                if int(mask.sum()) >= smallest:
                    found.append(_Region(index, mask, float(mass[index][mask].sum())))
        found.sort(key=lambda region: -region.mass)
        # A second region counts only if it holds a fair part of the first one's mass.
        regions.append([region for region in found[:regions_per_probe] if region.mass >= 0.25 * found[0].mass])
    return regions


def _standardised(images: Tensor) -> Tensor:
    """Images in units of the probe set's per-channel spread (so content distances mean the same
    for any normalisation and data set)."""
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6)
    return (images - mean) / std


def _boxes(masks: Tensor) -> Tensor:
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


def _crops(images: Tensor, probes: Tensor, boxes: Tensor) -> Tensor:
    """``[R, C, s, s]``: box ``r`` of ``images[probes[r]]``, resampled to ``CROP_SIDE`` (the nearest
    pixel at 2x2 points per cell, averaged: every sample lies inside the box, none blends in a
    neighbour outside it).

    One ``grid_sample`` per distinct image (its boxes side by side), so no image is copied per box.
    """
    channels, height, width = images.shape[1:]
    grid = _box_grid(boxes, height, width)
    side = grid.shape[1]
    crops = torch.empty(len(probes), channels, side, side)
    for probe in torch.unique(probes).tolist():
        rows = torch.nonzero(probes == probe).flatten()
        points = grid[rows].permute(1, 0, 2, 3).reshape(1, side, len(rows) * side, 2)
        sampled = F.grid_sample(
            images[probe : probe + 1], points, mode="nearest", align_corners=False, padding_mode="border"
        )
        crops[rows] = sampled.view(channels, side, len(rows), side).permute(2, 0, 1, 3)
    return F.avg_pool2d(crops, 2)


def _crop_weights(masks: Tensor, boxes: Tensor) -> Tensor:
    """``[R, s, s]``: how much of each crop cell the region's own mask covers."""
    grid = _box_grid(boxes, *masks.shape[-2:])
    sampled = F.grid_sample(masks[:, None].float(), grid, mode="nearest", align_corners=False, padding_mode="zeros")
    return F.avg_pool2d(sampled, 2)[:, 0]


def _dihedral(tensor: Tensor, turns: int, flip: bool) -> Tensor:
    turned = torch.rot90(tensor, turns, dims=(-2, -1))
    return turned.flip(-1) if flip else turned


def _content_distance(crops: Tensor, weights: Tensor, aligned: bool = True) -> Tensor:
    """``[R, R]``: mean squared difference per channel and pixel of each pair of crops, weighted by
    both masks' coverage, at the best of the 8 rotations/flips (``aligned=False``: as they are)."""
    channels = crops.shape[1]
    a = crops.flatten(2)  # [R, C, P]
    w = weights.flatten(1)  # [R, P]
    transforms = DIHEDRAL if aligned else [(0, False)]
    # Every rotation/flip of every crop at once: [G, R, C, P] and [G, R, P].
    b = torch.stack([_dihedral(crops, turns, flip) for turns, flip in transforms]).flatten(3)
    v = torch.stack([_dihedral(weights, turns, flip) for turns, flip in transforms]).flatten(2)
    # sum_p w v (a - b)^2 = sum_p w v a^2 - 2 sum_p (w a)(v b) + sum_p w v b^2, as matrix products.
    cross = (a * w[:, None]).flatten(1) @ (b * v[:, :, None]).flatten(2).transpose(1, 2)
    weighted = (w * (a * a).sum(dim=1)) @ v.transpose(1, 2) - 2 * cross + w @ (v * (b * b).sum(dim=2)).transpose(1, 2)
    overlap = w @ v.transpose(1, 2)
    distance = weighted.clamp(min=0) / (channels * overlap.clamp(min=1e-6))
    # Crops whose masks barely overlap (in any alignment) are not compared.
    distance = torch.where(overlap > 0.05 * CROP_SIDE**2, distance, torch.full_like(distance, math.inf))
    return distance.amin(dim=0)


def _pairwise_iou(masks: Tensor) -> Tensor:
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    areas = flat.sum(dim=1)
    return inter / (areas[:, None] + areas[None, :] - inter).clamp(min=1)


def _linkage(distance: Tensor) -> list[list[int]]:
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


def _mean_crop(crops: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """One place's typical content: its crops turned to match the first one, then averaged."""
    reference, reference_weight = crops[0], weights[0]
    aligned, aligned_weights = [], []
    for crop, weight in zip(crops, weights, strict=True):
        options = [(_dihedral(crop, turns, flip), _dihedral(weight, turns, flip)) for turns, flip in DIHEDRAL]
        costs = [
            float(((option - reference) ** 2 * (reference_weight * option_weight)).sum())
            / max(float((reference_weight * option_weight).sum()), 1e-6)
            for option, option_weight in options
        ]
        best = int(np.argmin(costs))
        aligned.append(options[best][0])
        aligned_weights.append(options[best][1])
    return torch.stack(aligned).mean(dim=0), torch.stack(aligned_weights).mean(dim=0)


def _group(
    regions: list[_Region], standard: Tensor, *, link_iou: float, merge_distance: float
) -> list[list[list[int]]]:
    """Indices into ``regions``, grouped in two stages: places, then things.

    A *place* is a set of regions of different probes whose masks overlap (IoU >= ``link_iou``,
    average linkage). Places whose typical content (mean crop, aligned over rotations and flips)
    is alike (distance <= ``merge_distance``) are one *thing* seen at several places: a ruler
    along any edge, a sticker in any corner. Single crops are too noisy to link on their own (a
    ruler's ticks at another phase, the skin around it); the mean crop of a place is not.

    Returns:
        Things, each a list of places, each a list of region indices; largest first.
    """
    masks = torch.stack([region.mask for region in regions])
    place = ((1.0 - _pairwise_iou(masks)) / (1.0 - link_iou)).clamp(max=10.0)  # <= 1: overlapping enough
    probes = torch.tensor([region.probe for region in regions])
    # Two regions of one probe are two things in it, never one recurring thing.
    place = torch.where(probes[:, None] == probes[None, :], torch.full_like(place, 10.0), place)
    place.fill_diagonal_(0.0)
    places = _linkage(place)
    boxes = _boxes(masks)
    crops, weights = _crops(standard, probes, boxes), _crop_weights(masks, boxes)
    typical = [_mean_crop(crops[members], weights[members]) for members in places]
    content = _content_distance(torch.stack([c for c, _ in typical]), torch.stack([w for _, w in typical]))
    areas = torch.tensor([float(masks[members].flatten(1).sum(dim=1).float().mean()) for members in places])
    ratio = torch.maximum(areas[:, None] / areas[None, :], areas[None, :] / areas[:, None])
    # A thing keeps its size: a sticker is not a lesion of the same colour.
    content = torch.where(ratio <= 3.0, content / merge_distance, torch.full_like(content, 10.0)).clamp(max=10.0)
    content.fill_diagonal_(0.0)
    things = _linkage(torch.minimum(content, content.T))
    return [[places[index] for index in thing] for thing in things]


def _similarity(distance: Tensor) -> float:
    """1 - half the mean squared difference (standardised units: two random pixels differ by 2)."""
    finite = distance[torch.isfinite(distance)]
    return float(1.0 - finite.mean() / 2) if finite.numel() else NAN


def _describe(
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
    """A :class:`Candidate` with every proposal field measured."""
    count, height, width = masks.shape
    side = torch.tensor([height, width], dtype=torch.float32)
    boxes = _boxes(masks)
    box_table = boxes.float() / side.repeat(2)
    place_table = torch.tensor(place_of)
    grid_y, grid_x = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    weights_yx = masks.float() / masks.flatten(1).sum(dim=1).clamp(min=1)[:, None, None]
    centroid = torch.stack([(weights_yx * grid_y).sum(dim=(1, 2)), (weights_yx * grid_x).sum(dim=(1, 2))], dim=1) / side
    places = []
    for number in torch.unique(place_table).tolist():
        members = place_table == number
        places.append((tuple(float(v) for v in box_table[members].mean(dim=0).tolist()), int(members.sum())))
    places.sort(key=lambda item: -item[1])
    crops, weights = _crops(standard, torch.tensor(sources), boxes), _crop_weights(masks, boxes)
    consistency = NAN
    if count > 1:
        distance = _content_distance(crops, weights)
        off_diagonal = ~torch.eye(count, dtype=torch.bool)
        consistency = _similarity(distance[off_diagonal])
    # The same masks over probes of the other classes: what they show where the region sits.
    others = torch.nonzero((predictions != class_index) & usable).flatten()[:32]
    other_similarity = NAN
    if len(others):
        # As they are (no rotation): each other probe's pixels at each source region's place.
        other_crops = _crops(standard, others.repeat_interleave(count), boxes.repeat(len(others), 1))
        other_crops = other_crops.view(len(others), count, *crops.shape[1:])
        paired = ((other_crops - crops) ** 2 * weights[:, None]).sum(dim=(2, 3, 4))  # [others, sources]
        distance = paired / (crops.shape[1] * weights.sum(dim=(1, 2)).clamp(min=1e-6))
        other_similarity = _similarity(distance.flatten())
    outside_object = NAN
    if object_masks is not None:
        off = (masks & ~object_masks[sources]).flatten(1).sum(dim=1) / masks.flatten(1).sum(dim=1)
        outside_object = float(off.float().mean())
    class_probes = int(((predictions == class_index) & usable).sum())
    return Candidate(
        class_index=int(class_index),
        sources=list(sources),
        masks=masks,
        box=places[0][0],  # type: ignore[arg-type]
        area=float(masks.flatten(1).float().mean(dim=1).mean()),
        recurrence=count / max(class_probes, 1),
        consistency=consistency,
        outside_object=outside_object,
        exclude=exclude,
        attribution_share=float(np.mean(masses)),
        spread=float((centroid - centroid.mean(dim=0)).norm(dim=1).mean()),
        centre_distance=float((centroid - 0.5).norm(dim=1).mean()),
        other_class_similarity=other_similarity,
        places=places,
    )


def propose_candidates(
    maps: Tensor,
    predictions: Tensor,
    images: Tensor,
    object_masks: Tensor | None = None,
    *,
    top_fraction: float = 0.05,
    max_candidates: int = 8,
    regions_per_probe: int = 2,
    min_sources: int = 2,
    smoothing: float = 0.05,
    object_margin: float = 0.03,
    link_iou: float = 0.25,
    merge_distance: float = 0.5,
) -> list[Candidate]:
    """Recurring top-attributed regions, per predicted class, as :class:`Candidate` s.

    Per probe, the regions are the 8-connected components of the top ``top_fraction`` of the
    map's pixels (after a box filter over ``smoothing`` of the side; pixels at the map's minimum
    never count), at least a tenth of that budget in size; the ``regions_per_probe`` with most
    attribution mass are kept (a second one only with a quarter of the first one's mass). With
    ``object_masks``, pixels on the object grown by ``object_margin`` of the side are removed
    first: what is left is top evidence *off* the object, and a model that follows the object
    leaves only fragments, which rarely recur.

    Regions of probes predicted as one class are grouped in two stages (average linkage both):
    into *places* where their masks overlap (IoU >= ``link_iou``), then places into *things* where
    the places' typical content is alike (mean crop distance <= ``merge_distance``, in units of the
    probe set's per-channel variance, best of 8 rotations/flips, mean areas within a factor 3):
    a ruler along any edge, a sticker in any corner. A thing found in ``min_sources`` probes or
    more is a candidate (a probe with several of its regions in one thing contributes their union);
    its :attr:`Candidate.places` list where it was seen.

    Args:
        maps: Attribution maps ``[N, H, W]`` (any device; the proposal runs on the CPU, once per
            audit). Flat and non-finite maps are skipped.
        predictions: ``[N]`` the predicted class of each probe (the class its map explains).
        images: The probes ``[N, C, H, W]`` as the model takes them.
        object_masks: Optional ``[N, H, W]`` masks of the legitimate object (bool, 0/1 or soft).
        top_fraction: Share of each map's pixels that are "top" (0 < f <= 1).
        max_candidates: Most candidates returned (the most suspicious first).
        regions_per_probe: Most regions per probe (the object and one more thing, by default).
        min_sources: Fewest probes a region must recur in.
        smoothing: Box filter size as a fraction of the side (0 for none).
        object_margin: Object dilation as a fraction of the side.
        link_iou: Masks at least this alike in place are one place.
        merge_distance: Places at most this far apart in typical content are one thing (0:
            identical; 2: as different as two random pixels of the probe set).

    Returns:
        Candidates ordered by :attr:`Candidate.suspicion` (before any transplant), at most
        ``max_candidates``.

    Raises:
        TypeError: If a tensor argument is not a tensor.
        ValueError: If shapes do not fit or a setting is out of range (naming it and its value).
    """
    maps, predictions, images, object_masks = _check_inputs(maps, predictions, images, object_masks)
    top_fraction = _check_fraction("top_fraction", top_fraction)
    for name, value in (
        ("max_candidates", max_candidates),
        ("regions_per_probe", regions_per_probe),
        ("min_sources", min_sources),
    ):
        require_int(name, value, minimum=1)
    if isinstance(smoothing, bool) or not isinstance(smoothing, int | float) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"`smoothing` must be a number in [0, 1), got {smoothing!r}.")
    if isinstance(object_margin, bool) or not isinstance(object_margin, int | float) or not 0.0 <= object_margin < 0.5:
        raise ValueError(f"`object_margin` must be a number in [0, 0.5), got {object_margin!r}.")
    link_iou = _check_fraction("link_iou", link_iou, high=0.999)
    merge_distance = _check_fraction("merge_distance", merge_distance, high=4.0)

    usable = torch.isfinite(maps.flatten(1)).all(dim=1) & ~flat_maps(maps.nan_to_num(0.0))
    object_region = None
    if object_masks is not None:
        object_region = dilate(object_masks, round(object_margin * max(maps.shape[-2:])))
    hot, mass = _hot_pixels(maps, usable, top_fraction, smoothing)
    # The control window avoids the source's well-attributed pixels (the object's own evidence,
    # beyond its very top, must not be the control) and the object.
    avoid, _ = _hot_pixels(maps, usable, max(top_fraction, CONTROL_AVOID), smoothing)
    if object_region is not None:
        avoid |= object_region
        hot &= ~object_region
    regions = _probe_regions(hot, mass, top_fraction=top_fraction, regions_per_probe=regions_per_probe)
    standard = _standardised(images)
    candidates = []
    for class_index in torch.unique(predictions).tolist():
        pool = [
            region for probe_regions in regions for region in probe_regions if predictions[region.probe] == class_index
        ]
        if not pool:
            continue
        things = _group(pool, standard, link_iou=link_iou, merge_distance=merge_distance)
        for places in things:
            by_probe: dict[int, list[_Region]] = {}
            for index in (index for members in places for index in members):
                by_probe.setdefault(pool[index].probe, []).append(pool[index])
            if len(by_probe) < min_sources:
                continue
            sources = sorted(by_probe)
            place_of = {}
            for number, members in enumerate(places):
                for index in members:
                    place_of.setdefault(pool[index].probe, number)
            masks = torch.stack([torch.stack([r.mask for r in by_probe[probe]]).any(dim=0) for probe in sources])
            masses = [sum(r.mass for r in by_probe[probe]) for probe in sources]
            candidates.append(
                _describe(
                    class_index,
                    sources,
                    masks,
                    masses,
                    standard,
                    predictions,
                    usable,
                    avoid[sources] | masks,
                    object_masks,
                    [place_of[probe] for probe in sources],
                )
            )
    candidates.sort(key=_order)
    return candidates[:max_candidates]


def _order(candidate: Candidate) -> tuple[float, float, int]:
    suspicion = candidate.suspicion
    return (-(suspicion if not math.isnan(suspicion) else -1.0), -candidate.recurrence, candidate.sources[0])


# ----------------------------------------------------------------------------- transplant


def _control_shifts(mask: Tensor, avoid: Tensor, generator: torch.Generator) -> Tensor:
    """``[M, 2]`` shifts ``(dy, dx)`` that move ``mask`` to a place inside the image where it covers
    none of ``avoid`` (or the least of it): the best of ``CONTROL_PLACES`` seeded placements.

    Sampled rather than enumerated: an exhaustive search is a correlation with a kernel the size of
    the region, which costs seconds per source on 224-px images; a sample of placements finds a
    free window whenever a fair share of the image is free.
    """
    height, width = mask.shape
    y0, x0, y1, x1 = _boxes(mask[None])[0].tolist()
    ys = torch.randint(0, height - (y1 - y0) + 1, (CONTROL_PLACES,), generator=generator)
    xs = torch.randint(0, width - (x1 - x0) + 1, (CONTROL_PLACES,), generator=generator)
    pixels = torch.nonzero(mask[y0:y1, x0:x1])  # the shape, relative to its box
    covered = avoid[ys[:, None] + pixels[:, 0], xs[:, None] + pixels[:, 1]].sum(dim=1)
    best = covered == covered.min()
    return torch.stack([ys[best] - y0, xs[best] - x0], dim=1)


def transplant(
    model: nn.Module,
    images: Tensor,
    predictions: Tensor,
    candidates: Sequence[Candidate],
    *,
    trials: int = 4,
    seed: int = 0,
    output: OutputSelector = None,
    max_recipients: int = 64,
    max_batch: int = 256,
) -> list[Candidate]:
    """Paste each candidate onto probes predicted as other classes and count the flips.

    For candidate ``c`` and each recipient (a probe predicted, by ``predictions`` and by the model
    now, as a class other than ``c.class_index``; at most ``max_recipients``, a seeded choice),
    up to ``trials`` different sources are drawn; each paste copies the source image's pixels
    under its region mask onto the recipient at the same place. The control paste copies, onto
    the same place, the pixels under the same mask shape shifted to a window of the source that
    covers none of :attr:`Candidate.exclude` (the source's top pixels and object) if there is one
    (else the least of it), a seeded choice among those windows.

    The draws for a candidate come from a local generator seeded by ``seed``, the candidate's
    class and first source: its result does not depend on the other candidates. All pastes go
    through the model in batches of ``max_batch``, inside ``attribution_mode`` and
    ``torch.no_grad()``.

    Args:
        model: The classifier (no side effects: modes, flags and random streams are restored).
        images: The probes ``[N, C, H, W]`` the candidates were found on.
        predictions: ``[N]`` the predicted classes the candidates were found with.
        candidates: From :func:`propose_candidates`.
        trials: Pastes per recipient (>= 1; fewer when the candidate has fewer sources).
        seed: Seed of the recipients, sources and control windows.
        output: Where the logits are in the model's output (see :mod:`lightning_sas.runtime.outputs`).
        max_recipients: Most recipients per candidate.
        max_batch: Most images per forward.

    Returns:
        New candidates (the same order) with ``flip_rate``, ``probability_change``,
        ``control_flip_rate``, ``control_probability_change``, ``trials`` and ``recipients`` set.

    Raises:
        ValueError: If the shapes do not fit, a setting is out of range, or a candidate's class
            is not a class of the model.
    """
    require_tensor("transplant", "images", images)
    require_tensor("transplant", "predictions", predictions)
    for name, value, minimum in (
        ("trials", trials, 1),
        ("seed", seed, 0),
        ("max_recipients", max_recipients, 1),
        ("max_batch", max_batch, 1),
    ):
        require_int(name, value, minimum=minimum)
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"`images` must be a float tensor [N, C, H, W], got {images.dtype} {shape_of(images)}.")
    count, _, height, width = images.shape
    if predictions.shape != (count,) or predictions.is_floating_point():
        raise ValueError(
            f"`predictions` must be integer class indices [{count}], got {predictions.dtype} {shape_of(predictions)}."
        )
    for candidate in candidates:
        if candidate.masks.shape[-2:] != (height, width) or max(candidate.sources, default=count) >= count:
            raise ValueError(
                f"a candidate's masks {shape_of(candidate.masks)} and sources {candidate.sources} do not fit the "
                f"{count} images of {height}x{width} pixels."
            )
    if not candidates:
        return []
    predicted = predictions.detach().long().cpu()
    with attribution_mode(ClassifierOutput.wrap(model, output)) as forward_module, torch.no_grad():

        def probabilities(batch: Tensor) -> Tensor:
            return torch.cat([forward_module(part).float().softmax(dim=1) for part in batch.split(max_batch)]).cpu()

        before = probabilities(images)
        classes = before.shape[1]
        current = before.argmax(dim=1)
        results = []
        for candidate in candidates:
            if not 0 <= candidate.class_index < classes:
                raise ValueError(
                    f"a candidate's `class_index`={candidate.class_index} is not a class of this model "
                    f"({classes} classes)."
                )
            plan = _plan(candidate, predicted, current, trials=trials, seed=seed, max_recipients=max_recipients)
            if plan is None:
                results.append(replace(candidate, trials=0, recipients=0))
                continue
            recipients, sources, shifts = plan
            target = candidate.class_index
            flipped, change, control_flipped, control_change = [], [], [], []
            for part in torch.arange(len(recipients)).split(max(1, max_batch // 2)):
                real, control = _pasted(images, candidate, recipients[part], sources[part], shifts[part])
                after = probabilities(torch.cat([real, control]))
                start = before[recipients[part], target]
                half = len(part)
                flipped.append(after[:half].argmax(dim=1) == target)
                control_flipped.append(after[half:].argmax(dim=1) == target)
                change.append(after[:half, target] - start)
                control_change.append(after[half:, target] - start)
            results.append(
                replace(
                    candidate,
                    flip_rate=float(torch.cat(flipped).float().mean()),
                    probability_change=float(torch.cat(change).mean()),
                    control_flip_rate=float(torch.cat(control_flipped).float().mean()),
                    control_probability_change=float(torch.cat(control_change).mean()),
                    trials=len(recipients),
                    recipients=len(torch.unique(recipients)),
                )
            )
    return results


def _plan(
    candidate: Candidate, predicted: Tensor, current: Tensor, *, trials: int, seed: int, max_recipients: int
) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(recipients [T], source slots [T], control shifts [T, 2])`` of every paste, or None."""
    eligible = torch.nonzero((predicted != candidate.class_index) & (current != candidate.class_index)).flatten()
    if len(eligible) == 0:
        return None
    sequence = np.random.SeedSequence([seed, candidate.class_index, candidate.sources[0], len(candidate.sources)])
    generator = torch.Generator().manual_seed(int(sequence.generate_state(1)[0]))
    if len(eligible) > max_recipients:
        eligible = eligible[torch.randperm(len(eligible), generator=generator)[:max_recipients]].sort().values
    per_recipient = min(trials, len(candidate.sources))
    exclude = candidate.exclude if candidate.exclude is not None else candidate.masks
    shift_options = [
        _control_shifts(mask, avoid | mask, generator) for mask, avoid in zip(candidate.masks, exclude, strict=True)
    ]
    recipients, slots, shifts = [], [], []
    for recipient in eligible.tolist():
        for slot in torch.randperm(len(candidate.sources), generator=generator)[:per_recipient].tolist():
            options = shift_options[slot]
            recipients.append(recipient)
            slots.append(slot)
            shifts.append(options[int(torch.randint(len(options), (1,), generator=generator))])
    return torch.tensor(recipients), torch.tensor(slots), torch.stack(shifts)


def _pasted(
    images: Tensor, candidate: Candidate, recipients: Tensor, slots: Tensor, shifts: Tensor
) -> tuple[Tensor, Tensor]:
    """The real and the control pastes of one batch of the plan, on the images' device."""
    device = images.device
    sources = torch.tensor(candidate.sources)[slots].to(device)
    masks = candidate.masks[slots].to(device)[:, None]
    source_images = images[sources]
    # Shifted so that the window's pixels sit under the mask: the shift stays inside the image,
    # so the wrap-around of roll never reaches a masked pixel.
    windows = torch.stack(
        [
            torch.roll(image, shifts=(-int(dy), -int(dx)), dims=(1, 2))
            for image, (dy, dx) in zip(source_images, shifts.tolist(), strict=True)
        ]
    )
    targets = images[recipients.to(device)]
    return torch.where(masks, source_images, targets), torch.where(masks, windows, targets)


# ----------------------------------------------------------------------------- discover

_PROPOSAL_SETTINGS = (
    "top_fraction",
    "max_candidates",
    "regions_per_probe",
    "min_sources",
    "smoothing",
    "object_margin",
    "link_iou",
    "merge_distance",
)
_TRANSPLANT_SETTINGS = ("trials", "max_recipients", "max_batch")
_STRATEGY_SETTINGS = ("max_clusters",)


def discover(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    predictions: Tensor,
    object_masks: Tensor | None = None,
    *,
    seed: int = 0,
    output: OutputSelector = None,
    **settings: object,
) -> Discovery:
    """Look for a localised shortcut nobody named: propose, transplant, cluster (see the module docstring).

    Args:
        model: The classifier the maps explain (left as it was found).
        images: The probes ``[N, C, H, W]`` as the model takes them.
        maps: Their attribution maps ``[N, H, W]`` for the predicted classes.
        predictions: ``[N]`` the predicted classes.
        object_masks: Optional ``[N, H, W]`` masks of the legitimate object.
        seed: Seed of the transplant's and the clustering's draws.
        output: Where the logits are in the model's output.
        **settings: Any of :func:`propose_candidates`' settings (``top_fraction``,
            ``max_candidates``, ``regions_per_probe``, ``min_sources``, ``smoothing``,
            ``object_margin``, ``link_iou``, ``merge_distance``), :func:`transplant`'s (``trials``,
            ``max_recipients``, ``max_batch``) and ``max_clusters`` for
            :func:`~lightning_sas.trust.strategies.cluster_strategies`.

    Returns:
        The :class:`Discovery`, its candidates transplanted and ordered by suspicion.

    Raises:
        ValueError: If a setting is unknown or out of range, or the inputs do not fit.

    Example:
        >>> class Corner(nn.Module):  # class 1 iff the top-left 4x4 corner is bright
        ...     def forward(self, x):
        ...         logit = 10 * (x[:, :, :4, :4].mean(dim=(1, 2, 3)) - 0.5)
        ...         return torch.stack([-logit, logit], dim=1)
        >>> images = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.3
        >>> images[:8, :, :4, :4] = 1.0  # a white sticker on half of them
        >>> maps = torch.zeros(16, 16, 16)
        >>> maps[:8, :4, :4] = 1.0  # the maps of the sticker's class point at it
        >>> maps[8:, 6:10, 6:10] = 1.0
        >>> found = discover(Corner(), images, maps, Corner()(images).argmax(dim=1))
        >>> top = found.candidates[0]
        >>> top.class_index, top.box, top.flip_rate, top.control_flip_rate
        (1, (0.0, 0.0, 0.25, 0.25), 1.0, 0.0)
    """
    require_int("seed", seed, minimum=0)
    known = (*_PROPOSAL_SETTINGS, *_TRANSPLANT_SETTINGS, *_STRATEGY_SETTINGS)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"unknown discovery setting(s) {unknown}; expected some of {list(known)}.")
    proposal = {name: settings[name] for name in _PROPOSAL_SETTINGS if name in settings}
    moves = {name: settings[name] for name in _TRANSPLANT_SETTINGS if name in settings}
    candidates = propose_candidates(maps, predictions, images, object_masks, **proposal)  # type: ignore[arg-type]
    candidates = transplant(model, images, predictions, candidates, seed=seed, output=output, **moves)  # type: ignore[arg-type]
    candidates.sort(key=_order)
    strategies = cluster_strategies(
        maps, predictions, seed=seed, **{k: settings[k] for k in _STRATEGY_SETTINGS if k in settings}
    )  # type: ignore[arg-type]
    share = area = None
    outside, on_object = NAN, NAN
    if object_masks is not None:
        cpu_maps = maps.detach().float().cpu()
        masks = object_masks.detach().cpu()
        masks = masks > 0.5 if masks.is_floating_point() else masks != 0
        margin = round(float(settings.get("object_margin", _DEFAULTS["object_margin"])) * max(maps.shape[-2:]))  # type: ignore[arg-type]
        share = outside_share(cpu_maps, masks, margin=margin)
        area = masks.flatten(1).float().mean(dim=1)
        outside = outside_enrichment(cpu_maps, masks, margin=margin)
        on_object = object_enrichment(cpu_maps, masks, margin=margin)
    used = {"seed": seed, **{name: settings.get(name, _DEFAULTS[name]) for name in known}}
    return Discovery(
        candidates=candidates,
        outside_share=share,
        object_area=area,
        strategies=strategies,
        outside_enrichment=outside,
        object_enrichment=on_object,
        settings=used,
    )


#: Every setting's default, read from the functions' signatures (one source of truth).
_DEFAULTS = {
    name: parameter.default
    for function in (propose_candidates, transplant)
    for name, parameter in inspect.signature(function).parameters.items()
    if name in (*_PROPOSAL_SETTINGS, *_TRANSPLANT_SETTINGS)
} | {"max_clusters": inspect.signature(cluster_strategies).parameters["max_clusters"].default}
