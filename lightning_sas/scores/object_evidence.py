"""Scores for attribution maps against an object mask: how much of the evidence lies off the object.

Where the legitimate evidence is known (a lesion segmentation, a bounding box of the object), the
question turns around: not "is the evidence on the artifact?" (which needs the artifact's ROI) but
"is the evidence *off the object*?", whatever sits there. Pure functions on tensors, batched, on
the maps' device, like :mod:`lightning_sas.scores.metrics`:

* :func:`outside_share` -- per probe, the fraction of the map's top-``|O|`` pixels (``O`` the
  object, optionally dilated by ``margin`` pixels) that lie outside ``O``. Rank based with
  fractional ties (it is ``1 - roi_share(maps, O)``), so maps of every method compare.
* :func:`outside_enrichment` -- the pooled statistic: 0 is chance (a map that knows nothing puts
  the outside's area share of its top pixels outside), 1 is every top pixel outside.
* :func:`object_enrichment` -- the same evidence read the other way round, bounded: 1 is every top
  pixel on the object, 0 chance (it is :func:`~lightning_sas.scores.metrics.roi_enrichment` with the
  object as the ROI).
* :func:`outside_mass` -- the share of the map's positive mass outside the object, for reference.
* :func:`dilate` -- a mask grown by a margin (segmentations are imperfect, coarse maps spill over
  the border: a margin keeps the object's own halo from counting as "outside").

Why the top ``|O|`` pixels, not the top ``|outside|`` (``roi_share`` with the outside as the ROI):
the outside is usually most of the image, and the top ``|outside|`` pixels then contain the object
*and* any hotspot beside it in either case. With an object on 20% of the image, a map that ranks a
ruler first, the object second and the skin last puts exactly as many of its top 80% outside
(60 of 80) as a map that ranks the object first: that statistic is blind to the shortcut. The top
``|O|`` pixels are where a map that follows the object puts the object; every outside pixel among
them displaces object evidence. (Measured on the ruler demo at 32 px, Grad-CAM: the top-``|outside|``
enrichment was -0.07 for both a ruler-shortcut and a clean model; the top-``|O|`` share 0.83 and
0.50.) A mass-based share (:func:`outside_mass`) depends on each method's scale and sparsity and is
kept for reference only, as :func:`~lightning_sas.scores.metrics.roi_mass` is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_sas.scores.metrics import flat_maps, roi_enrichment, roi_mass, roi_share
from lightning_sas.validation import require_int, require_tensor, shape_of

__all__ = ["dilate", "outside_share", "outside_enrichment", "object_enrichment", "outside_mass"]


def dilate(masks: Tensor, pixels: int) -> Tensor:
    """``masks`` ``[N, H, W]`` grown by ``pixels`` in every direction (a square structuring element).

    Args:
        masks: Bool or 0/1 masks ``[N, H, W]`` on any device.
        pixels: The margin, >= 0 (0 returns the masks as bool).

    Returns:
        Bool ``[N, H, W]`` on ``masks``' device.

    Example:
        >>> mask = torch.zeros(1, 5, 5, dtype=torch.bool)
        >>> mask[0, 2, 2] = True
        >>> int(dilate(mask, 1).sum())
        9
    """
    require_tensor("dilate", "masks", masks)
    require_int("pixels", pixels, minimum=0)
    if masks.dim() != 3:
        raise ValueError(f"dilate: `masks` must have shape [N, H, W], got {shape_of(masks)}")
    inside = masks != 0
    if pixels == 0 or inside.numel() == 0:
        return inside
    # A max filter of side 2r+1 marks every pixel within r (Chebyshev distance) of the mask.
    return F.max_pool2d(inside[:, None].float(), 2 * pixels + 1, stride=1, padding=pixels)[:, 0] > 0


def _object_region(function: str, maps: Tensor, object_masks: Tensor, margin: int) -> Tensor:
    """The checked, dilated object masks as bool ``[N, H, W]`` on the maps' device."""
    require_tensor(function, "maps", maps)
    require_tensor(function, "object_masks", object_masks)
    require_int("margin", margin, minimum=0)
    if not maps.is_floating_point() or maps.dim() != 3:
        raise ValueError(f"{function}: `maps` must be a float tensor [N, H, W], got {maps.dtype} {shape_of(maps)}")
    if object_masks.shape != maps.shape:
        raise ValueError(
            f"{function}: `object_masks` must have the shape of `maps` {shape_of(maps)}, got {shape_of(object_masks)}"
        )
    if object_masks.device != maps.device:
        raise ValueError(
            f"{function}: `object_masks` must be on the device of `maps` ({maps.device}), got {object_masks.device}"
        )
    if object_masks.is_floating_point():
        # A soft segmentation (probabilities, a blurred mask) counts where it is above one half.
        object_masks = object_masks > 0.5
    return dilate(object_masks, margin)


def outside_share(maps: Tensor, object_masks: Tensor, *, margin: int = 0) -> Tensor:
    """Per probe, the fraction of the map's top-``|O|`` pixels lying outside the object ``O``.

    ``O`` is the object mask dilated by ``margin`` pixels. The share is ``1 - roi_share(maps, O)``:
    rank based, ties at the cut counted fractionally, so a constant map scores exactly the chance
    level ``1 - |O| / HW`` and a map that is highest exactly on the object scores 0. See the module
    docstring for why ``|O|`` and not ``|outside|`` pixels.

    Args:
        maps: Attribution maps ``[N, H, W]``, floating point, any device.
        object_masks: Object masks of the same shape on the same device: bool, 0/1, or soft
            (float: above 0.5 is the object).
        margin: Pixels by which the object is grown first (>= 0).

    Returns:
        ``[N]`` shares in ``[0, 1]`` on the maps' device; NaN where the object is empty or covers
        the whole image (no outside), or the map is not finite.

    Raises:
        TypeError: If ``maps`` or ``object_masks`` is not a tensor.
        ValueError: If the shapes or devices differ, ``maps`` is not float ``[N, H, W]`` or
            ``margin`` is negative.

    Example:
        >>> maps = torch.tensor([[[0.9, 0.8], [0.1, 0.0]]])
        >>> lesion = torch.tensor([[[False, True], [False, False]]])
        >>> outside_share(maps, lesion)  # the top pixel (0.9) is off the one-pixel object
        tensor([1.])
    """
    inside = _object_region("outside_share", maps, object_masks, margin)
    finite = torch.isfinite(maps.flatten(1)).all(dim=1)
    share = 1.0 - roi_share(torch.where(finite[:, None, None], maps, torch.zeros_like(maps)), inside)
    has_outside = (~inside).flatten(1).any(dim=1)
    return torch.where(finite & has_outside, share, torch.full_like(share, float("nan")))


def _scored(maps: Tensor, inside: Tensor, min_pixels: int) -> Tensor:
    """``[N]`` bool: probes whose object and outside both have ``min_pixels`` and whose map ranks."""
    object_pixels = inside.flatten(1).sum(dim=1)
    outside_pixels = inside[0].numel() - object_pixels
    finite = torch.isfinite(maps.flatten(1)).all(dim=1)
    # A flat map is "no evidence", as for the ROI scores: left out, not scored at chance.
    return (object_pixels >= min_pixels) & (outside_pixels >= min_pixels) & finite & ~flat_maps(maps)


def outside_enrichment(maps: Tensor, object_masks: Tensor, min_pixels: int = 9, *, margin: int = 0) -> float:
    """How far the maps' top pixels are enriched *off* the object, pooled over the probes.

    Each probe ``i`` with ``k_i = |O_i|`` object pixels and ``o_i = P - k_i`` outside pixels puts
    ``s_i · k_i`` of its top-``k_i`` pixels outside (``s_i`` its :func:`outside_share`); a map that
    knows nothing puts ``k_i · o_i / P`` there on average, and at most ``min(k_i, o_i)`` fit::

        enrichment = Σ_i (s_i · k_i − k_i · o_i / P) / Σ_i (min(k_i, o_i) − k_i · o_i / P)

    0 is chance, 1 is every top pixel outside, negative is evidence concentrated on the object
    (a map that ranks the object first scores ``-Σ o_i k_i / Σ k_i²`` for objects under half the
    image: about -4 for objects on a fifth of it). It is
    :func:`~lightning_sas.scores.metrics.roi_enrichment`'s pooling with the object's top-``|O|``
    pixels counted from the outside; :func:`object_enrichment` is the bounded reading of the same
    ranks from the object's side.

    Args:
        maps: Attribution maps ``[N, H, W]``.
        object_masks: Object masks of the same shape (see :func:`outside_share`).
        min_pixels: Probes whose object or outside has fewer pixels are left out (a share over a
            few pixels swings from 0 to 1); flat and non-finite maps are left out too.
        margin: Pixels by which the object is grown first.

    Returns:
        The enrichment as a float; NaN when no probe is scoreable.

    Raises:
        ValueError: As :func:`outside_share`, or if ``min_pixels`` is not an integer >= 1.

    Example:
        >>> maps = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> lesion = torch.zeros(4, 16, 16, dtype=torch.bool)
        >>> lesion[:, 4:12, 4:12] = True
        >>> maps[:, 0:4, 0:16] += 2.0  # a hotspot along the top edge, off the lesion
        >>> round(outside_enrichment(maps, lesion), 3)
        1.0
    """
    require_int("min_pixels", min_pixels, minimum=1)
    inside = _object_region("outside_enrichment", maps, object_masks, margin)
    share = outside_share(maps, inside)
    used = _scored(maps, inside, min_pixels)
    total = float(inside[0].numel())
    k = inside.flatten(1).sum(dim=1).to(torch.float64)
    outside = total - k
    chance_hits = k * outside / total
    excess = torch.where(used, share.to(torch.float64).nan_to_num(0.0) * k - chance_hits, 0.0).sum()
    attainable = torch.where(used, torch.minimum(k, outside) - chance_hits, 0.0).sum()
    return float(excess / attainable) if float(attainable) > 0 else float("nan")


def object_enrichment(maps: Tensor, object_masks: Tensor, min_pixels: int = 9, *, margin: int = 0) -> float:
    """How far the maps' top-``|O|`` pixels are enriched on the object: 1 all on it, 0 chance.

    :func:`~lightning_sas.scores.metrics.roi_enrichment` with the (dilated) object as the ROI, over
    the probes :func:`outside_enrichment` scores. A model that follows the object scores near 1;
    one that looks elsewhere drops towards 0 (or below, if it avoids the object).

    Example:
        >>> maps = torch.zeros(2, 8, 8)
        >>> lesion = torch.zeros(2, 8, 8, dtype=torch.bool)
        >>> lesion[:, 2:6, 2:6] = True
        >>> maps[:, 2:6, 2:6] = 1.0
        >>> object_enrichment(maps, lesion)
        1.0
    """
    require_int("min_pixels", min_pixels, minimum=1)
    inside = _object_region("object_enrichment", maps, object_masks, margin)
    used = _scored(maps, inside, min_pixels)
    share = torch.where(used, roi_share(maps.nan_to_num(0.0), inside), float("nan"))
    return float(roi_enrichment(share, inside.flatten(1).sum(dim=1), inside[0].numel()))


def outside_mass(maps: Tensor, object_masks: Tensor, *, margin: int = 0) -> Tensor:
    """``[N]`` share of each map's positive mass outside the (dilated) object, for reference.

    :func:`~lightning_sas.scores.metrics.roi_mass` with the outside as the ROI: scale dependent, so
    only comparable between maps of one method. NaN where there is no outside or no mass.
    """
    inside = _object_region("outside_mass", maps, object_masks, margin)
    return roi_mass(maps, ~inside)
