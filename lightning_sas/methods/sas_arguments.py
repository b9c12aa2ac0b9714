"""The arguments of SaS: their checks, and the paper's configuration."""

from __future__ import annotations

import torch

from lightning_sas.validation import require_int, require_max_batch, require_positive

#: The paper's configuration (:meth:`~lightning_sas.methods.sas.SaS.paper`): its objective, 100
#: iterations over the full schedule of ``K = 20`` masks.
PAPER_CONFIGURATION: dict[str, object] = {
    "iterations": 100,
    "num_masks": 20,
    "lr": 0.01,
    "temperature": 0.3,
    "tv_weight": 0.08,
    "schedule_subset": None,
    "lr_schedule": "constant",
    "objective": "paper",
}


def check_sas_arguments(
    *,
    iterations: int,
    num_masks: int,
    lr: float,
    temperature: float,
    tv_weight: float,
    smoothing_kernel: int | None,
    blur_kernel: int | None,
    score: str,
    max_batch: int | None,
    mask_scale: float,
    autocast_dtype: torch.dtype | None,
    seed: int,
    schedule_subset: int | None,
    lr_schedule: str,
    objective: str,
) -> None:
    """Check the constructor arguments of :class:`~lightning_sas.methods.sas.SaS`.

    Raises:
        ValueError: If an argument is out of range (the message names it and its value).
    """
    require_int("iterations", iterations, minimum=1)
    require_int("num_masks", num_masks, minimum=2)
    require_positive("lr", lr)
    require_positive("temperature", temperature)
    if not isinstance(tv_weight, int | float) or tv_weight < 0:
        raise ValueError(f"`tv_weight` must be a number >= 0, got {tv_weight!r}.")
    for arg_name, kernel in (("smoothing_kernel", smoothing_kernel), ("blur_kernel", blur_kernel)):
        if kernel is not None:
            require_int(arg_name, kernel, minimum=1)
            if kernel % 2 == 0:
                raise ValueError(f"`{arg_name}` must be odd (or None to scale with the image), got {kernel}.")
    if score not in ("logit", "prob"):
        raise ValueError(f"`score` must be 'logit' or 'prob', got {score!r}.")
    require_max_batch(max_batch)
    if not isinstance(mask_scale, int | float) or not 0 < mask_scale <= 1:
        raise ValueError(f"`mask_scale` must be in (0, 1], got {mask_scale!r}.")
    if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
        raise ValueError(f"`autocast_dtype` must be a torch.dtype or None, got {autocast_dtype!r}.")
    if autocast_dtype == torch.float16:
        raise ValueError(
            "`autocast_dtype` must not be torch.float16: without gradient scaling float16's input "
            "gradients underflow or overflow; use torch.bfloat16 or None, got torch.float16."
        )
    require_int("seed", seed, minimum=0)
    if schedule_subset is not None:
        require_int("schedule_subset", schedule_subset, minimum=1)
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"`lr_schedule` must be 'constant' or 'cosine', got {lr_schedule!r}.")
    if objective not in ("scale_free", "paper"):
        raise ValueError(f"`objective` must be 'scale_free' or 'paper', got {objective!r}.")
