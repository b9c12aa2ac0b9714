"""Scores for attribution maps: rank statistics and the shortcut score.

Pure functions on tensors, in the torchmetrics style: they do the math and nothing
else. Every function works on whatever device its inputs live on and never moves data
to the host, so the audit can score a whole probe batch on the training GPU without a
sync. (The one exception is documented at :func:`roi_share`: a non-boolean ``roi`` is
checked to be 0/1, which reads one flag back; pass a bool mask to avoid it.)

The shortcut score (see docs/design.md, "Shortcut score"):

* :func:`roi_share` -- the fraction of the map's ``|R|`` highest-ranked pixels that lie
  in the region of interest ``R`` (relevance rank accuracy). Rank based, so maps with
  different scales (an SaS ordering, a sparse Grad-CAM map) are comparable. Chance
  level is ``|R| / HW``.
* :func:`roi_mass` -- the share of the map's total mass that falls in ``R`` (relevance
  mass accuracy), for reference.
* :func:`roi_enrichment` -- the alert statistic: ``roi_share``'s excess over chance, pooled
  over the probes and normalised to the most that is attainable, so 0 is chance and 1 means
  every top-ranked pixel lies on the ROI, whatever the ROI's size.
* :func:`flat_maps` -- which maps carry no evidence at all (constant: no ordering).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sas.validation import require_tensor, shape_of

__all__ = ["rank_average", "spearman", "roi_share", "roi_mass", "roi_enrichment", "flat_maps"]

#: A map whose value range (on its [0, 1] scale) is at most this is constant: no evidence.
FLAT_MAP_RANGE = 1e-6


def _result_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 inputs keep float64; everything else (half, bfloat16, ints, bool) is
    # scored in float32, which is exact for ranks and counts up to 2**23.
    return torch.float64 if dtype == torch.float64 else torch.float32


def rank_average(values: Tensor) -> Tensor:
    """Rank the entries along the last dimension, giving ties their average rank.

    Ranks are 1-based, like ``scipy.stats.rankdata(values, axis=-1)`` with its default
    ``method="average"``: the smallest entry gets rank 1, and a group of equal entries
    all get the mean of the ranks they occupy. All leading dimensions are treated as a
    batch and computed in one vectorised pass (one sort and two batched binary searches,
    no loop over rows or elements).

    Args:
        values: Tensor of shape ``[..., N]`` with ``N >= 1``, of a real or bool dtype, on
            any device. Entries must not be NaN (NaN has no place in an ordering).

    Returns:
        Tensor of the same shape as ``values`` on the same device, float64 if ``values``
        is float64, else float32 (exact for rows of up to ``2**23`` entries).

    Raises:
        TypeError: If ``values`` is not a tensor or has a complex dtype.
        ValueError: If ``values`` is 0-dimensional or its last dimension is empty.

    Example:
        >>> rank_average(torch.tensor([[10.0, 30.0, 20.0, 30.0]]))
        tensor([[1.0000, 3.5000, 2.0000, 3.5000]])
    """
    require_tensor("rank_average", "values", values)
    if values.is_complex():
        raise TypeError(f"rank_average: `values` must have a real or bool dtype, got {values.dtype}")
    if values.dim() == 0 or values.shape[-1] == 0:
        raise ValueError(
            "rank_average: `values` must have at least one dimension with a non-empty "
            f"last dimension [..., N >= 1], got shape {shape_of(values)}"
        )
    result_dtype = _result_dtype(values.dtype)
    if values.dtype == torch.bool:
        values = values.to(torch.uint8)
    rows = values.reshape(-1, values.shape[-1]).contiguous()
    sorted_rows = torch.sort(rows, dim=-1).values
    # For each entry, its group of equal values occupies sorted positions
    # [first, last); the 1-based ranks there are first+1 .. last, whose mean is
    # (first + last + 1) / 2. Binary search finds both ends without unsorting.
    first = torch.searchsorted(sorted_rows, rows, right=False)
    last = torch.searchsorted(sorted_rows, rows, right=True)
    ranks = (first + last + 1).to(result_dtype) / 2
    return ranks.reshape(values.shape)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between paired rows of two batches.

    Every dimension after the first is flattened, so ``a[i]`` and ``b[i]`` can be whole
    maps. The correlation is the Pearson correlation of the average ranks
    (:func:`rank_average`), which is what ``scipy.stats.spearmanr`` computes.

    Args:
        a: Tensor of shape ``[B, ...]`` (at least 2-D), real dtype, any device.
        b: Tensor of the same shape as ``a``, on the same device.

    Returns:
        Tensor ``[B]`` with one correlation in ``[-1, 1]`` per row, float64 if ``a`` is
        float64, else float32, on the inputs' device. A row in which ``a`` or ``b`` is
        constant has no defined correlation and gives NaN.

    Raises:
        TypeError: If ``a`` or ``b`` is not a tensor.
        ValueError: If ``a`` is not at least 2-D, has no elements per row, or ``b``'s
            shape differs from ``a``'s.

    Example:
        >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
        >>> b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0]])
        >>> spearman(a, b)
        tensor([ 1., -1.])
    """
    require_tensor("spearman", "a", a)
    require_tensor("spearman", "b", b)
    if a.dim() < 2:
        raise ValueError(f"spearman: `a` must have shape [B, ...] with at least 2 dimensions, got {shape_of(a)}")
    if b.shape != a.shape:
        raise ValueError(f"spearman: `b` must have the same shape as `a` {shape_of(a)}, got {shape_of(b)}")
    if a[0].numel() == 0:
        raise ValueError(f"spearman: `a` must have at least one element per row, got shape {shape_of(a)}")
    batch = a.shape[0]
    ranks_a = rank_average(a.reshape(batch, -1))
    ranks_b = rank_average(b.reshape(batch, -1)).to(ranks_a.dtype)
    # Average ranks of n items always sum to n(n+1)/2, so the mean is known exactly.
    mean_rank = (ranks_a.shape[-1] + 1) / 2
    centered_a = ranks_a - mean_rank
    centered_b = ranks_b - mean_rank
    covariance = (centered_a * centered_b).sum(dim=-1)
    spread_a = centered_a.square().sum(dim=-1).sqrt()
    spread_b = centered_b.square().sum(dim=-1).sqrt()
    correlation = covariance / (spread_a * spread_b)
    # A constant row has all ranks equal to the mean, so its spread is exactly 0.
    undefined = (spread_a == 0) | (spread_b == 0)
    correlation = correlation.clamp(-1.0, 1.0)
    return torch.where(undefined, torch.full_like(correlation, float("nan")), correlation)


def _check_maps_and_roi(function: str, maps: Tensor, roi: Tensor) -> Tensor:
    """Validate ``maps`` [B,H,W] float and ``roi`` of the same shape; return roi as bool."""
    require_tensor(function, "maps", maps)
    require_tensor(function, "roi", roi)
    if not maps.is_floating_point():
        raise TypeError(f"{function}: `maps` must have a floating-point dtype, got {maps.dtype}")
    if maps.dim() != 3:
        raise ValueError(f"{function}: `maps` must have shape [B, H, W], got {shape_of(maps)}")
    if roi.shape != maps.shape:
        raise ValueError(f"{function}: `roi` must have the same shape as `maps` {shape_of(maps)}, got {shape_of(roi)}")
    if roi.device != maps.device:
        raise ValueError(f"{function}: `roi` must be on the same device as `maps` ({maps.device}), got {roi.device}")
    if roi.dtype == torch.bool:
        return roi
    if roi.is_complex():
        raise TypeError(f"{function}: `roi` must be bool or 0/1 values, got {roi.dtype}")
    # A soft mask (e.g. 0.3) would otherwise be silently read as "inside"; this check
    # reads one flag back from the device, which a bool mask avoids.
    if bool(((roi != 0) & (roi != 1)).any()):
        raise ValueError(f"{function}: `roi` must be bool or contain only 0 and 1, got {roi.dtype} with other values")
    return roi != 0


def roi_share(maps: Tensor, roi: Tensor) -> Tensor:
    """Relevance rank accuracy: how much of the map's top ``|R|`` pixels lie in ``R``.

    For each image, with ``k = |R|`` ROI pixels, the share is the fraction of the map's
    ``k`` highest-ranked pixels that lie in ``R``. Ties at the cut are counted
    fractionally, so the order of tied pixels never decides: with ``v`` the k-th largest
    value, pixels strictly above ``v`` count fully, and the ``k - #{a > v}`` slots left
    are filled by the pixels equal to ``v`` in proportion::

        share = (#{p in R: a_p > v}
                 + (k - #{a_p > v}) * #{p in R: a_p == v} / #{a_p == v}) / k

    This is the expected share under a uniformly random tie order. A constant map
    scores exactly the chance level ``|R| / (H * W)``; a map that is highest exactly on
    ``R`` scores 1. Only the order of the values matters, not their scale.

    The whole batch is scored at once (one sort and a gather, although ``k`` differs
    per image); nothing leaves the device when ``roi`` is bool.

    Args:
        maps: Attribution maps ``[B, H, W]``, floating point, any device. Larger means
            more important; values must not be NaN.
        roi: Region-of-interest masks of the same shape on the same device: bool, or
            a numeric tensor holding only 0 and 1 (checked, which costs one
            device-to-host sync).

    Returns:
        Tensor ``[B]`` of shares in ``[0, 1]`` (float64 if ``maps`` is float64, else
        float32) on ``maps``' device. Images whose ROI is empty give NaN.

    Raises:
        TypeError: If an argument is not a tensor, ``maps`` is not floating point, or
            ``roi`` is complex.
        ValueError: If ``maps`` is not 3-D, ``roi``'s shape or device differs from
            ``maps``', or a numeric ``roi`` holds values other than 0 and 1.

    Example:
        >>> maps = torch.tensor([[[0.9, 0.8], [0.1, 0.0]]])
        >>> roi = torch.tensor([[[True, False], [True, False]]])
        >>> roi_share(maps, roi)  # top-2 pixels are 0.9 (in R) and 0.8 (not in R)
        tensor([0.5000])
    """
    roi_mask = _check_maps_and_roi("roi_share", maps, roi)
    batch = maps.shape[0]
    return _tie_counted_share(maps.reshape(batch, -1), roi_mask.reshape(batch, -1), _result_dtype(maps.dtype))


def _tie_counted_share(values: Tensor, inside: Tensor, result_dtype: torch.dtype) -> Tensor:
    """The share of :func:`roi_share` for flat maps ``[B, P]`` and bool ROI masks ``[B, P]``."""
    roi_size = inside.sum(dim=-1)  # k per image, int64
    descending = torch.sort(values, dim=-1, descending=True).values
    # v = the k-th largest value; an empty ROI gathers index 0 and is masked to NaN.
    cut_index = (roi_size - 1).clamp(min=0).unsqueeze(-1)
    cut_value = descending.gather(-1, cut_index)

    above = values > cut_value
    at_cut = values == cut_value
    count_above = above.sum(dim=-1)
    count_at_cut = at_cut.sum(dim=-1)
    roi_above = (above & inside).sum(dim=-1)
    roi_at_cut = (at_cut & inside).sum(dim=-1)

    k = roi_size.to(result_dtype)
    # Written as a sum of ratios so that a constant map gives exactly |R| / HW:
    # there roi_above is 0 and the fill fraction is exactly 1.
    fill_fraction = (roi_size - count_above).to(result_dtype) / k
    tie_share = roi_at_cut.to(result_dtype) / count_at_cut.clamp(min=1).to(result_dtype)
    share = roi_above.to(result_dtype) / k + fill_fraction * tie_share
    return torch.where(roi_size > 0, share, torch.full_like(share, float("nan")))


def roi_mass(maps: Tensor, roi: Tensor) -> Tensor:
    """Relevance mass accuracy: the share of the map's total mass that lies in ``R``.

    ``sum_{p in R} a_p / sum_p a_p`` per image, with negative map values clamped to 0
    first. Unlike :func:`roi_share` this depends on the map's scale and sparsity; it is
    logged for reference.

    Args:
        maps: Attribution maps ``[B, H, W]``, floating point, any device.
        roi: Region-of-interest masks of the same shape on the same device: bool, or
            a numeric tensor holding only 0 and 1 (checked, one device-to-host sync).

    Returns:
        Tensor ``[B]`` of shares in ``[0, 1]`` (float64 if ``maps`` is float64, else
        float32) on ``maps``' device. Images with an empty ROI or an all-zero map
        (after clamping) give NaN.

    Raises:
        TypeError: If an argument is not a tensor, ``maps`` is not floating point, or
            ``roi`` is complex.
        ValueError: If ``maps`` is not 3-D, ``roi``'s shape or device differs from
            ``maps``', or a numeric ``roi`` holds values other than 0 and 1.

    Example:
        >>> maps = torch.tensor([[[3.0, 1.0], [0.0, -5.0]]])
        >>> roi = torch.tensor([[[True, False], [False, True]]])
        >>> roi_mass(maps, roi)
        tensor([0.7500])
    """
    roi_mask = _check_maps_and_roi("roi_mass", maps, roi)
    result_dtype = _result_dtype(maps.dtype)
    batch = maps.shape[0]
    mass = maps.reshape(batch, -1).to(result_dtype).clamp(min=0)
    inside = roi_mask.reshape(batch, -1)
    total = mass.sum(dim=-1)
    in_roi = torch.where(inside, mass, torch.zeros_like(mass)).sum(dim=-1)
    defined = inside.any(dim=-1) & (total > 0)
    share = in_roi / torch.where(defined, total, torch.ones_like(total))
    return torch.where(defined, share, torch.full_like(share, float("nan")))


def flat_maps(maps: Tensor) -> Tensor:
    """``[B]`` bool: the maps ``[B, H, W]`` that are constant (all zero, say), so rank nothing.

    A constant map scores exactly at chance under :func:`roi_share` and has no mass for
    :func:`roi_mass`; it is "no evidence", not "evidence of no shortcut", and the audit
    leaves such maps out of its scores. Non-finite maps are not flat (they are reported
    as non-finite).

    Example:
        >>> flat_maps(torch.stack([torch.zeros(4, 4), torch.eye(4)])).tolist()
        [True, False]
    """
    rows = maps.flatten(1).float()
    finite = torch.isfinite(rows).all(dim=1)
    return finite & ((rows.amax(dim=1) - rows.amin(dim=1)) <= FLAT_MAP_RANGE)


def roi_enrichment(share: Tensor, roi_pixels: Tensor, image_pixels: int | Tensor) -> Tensor:
    """How far the maps' top-ranked pixels are enriched on the ROI, pooled over probes.

    Each probe ``i`` with ``n_i = |R_i|`` ROI pixels out of ``P`` puts ``share_i · n_i`` of its
    top-``n_i`` pixels on the ROI; a map that knows nothing puts ``n_i² / P`` there on average,
    a map that points at the ROI exactly, ``n_i``. Pooled over the probes::

        enrichment = Σ_i (share_i · n_i − n_i² / P) / Σ_i (n_i − n_i² / P)

    0 is chance, 1 is every top-ranked pixel on the ROI, negative is avoidance. Unlike the
    lift ``share / chance``, which cannot exceed ``P / n`` (an ROI over an eighth of the image
    can never reach a lift of 8), it can reach 1 at any ROI size; and pooling weights each
    probe by its ROI's pixels, so one probe with a tiny ROI (whose share swings from 0 to 1
    on a few pixels) cannot decide the mean alone.

    Args:
        share: ``[N]`` :func:`roi_share` of each probe (NaN entries are left out).
        roi_pixels: ``[N]`` ROI pixel count of each probe (0 entries are left out).
        image_pixels: Pixels per image ``P`` (a number, or ``[N]``).

    Returns:
        A 0-d float tensor; NaN when no probe is left or every ROI covers the whole image.

    Example:
        >>> share = torch.tensor([1.0, 0.25])
        >>> float(roi_enrichment(share, torch.tensor([8, 4]), 16))  # (8-4 + 1-1) / (8-4 + 4-1)
        0.5714285969734192
    """
    share = share.float()
    pixels = roi_pixels.to(device=share.device, dtype=torch.float32)
    total = torch.as_tensor(image_pixels, device=share.device, dtype=torch.float32).expand_as(pixels)
    used = torch.isfinite(share) & (pixels > 0)
    chance_hits = pixels * pixels / total
    excess = torch.where(used, share.nan_to_num(0.0) * pixels - chance_hits, 0.0).sum()
    attainable = torch.where(used, pixels - chance_hits, 0.0).sum()
    return torch.where(attainable > 0, excess / attainable, torch.full_like(attainable, float("nan")))
