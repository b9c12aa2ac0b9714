"""The optimisation loop of SaS: Adam on the mask, with the schedule's images forwarded in chunks.

Everything here runs on the device and never waits for the host: the importance map, its
thresholds, the insertion and deletion composites of the steps forwarded this iteration, the
gradient of their scores on the masks, total variation and the Adam step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_sas.methods.chunking import input_memory_format
from lightning_sas.methods.sas_mask import adam_update, importance_map
from lightning_sas.methods.sas_schedule import ScheduleItems, learning_rate, schedule_thresholds, total_variation
from lightning_sas.runtime.progress import advance

#: ``scores_of(model, composites [n, C, H, W], targets [n]) -> scores [n]`` (float32).
CompositeScores = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LoopSettings:
    """What the loop takes from a :class:`~lightning_sas.methods.sas.SaS` for images of one size."""

    num_masks: int  # K: the interior masks have ON-areas k / K, k = 1 .. K - 1
    smoothing: int  # Gaussian smoothing kernel of the mask
    temperature: float  # SoftPool temperature
    tv_weight: float  # weight of the total-variation term
    tv_reduce: Literal["mean", "sum"]  # per-pixel mean (scale-free) or sum (the paper's)
    lr: float  # Adam learning rate
    lr_schedule: Literal["constant", "cosine"]


def optimise_mask(
    model: nn.Module,
    scores_of: CompositeScores,
    settings: LoopSettings,
    baseline: Tensor,
    difference: Tensor,
    targets: Tensor,
    schedule: ScheduleItems,
    steps: Tensor,
    chunk: int,
    mask: Tensor,
    iterations: int,
    nonfinite: Tensor,
) -> Tensor:
    """``iterations`` Adam steps on ``mask`` ``[B, 1, h, w]``; returns the final mask.

    Args:
        model: The forward module.
        scores_of: Scores the composites (see :data:`CompositeScores`).
        settings: The method's settings for these images.
        baseline: ``[B, C, H, W]`` what the masks insert into / delete towards.
        difference: ``[B, C, H, W]`` images minus baseline.
        targets: ``[B]`` target classes.
        schedule: The items forwarded each iteration.
        steps: ``[iterations, S]`` the schedule steps forwarded at each iteration.
        chunk: Most images per forward.
        mask: The starting mask parameter.
        iterations: Adam steps.
        nonfinite: ``[B]`` increased in place for every non-finite score of an image.
    """
    _, _, height, width = baseline.shape
    fractions = torch.arange(1, settings.num_masks, device=baseline.device, dtype=torch.float32) / settings.num_masks
    exp_avg = torch.zeros_like(mask)
    exp_avg_sq = torch.zeros_like(mask)
    thresholds = None
    for step in range(1, iterations + 1):
        mask.requires_grad_(True)
        importance = importance_map(mask, settings.smoothing, (height, width), settings.temperature)
        thresholds = schedule_thresholds(importance.detach().flatten(1), fractions, thresholds)
        schedule_masks = torch.sigmoid(importance - thresholds[..., None, None])  # [B, K-1, H, W]
        mask_grad = schedule_gradient(
            model,
            scores_of,
            schedule_masks.detach(),
            baseline,
            difference,
            targets,
            schedule,
            steps[step - 1],
            chunk,
            nonfinite,
        )
        tv = total_variation(mask, settings.tv_reduce).sum()
        surrogate = (schedule_masks * mask_grad).sum() + settings.tv_weight * tv
        (grad,) = torch.autograd.grad(surrogate, mask)
        lr = learning_rate(settings.lr, settings.lr_schedule, step, iterations)
        mask = adam_update(mask, grad, exp_avg, exp_avg_sq, step, lr)
        advance(schedule.image.shape[0])  # for a progress bar; reads nothing from the device
    return mask


def schedule_gradient(
    model: nn.Module,
    scores_of: CompositeScores,
    schedule_masks: Tensor,
    baseline: Tensor,
    difference: Tensor,
    targets: Tensor,
    schedule: ScheduleItems,
    steps: Tensor,
    chunk: int,
    nonfinite: Tensor,
) -> Tensor:
    """d(loss)/d(masks) for all items, forwarded in chunks of ``chunk`` images.

    Item ``n`` is the composite ``baseline + kept × difference`` of image ``schedule.image[n]``
    (``kept``: its step's mask, or one minus it for a deletion), scored by ``scores_of`` and
    weighted by ``schedule.weight[n]``. Non-finite scores are counted per image into
    ``nonfinite`` ``[B]`` (in place); ``steps`` ``[S]`` maps each item's slot to its schedule
    step this iteration.
    """
    masks = schedule_masks.requires_grad_(True)
    total = schedule.image.shape[0]
    memory_format = input_memory_format(model, difference)  # difference = images - baseline: their format
    gradient = None
    for start in range(0, total, chunk):
        items = slice(start, min(start + chunk, total))
        image, step = schedule.image[items], steps[schedule.slot[items]]
        kept = masks[image, step]
        kept = torch.where(schedule.is_deletion[items, None, None], 1 - kept, kept)
        composites = (baseline[image] + kept[:, None] * difference[image]).to(
            dtype=baseline.dtype, memory_format=memory_format
        )
        scores = scores_of(model, composites, targets[image])
        nonfinite.index_add_(0, image, (~torch.isfinite(scores.detach())).float())
        (chunk_grad,) = torch.autograd.grad((schedule.weight[items] * scores).sum(), masks)
        gradient = chunk_grad if gradient is None else gradient.add_(chunk_grad)
    return gradient
