"""Mean deletion and insertion curves: the faithfulness plot's data, as ``summary.json`` stores it.

Each method's curves (:class:`~lightning_sas.scores.faithfulness.FaithfulnessCurves`, one row per
probe) are averaged point by point over the probes with finite curves. A probe whose map is not
finite has all-NaN curves, so every point averages the same probes, and the trapezoidal area
under the mean curve equals the mean of the per-probe AUCs (the area is linear in the curve):
the legend's AUC and ``summary.json``'s ``deletion_auc`` agree.

Torch only (no matplotlib): :mod:`~lightning_sas.report.summary` imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from lightning_sas.scores.faithfulness import FaithfulnessCurves

__all__ = ["CURVE_DIGITS", "CURVE_KEYS", "mean_curve", "mean_curves"]

#: Decimals kept per point: a probability to 1e-6 is finer than any plot, and keeps summary.json small.
CURVE_DIGITS = 6
#: Per curve, the key of its mean in a method's ``summary.json`` record.
CURVE_KEYS = {"deletion": "deletion_curve", "insertion": "insertion_curve"}


def mean_curve(curves: Tensor) -> list[float | None] | None:
    """The point-by-point mean of ``[B, S + 1]`` curves over the probes with finite values.

    Args:
        curves: One curve per row (NaN rows: probes whose map was not finite).

    Returns:
        ``S + 1`` floats rounded to :data:`CURVE_DIGITS` decimals (``None`` for a point no probe
        has), or ``None`` when no probe has a finite point.

    Example:
        >>> import torch
        >>> mean_curve(torch.tensor([[1.0, 0.5, 0.0], [float("nan")] * 3, [1.0, 0.25, 0.0]]))
        [1.0, 0.375, 0.0]
    """
    means = curves.detach().float().cpu().nanmean(dim=0).tolist()
    if not any(math.isfinite(value) for value in means):
        return None
    return [round(value, CURVE_DIGITS) if math.isfinite(value) else None for value in means]


def mean_curves(faithfulness: Mapping[str, FaithfulnessCurves]) -> dict[str, dict[str, list[float | None] | None]]:
    """Per method, its mean curves under ``summary.json``'s keys (:data:`CURVE_KEYS`).

    Args:
        faithfulness: Method name -> its curves (``AuditResult.faithfulness``).

    Returns:
        ``{method: {"deletion_curve": [...], "insertion_curve": [...]}}``; point ``k`` of
        ``S + 1`` is at fraction ``k / S`` of the pixels removed (deletion) or put back (insertion).

    Example:
        >>> import torch
        >>> curves = FaithfulnessCurves(deletion=torch.tensor([[1.0, 0.0]]), insertion=torch.tensor([[0.0, 1.0]]))
        >>> mean_curves({"sas": curves})
        {'sas': {'deletion_curve': [1.0, 0.0], 'insertion_curve': [0.0, 1.0]}}
    """
    return {
        name: {key: mean_curve(getattr(curves, kind)) for kind, key in CURVE_KEYS.items()}
        for name, curves in faithfulness.items()
    }
