"""The schedule of SaS: the thresholds that cut an importance map into masks, and what one iteration forwards.

Pure tensor functions, vectorised on the device and free of host syncs: the thresholds of the
``K - 1`` interior masks (bisection cold, Newton steps warm), the total variation of a mask,
the flat layout of the items an iteration forwards with their loss weights, the schedule
steps drawn for each iteration, and the learning rate of a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

# Fixed, so the loop never asks the host whether the bisection converged: the bracket is the
# map's value range, and 2**-24 of it is below float32 resolution.
BISECTION_STEPS = 24
NEWTON_STEPS = 2


@dataclass(frozen=True)
class ScheduleItems:
    """Flat layout of the items one iteration forwards: image × interior step × {insertion, deletion}."""

    image: Tensor  # [N] image index of each item
    slot: Tensor  # [N] position among the steps forwarded this iteration (0 .. S-1)
    is_deletion: Tensor  # [N] bool
    weight: Tensor  # [N] loss weight: -1 (insertion) / +1 (deletion), scale-free per image


def total_variation(mask: Tensor, reduce: Literal["mean", "sum"] = "mean") -> Tensor:
    """Anisotropic total variation of ``[B, 1, h, w]``, one value per image: a per-pixel mean
    (the scale-free objective) or the plain sum over pixels (the paper's)."""
    vertical = (mask[..., 1:, :] - mask[..., :-1, :]).abs().flatten(1)
    horizontal = (mask[..., :, 1:] - mask[..., :, :-1]).abs().flatten(1)
    if reduce == "sum":
        return vertical.sum(dim=1) + horizontal.sum(dim=1)
    return vertical.mean(dim=1) + horizontal.mean(dim=1)


def schedule_thresholds(importance: Tensor, fractions: Tensor, previous: Tensor | None = None) -> Tensor:
    """Thresholds ``t[b, k]`` with ``mean_p sigmoid(importance[b, p] - t[b, k]) = fractions[k]``.

    Vectorised on the device with a fixed number of steps (no host sync, no convergence test).
    Cold: bisection on the bracket ``[min(e) - logit(a), max(e) - logit(a)]``, which always
    holds the solution. Warm (``previous`` from the last optimisation step, when the map has
    moved by about one learning rate): Newton steps from ``previous``, kept inside the
    bracket, which reach float32 precision at a tenth of the bisection's passes over the map.

    Args:
        importance: ``[B, P]`` importance values per pixel.
        fractions: ``[K]`` target ON-areas strictly inside (0, 1).
        previous: ``[B, K]`` thresholds of a nearby map, or ``None``.

    Returns:
        ``[B, K]`` thresholds.
    """
    logit_fractions = torch.logit(fractions)[None, :]
    low = importance.amin(dim=1, keepdim=True) - logit_fractions
    high = importance.amax(dim=1, keepdim=True) - logit_fractions
    if previous is not None:
        thresholds = torch.minimum(torch.maximum(previous, low), high)
        for _ in range(NEWTON_STEPS):
            on = torch.sigmoid(importance[:, None, :] - thresholds[..., None])
            slope = (on * (1 - on)).mean(dim=-1).clamp_min(torch.finfo(on.dtype).tiny)
            step = (on.mean(dim=-1) - fractions[None, :]) / slope
            thresholds = torch.minimum(torch.maximum(thresholds + step, low), high)
        return thresholds
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        area = torch.sigmoid(importance[:, None, :] - middle[..., None]).mean(dim=-1)
        threshold_too_low = area > fractions[None, :]
        low = torch.where(threshold_too_low, middle, low)
        high = torch.where(threshold_too_low, high, middle)
    return (low + high) / 2


def schedule_items(
    batch: int, slots: int, score_range: Tensor, objective: Literal["scale_free", "paper"], num_masks: int
) -> ScheduleItems:
    """The items of ``batch`` images × ``slots`` forwarded steps × {insertion, deletion} and their loss weights.

    Args:
        batch: Number of images.
        slots: Interior schedule steps forwarded per iteration.
        score_range: ``[B]`` each image's ``|score(x) - score(blur(x))|`` (floored), the scale-free unit.
        objective: ``"paper"`` (raw scores summed) or ``"scale_free"`` (each image in its own units, averaged).
        num_masks: ``K``, the schedule's number of masks.
    """
    device = score_range.device
    per_image = 2 * slots
    item = torch.arange(batch * per_image, device=device)
    image = item // per_image
    within = item % per_image
    is_deletion = within >= slots
    sign = torch.where(is_deletion, 1.0, -1.0)
    if objective == "paper":
        # Raw scores summed over the K - 1 interior steps (the endpoints carry no gradient);
        # a subset's terms are scaled up so the sum stays an unbiased estimate.
        return ScheduleItems(
            image=image, slot=within % slots, is_deletion=is_deletion, weight=sign * (num_masks - 1) / slots
        )
    # Mean over the forwarded steps (not a sum), so the balance with TV depends neither on K
    # nor on the subset: a uniform subset's mean is an unbiased estimate of the full mean.
    weight = sign / (score_range[image] * slots)
    return ScheduleItems(image=image, slot=within % slots, is_deletion=is_deletion, weight=weight)


def schedule_steps(iterations: int, interior: int, subset: int | None, seed: int, device: torch.device) -> Tensor:
    """``[iterations, S]`` schedule steps forwarded at each iteration, drawn before the loop.

    All ``interior`` steps when ``subset`` is None or above ``interior``; otherwise ``subset``
    of them per iteration, drawn without replacement from a local CPU generator seeded with ``seed``.
    """
    if subset is None or subset > interior:
        return torch.arange(interior, device=device).expand(iterations, -1)
    # A local CPU generator: the same draws on every device and for every batch layout.
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand((iterations, interior), generator=generator)
    return keys.argsort(dim=1)[:, :subset].to(device)


def learning_rate(lr: float, lr_schedule: Literal["constant", "cosine"], step: int, iterations: int) -> float:
    """The step size of Adam step ``step`` (1-based) of ``iterations``: ``lr``, or half a cosine down from it.

    A Python float of the step index: no device read.

    Example:
        >>> learning_rate(0.01, "cosine", 1, 10), learning_rate(0.01, "constant", 5, 10)
        (0.01, 0.01)
    """
    if lr_schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / iterations))
    return lr


def total_variation_dominance(score_range: Tensor, mask_side: int, tv_weight: float, num_masks: int) -> str | None:
    """A warning when total variation dominates the paper's loss for most images, else None.

    The paper's loss balances raw scores against summed total variation. Over the schedule
    the score terms can gain about ``(K − 1) × |score(x) − score(blur(x))|``; a mask that orders
    anything pays total variation of the order ``tv_weight × side`` per unit of height. When
    the gain is the smaller, the cheapest mask is a flat one and the map carries little
    evidence (logits too small for the paper's balance). One host read.
    """
    least = tv_weight * mask_side / (num_masks - 1)
    weak = int((score_range < least).sum())
    # An image whose score the blur hardly moves is common (nothing in it matters to the
    # model); most of the images being so points at the logit scale, which is worth a warning.
    if 2 * weak <= score_range.numel():
        return None
    return (
        f"SaS(objective='paper'): for {weak} of {score_range.numel()} image(s) the target score changes by "
        f"less than tv_weight x side / (num_masks - 1) = {least:.3g} "
        "between the image and its blur, so total variation dominates the paper's loss and the map carries "
        "little evidence; SaS(objective='scale_free') does not depend on the logit scale."
    )
