"""Candidates from the maps alone: recurring top-attributed regions, per predicted class.

:func:`propose_candidates` is the first step of :func:`~lightning_sas.trust.discovery.discover`:

1. per probe, its regions (:mod:`~lightning_sas.trust.discovery.probe_regions`): the compact components of
   its top ``top_fraction`` of (lightly smoothed) map pixels. With ``object_masks``, pixels on the
   object grown by ``object_margin`` of the side are removed first: what is left is top evidence
   *off* the object, and a model that follows the object leaves only fragments, which rarely recur;
2. with ``completion`` (by default: with object masks), each region grown to the whole visual
   thing it sits on (:mod:`~lightning_sas.trust.discovery.region_completion`): a map's top pixels may cover
   only part of it, and pasting part of it need not move the model;
3. regions of probes predicted as one class grouped into places, then things
   (:mod:`~lightning_sas.trust.discovery.region_grouping`): a ruler along any edge, a sticker in any corner.
   A thing found in ``min_sources`` probes or more is a :class:`~lightning_sas.trust.discovery.candidate.Candidate`
   (a probe with several of its regions in one thing contributes their union), every proposal
   field measured (:mod:`~lightning_sas.trust.discovery.candidate_measures`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sas.scores.metrics import flat_maps
from lightning_sas.scores.object_evidence import dilate
from lightning_sas.trust.discovery.candidate import Candidate, suspicion_order
from lightning_sas.trust.discovery.candidate_measures import describe
from lightning_sas.trust.discovery.probe_regions import Region, hot_pixels, probe_regions
from lightning_sas.trust.discovery.region_completion import complete_regions
from lightning_sas.trust.discovery.region_content import standardised
from lightning_sas.trust.discovery.region_grouping import group_regions
from lightning_sas.validation import require_int, require_tensor, shape_of

__all__ = ["CONTROL_AVOID", "propose_candidates"]

#: The control window avoids the source map's top quarter of pixels: in a model that follows the
#: object, the whole object ranks there, and a window on the object is no control.
CONTROL_AVOID = 0.25


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
    completion: bool | None = None,
) -> list[Candidate]:
    """Recurring top-attributed regions, per predicted class, as candidates (see the module docstring).

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
        completion: Grow each region to the visual thing it sits on before grouping (``None``: only
            with ``object_masks``; without them the object itself would be completed).

    Returns:
        Candidates ordered by suspicion (before any transplant), at most ``max_candidates``.

    Raises:
        TypeError: If a tensor argument is not a tensor.
        ValueError: If shapes do not fit or a setting is out of range (naming it and its value).
    """
    maps, predictions, images, object_masks = _check_inputs(maps, predictions, images, object_masks)
    settings = _check_settings(
        top_fraction=top_fraction,
        max_candidates=max_candidates,
        regions_per_probe=regions_per_probe,
        min_sources=min_sources,
        smoothing=smoothing,
        object_margin=object_margin,
        link_iou=link_iou,
        merge_distance=merge_distance,
        completion=completion,
    )
    usable = torch.isfinite(maps.flatten(1)).all(dim=1) & ~flat_maps(maps.nan_to_num(0.0))
    standard = standardised(images)
    regions, avoid = _regions(maps, usable, standard, object_masks, settings)
    candidates = _candidates(regions, _Probes(standard, predictions, usable, avoid, object_masks), settings)
    return sorted(candidates, key=suspicion_order)[:max_candidates]


@dataclass
class _Probes:
    """What a candidate's measurements read about the whole probe set."""

    standard: Tensor  # [N, C, H, W] standardised images
    predictions: Tensor  # [N] int64
    usable: Tensor  # [N] bool: maps that rank pixels
    avoid: Tensor  # [N, H, W] bool: pixels control windows avoid
    object_masks: Tensor | None  # [N, H, W] bool


def _regions(
    maps: Tensor, usable: Tensor, standard: Tensor, object_masks: Tensor | None, settings: dict
) -> tuple[list[list[Region]], Tensor]:
    """Per probe its regions (completed if asked), and ``[N, H, W]`` the pixels control windows avoid."""
    top_fraction, smoothing = settings["top_fraction"], settings["smoothing"]
    object_region = None
    if object_masks is not None:
        object_region = dilate(object_masks, round(settings["object_margin"] * max(maps.shape[-2:])))
    hot, mass = hot_pixels(maps, usable, top_fraction, smoothing)
    # The control window avoids the source's well-attributed pixels (the object's own evidence,
    # beyond its very top, must not be the control) and the object.
    avoid, _ = hot_pixels(maps, usable, max(top_fraction, CONTROL_AVOID), smoothing)
    if object_region is not None:
        avoid |= object_region
        hot &= ~object_region
    regions = probe_regions(hot, mass, top_fraction=top_fraction, regions_per_probe=settings["regions_per_probe"])
    if settings["completion"] or (settings["completion"] is None and object_masks is not None):
        regions = complete_regions(regions, standard, mass, object_region)
    return regions, avoid


def _candidates(regions: list[list[Region]], probes: _Probes, settings: dict) -> list[Candidate]:
    """Per predicted class, its regions grouped into things; the things that recur, described."""
    candidates = []
    for class_index in torch.unique(probes.predictions).tolist():
        pool = [region for found in regions for region in found if probes.predictions[region.probe] == class_index]
        if not pool:
            continue
        link, merge = settings["link_iou"], settings["merge_distance"]
        for places in group_regions(pool, probes.standard, link_iou=link, merge_distance=merge):
            by_probe: dict[int, list[Region]] = {}
            place_of: dict[int, int] = {}
            for number, members in enumerate(places):
                for index in members:
                    by_probe.setdefault(pool[index].probe, []).append(pool[index])
                    place_of.setdefault(pool[index].probe, number)
            if len(by_probe) >= settings["min_sources"]:
                candidates.append(_candidate(class_index, by_probe, place_of, probes))
    return candidates


def _candidate(
    class_index: int, by_probe: dict[int, list[Region]], place_of: dict[int, int], probes: _Probes
) -> Candidate:
    """One recurring thing as a candidate: per source probe the union of its regions in the thing."""
    sources = sorted(by_probe)
    masks = torch.stack([torch.stack([r.mask for r in by_probe[probe]]).any(dim=0) for probe in sources])
    return describe(
        class_index,
        sources,
        masks,
        [sum(r.mass for r in by_probe[probe]) for probe in sources],
        probes.standard,
        probes.predictions,
        probes.usable,
        probes.avoid[sources] | masks,
        probes.object_masks,
        [place_of[probe] for probe in sources],
    )


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


def _check_settings(**settings: object) -> dict:
    """The proposal's settings, checked (``ValueError`` naming the first one out of range)."""
    settings["top_fraction"] = _check_fraction("top_fraction", settings["top_fraction"])
    for name in ("max_candidates", "regions_per_probe", "min_sources"):
        require_int(name, settings[name], minimum=1)
    smoothing, object_margin = settings["smoothing"], settings["object_margin"]
    if isinstance(smoothing, bool) or not isinstance(smoothing, int | float) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"`smoothing` must be a number in [0, 1), got {smoothing!r}.")
    if isinstance(object_margin, bool) or not isinstance(object_margin, int | float) or not 0.0 <= object_margin < 0.5:
        raise ValueError(f"`object_margin` must be a number in [0, 0.5), got {object_margin!r}.")
    settings["link_iou"] = _check_fraction("link_iou", settings["link_iou"], high=0.999)
    settings["merge_distance"] = _check_fraction("merge_distance", settings["merge_distance"], high=4.0)
    if settings["completion"] is not None and not isinstance(settings["completion"], bool):
        raise ValueError(f"`completion` must be True, False or None, got {settings['completion']!r}.")
    return settings


def _check_fraction(name: str, value: object, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise ValueError(f"`{name}` must be a number in ({low}, {high}], got {value!r}.")
    return float(value)
