"""Saliency-as-Schedule (SaS): attribution as an ordering of pixels, optimised over a whole schedule of masks."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sas.arguments import require_int, require_max_batch, require_positive
from lightning_sas.chunks import retry_out_of_memory
from lightning_sas.methods.base import AttributionMethod, check_logits, minmax_normalize
from lightning_sas.methods.batching import auto_chunk, input_memory_format
from lightning_sas.methods.gaussian import gaussian_blur, opencv_sigma, scaled_kernel_size
from lightning_sas.progress import advance

# Reference kernel sizes at 224 px (docs/design.md); scaled to the image side unless given.
REFERENCE_SMOOTHING_KERNEL = 17
REFERENCE_BLUR_KERNEL = 51
# Fixed, so the loop never asks the host whether the bisection converged: the bracket is the
# map's value range, and 2**-24 of it is below float32 resolution.
BISECTION_STEPS = 24
NEWTON_STEPS = 2
INIT_NOISE_STD = 0.01
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class _Schedule:
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


class SaS(AttributionMethod):
    """Saliency-as-Schedule ("Saliency As A Schedule: Intuitive Image Attribution", ICIP 2024).

    A mask parameter ``m`` per image is turned into an importance map
    ``e = SoftPool(GaussianSmooth(m))``; thresholds cut ``e`` into ``K + 1`` masks whose ON-area
    grows from 0 to 1. Adam on ``m`` makes every insertion image (mask × image + (1 - mask) ×
    blur) score high and every deletion image score low, for the whole schedule at once. The
    result is ``e`` after the last step, min-max normalised: an ordering of pixels by importance.

    Batched for real: all images × the iteration's schedule steps × {insertion, deletion} go through the model
    in chunks of at most ``max_batch`` images per forward, gradients accumulated into the
    masks; the bisection runs vectorised on the device; nothing in the loop waits for the
    host. The endpoint masks (all OFF, all ON) carry no gradient and are never forwarded.

    Two objectives (``objective=``):

    * ``"paper"`` (default): the source's loss exactly, ``Σ_k [score(deletion_k) -
      score(insertion_k)] + tv_weight · Σ_pixels TV(m)``, raw scores summed over the schedule
      and the total variation summed over pixels. It separated the alert study's biased runs
      from its clean ones far better than the scale-free objective (README, "Alert study"),
      which is why it is the default. Its balance between the two terms depends on the logit
      scale and the image size: when an image's score changes by less than
      ``tv_weight × side / (K − 1)`` between the image and its blur, total variation wins and
      the map carries little evidence (a model with logits 100× smaller than usual), and
      SaS warns (once per method object).
    * ``"scale_free"``: each image's score terms are divided by its own dynamic range
      ``|score(x) - score(blur(x))|`` and averaged over the schedule, and the total variation
      is a per-pixel mean, so one set of defaults works from 32 to 224 px and for any logit
      scale (ground truth is found at logits ×0.01 and ×100 alike).

    Cost: ``iterations × 2 × schedule_subset`` model passes per probe, 950 at the defaults: 95
    iterations, each forwarding a random 5 of the 19 interior masks (an unbiased estimate of the
    full schedule's gradient). That is a quarter of the paper's 3,800 (100 iterations over all
    19, :meth:`paper`); with the scale-free objective the quarter schedule was measured to give
    the full schedule's maps (Spearman 0.999, as high ground-truth shares, faithfulness AUCs
    within 0.002, ``docs/sas_cost.md``); the alert study measured the paper objective on it.

    Kernel sizes: ``None`` scales the reference sizes (17 for smoothing, 51 for the blur, at
    224 px) to the image: the nearest odd integer to ``reference × side / 224``, at least 3
    (the smoothing kernel uses the mask's side when ``mask_scale < 1``). The smoothing sigma
    is ``kernel / 6``; the blur sigma follows OpenCV's rule for ``sigma=0``.

    Args:
        iterations: Adam steps on the mask.
        num_masks: ``K``: the schedule has area fractions ``k / K`` for ``k = 0 .. K``.
        lr: Adam learning rate.
        temperature: SoftPool temperature: ``e = avgpool3x3(exp(temperature · smoothed m))``.
        tv_weight: Weight of the per-pixel total-variation term on ``m``.
        smoothing_kernel: Gaussian smoothing kernel (odd) for ``m``; ``None`` scales with size.
        blur_kernel: Gaussian kernel (odd) of the baseline blur; ``None`` scales with size.
        score: ``"logit"`` (default) or ``"prob"`` (softmax probability of the target).
        max_batch: Most images in one model forward. ``None`` picks a chunk from free GPU
            memory (CUDA) or a fixed pixel budget (CPU). On out-of-memory the chunk is halved
            and the attribution restarted, down to one image per forward.
        mask_scale: Resolution of ``m`` relative to the image, in (0, 1]; 1 = full resolution.
        autocast_dtype: Run the model's forwards under ``torch.autocast`` with this dtype
            (e.g. ``torch.bfloat16`` on a GPU; not ``torch.float16``, whose gradients underflow);
            ``None`` leaves precision to the caller (a float16 autocast runs in float32, see
            :func:`~lightning_sas.methods.base.attribution_precision`). The mask, importance map
            and baseline are float32 whatever the autocast.
        seed: Seed of the mask's initial noise and of the schedule subsets (local generators:
            global RNG untouched).
        schedule_subset: Interior schedule steps forwarded per iteration (of ``K - 1``), drawn
            afresh each iteration without replacement, the same for every image and for
            insertion and deletion; their terms are reweighted by ``(K - 1) / subset``, so each
            iteration's gradient is an unbiased estimate of the full schedule's. ``None`` (or a
            value above ``K - 1``) forwards all ``K - 1``. Costs ``iterations × 2 × subset``
            passes instead of ``iterations × 2 (K - 1)``.
        lr_schedule: ``"constant"`` or ``"cosine"`` (the step size decays from ``lr`` to 0 over
            the call's iterations, half a cosine).
        objective: ``"scale_free"`` or ``"paper"`` (see above).

    Raises:
        ValueError: If an argument is out of range (the message names it and its value).

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> maps = SaS(iterations=2).attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
        >>> maps.shape, float(maps.min()) >= 0.0, float(maps.max()) <= 1.0
        (torch.Size([2, 32, 32]), True, True)
    """

    name = "sas"

    def __init__(
        self,
        iterations: int = 95,
        num_masks: int = 20,
        lr: float = 0.01,
        temperature: float = 0.3,
        tv_weight: float = 0.08,
        smoothing_kernel: int | None = None,
        blur_kernel: int | None = None,
        score: Literal["logit", "prob"] = "logit",
        max_batch: int | None = None,
        mask_scale: float = 1.0,
        autocast_dtype: torch.dtype | None = None,
        seed: int = 0,
        schedule_subset: int | None = 5,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        objective: Literal["scale_free", "paper"] = "paper",
    ) -> None:
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
        self.iterations = iterations
        self.num_masks = num_masks
        self.lr = float(lr)
        self.temperature = float(temperature)
        self.tv_weight = float(tv_weight)
        self.smoothing_kernel = smoothing_kernel
        self.blur_kernel = blur_kernel
        self.score = score
        self.max_batch = max_batch
        self.mask_scale = float(mask_scale)
        self.autocast_dtype = autocast_dtype
        self.seed = seed
        self.schedule_subset = schedule_subset
        self.lr_schedule = lr_schedule
        self.objective = objective
        self._warned_total_variation = False

    # ------------------------------------------------------------------ public helpers

    @classmethod
    def paper(cls, **overrides: object) -> SaS:
        """The paper's method: its objective and its configuration, 100 iterations over the full
        schedule of ``K = 20`` masks.

        Args:
            **overrides: Other constructor arguments (e.g. ``max_batch``, ``autocast_dtype``).

        Returns:
            ``SaS(objective="paper", iterations=100, num_masks=20, lr=0.01,
            schedule_subset=None, lr_schedule="constant", ...)``.

        Example:
            >>> SaS.paper().passes_per_probe()
            3800
        """
        config: dict[str, object] = {
            "iterations": 100,
            "num_masks": 20,
            "lr": 0.01,
            "temperature": 0.3,
            "tv_weight": 0.08,
            "schedule_subset": None,
            "lr_schedule": "constant",
            "objective": "paper",
        }
        return cls(**{**config, **overrides})

    def steps_per_iteration(self) -> int:
        """Interior schedule steps forwarded per iteration: ``min(schedule_subset, K − 1)``."""
        return min(self.schedule_subset or self.num_masks - 1, self.num_masks - 1)

    def passes_per_probe(self) -> int:
        """``iterations × 2 × steps_per_iteration()`` forward + backward passes (the endpoints are never forwarded).

        Example:
            >>> SaS().passes_per_probe(), SaS.paper().passes_per_probe()
            (950, 3800)
        """
        return self.iterations * 2 * self.steps_per_iteration()

    def kernel_sizes(self, height: int, width: int) -> tuple[int, int]:
        """``(smoothing_kernel, blur_kernel)`` used for images of this size."""
        mask_side = max(1, round(min(height, width) * self.mask_scale))
        smoothing = self.smoothing_kernel or scaled_kernel_size(REFERENCE_SMOOTHING_KERNEL, mask_side)
        blur = self.blur_kernel or scaled_kernel_size(REFERENCE_BLUR_KERNEL, min(height, width))
        return smoothing, blur

    def baseline(self, images: Tensor) -> Tensor:
        """The blurred baseline ``b`` SaS inserts into / deletes towards, in the images' precision.

        An enclosing autocast would run the blur's convolution in bfloat16; the baseline is an
        input, not part of the model, so it is built without autocast.
        """
        blur = self.kernel_sizes(*images.shape[-2:])[1]
        with torch.autocast(images.device.type, enabled=False):
            return gaussian_blur(images, blur, opencv_sigma(blur))

    # ------------------------------------------------------------------ the algorithm

    def attribute_from(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        initial_mask: Tensor | None = None,
        iterations: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Warm start: like :meth:`attribute`, from ``initial_mask``, also returning the final mask.

        Seeding an audit with the previous audit's mask of the same probe (the model has moved
        a little since) lets it converge in fewer iterations than a cold start from noise.

        Args:
            model: The classifier.
            images: ``[B, C, H, W]`` float tensor.
            targets: ``[B]`` integer tensor.
            initial_mask: ``[B, 1, h, w]`` mask parameter from an earlier call (its second
                return value), or ``None`` to start from the seeded noise.
            iterations: Adam steps for this call; ``None`` uses ``self.iterations``.

        Returns:
            ``(maps, mask)``: the maps ``[B, H, W]`` and the mask parameter to warm-start from next.

        Raises:
            ValueError: If ``initial_mask`` does not have this call's mask shape or
                ``iterations`` is not a positive integer.
        """
        if iterations is not None:
            require_int("iterations", iterations, minimum=1)

        def solve(forward_module: nn.Module, checked_images: Tensor, checked_targets: Tensor) -> tuple[Tensor, Tensor]:
            return self._solve(forward_module, checked_images, checked_targets, initial_mask, iterations)

        maps, mask = self._guarded(model, images, targets, solve)
        return maps.detach().float(), mask.detach()

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return self._solve(model, images, targets, None, None)[0]

    def _solve(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        initial_mask: Tensor | None,
        iterations: int | None,
    ) -> tuple[Tensor, Tensor]:
        # Under DDP all ranks agree on the chunk and on every retry, so they make the same
        # forward calls (see lightning_sas.distributed).
        return retry_out_of_memory(
            lambda chunk: self._optimise(model, images, targets, chunk, initial_mask, iterations),
            self.max_batch or self._auto_chunk(model, images),
            images.device,
            "SaS",
        )

    def _optimise(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        chunk: int,
        initial_mask: Tensor | None,
        iterations: int | None,
    ) -> tuple[Tensor, Tensor]:
        batch, _, height, width = images.shape
        mask = self._initial_mask(batch, height, width, images.device)
        if initial_mask is not None:
            if initial_mask.shape != mask.shape:
                raise ValueError(
                    f"`initial_mask` must have shape {list(mask.shape)} for these images, "
                    f"got {list(initial_mask.shape)}."
                )
            mask = initial_mask.detach().to(device=mask.device, dtype=mask.dtype).clone()
        interior = self.num_masks - 1
        baseline = self.baseline(images)

        with torch.no_grad():
            both = torch.cat([images, baseline]).contiguous(memory_format=input_memory_format(model, images))
            logits = torch.cat([self._forward(model, part) for part in both.split(chunk)])
            check_logits(logits[:batch], targets)
            reference = self._target_scores(logits, targets.repeat(2))
        # Each image's score terms in units of its own insertion range: scale-free objective.
        # The floor keeps a blur-invariant score (range 0) from giving huge loss weights.
        score_range = (reference[:batch] - reference[batch:]).abs()
        score_range = score_range.clamp_min(1e-6 * reference.view(2, batch).abs().amax(dim=0) + 1e-12)
        if self.objective == "paper":
            self._warn_if_total_variation_dominates(score_range, min(mask.shape[-2:]))

        schedule = self._schedule(batch, self.steps_per_iteration(), score_range)
        # Counts, per image, the scores that were not finite (kept on the device: no sync). A NaN
        # score can have a zero gradient (torch.where, masked_fill), which would leave a finite
        # map that looks like an answer; such an image gets an all-NaN map instead.
        nonfinite = (~torch.isfinite(reference.view(2, batch)).all(dim=0)).float()
        iterations = iterations or self.iterations
        steps = self._schedule_steps(iterations, interior, images.device)
        mask = self._optimise_mask(
            model, baseline, images - baseline, targets, schedule, steps, chunk, mask, iterations, nonfinite
        )
        with torch.no_grad():
            importance = self._importance(mask, self.kernel_sizes(height, width)[0], (height, width))
            maps = minmax_normalize(importance[:, 0])
        return torch.where(nonfinite[:, None, None] > 0, float("nan"), maps), mask

    def _warn_if_total_variation_dominates(self, score_range: Tensor, mask_side: int) -> None:
        """The paper's loss balances raw scores against summed total variation. Over the schedule
        the score terms can gain about ``(K − 1) × |score(x) − score(blur(x))|``; a mask that orders
        anything pays total variation of the order ``tv_weight × side`` per unit of height. When
        the gain is the smaller, the cheapest mask is a flat one and the map carries little
        evidence (logits too small for the paper's balance): say so (one host read, before the loop)."""
        if self._warned_total_variation:
            return
        least = self.tv_weight * mask_side / (self.num_masks - 1)
        weak = int((score_range < least).sum())
        # An image whose score the blur hardly moves is common (nothing in it matters to the
        # model); most of the images being so points at the logit scale, which is worth a warning.
        if 2 * weak > score_range.numel():
            self._warned_total_variation = True  # once per method object: an audit repeats it every epoch
            warnings.warn(
                f"SaS(objective='paper'): for {weak} of {score_range.numel()} image(s) the target score changes by "
                f"less than tv_weight x side / (num_masks - 1) = {least:.3g} "
                "between the image and its blur, so total variation dominates the paper's loss and the map carries "
                "little evidence; SaS(objective='scale_free') does not depend on the logit scale.",
                UserWarning,
                stacklevel=4,
            )

    def _optimise_mask(
        self,
        model: nn.Module,
        baseline: Tensor,
        difference: Tensor,
        targets: Tensor,
        schedule: _Schedule,
        steps: Tensor,
        chunk: int,
        mask: Tensor,
        iterations: int,
        nonfinite: Tensor,
    ) -> Tensor:
        """The optimisation loop from ``mask``: runs entirely on the device, never waiting for the host.

        ``steps`` ``[iterations, S]`` are the schedule steps forwarded at each iteration;
        ``nonfinite`` ``[B]`` is increased in place for every non-finite score of an image.
        """
        _, _, height, width = baseline.shape
        fractions = torch.arange(1, self.num_masks, device=baseline.device, dtype=torch.float32) / self.num_masks
        smoothing, _ = self.kernel_sizes(height, width)
        exp_avg = torch.zeros_like(mask)
        exp_avg_sq = torch.zeros_like(mask)
        beta1, beta2 = ADAM_BETAS
        thresholds = None
        for step in range(1, iterations + 1):
            lr = self.lr
            if self.lr_schedule == "cosine":  # a Python float of the step index: no device read
                lr = self.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / iterations))
            mask.requires_grad_(True)
            importance = self._importance(mask, smoothing, (height, width))
            thresholds = schedule_thresholds(importance.detach().flatten(1), fractions, thresholds)
            schedule_masks = torch.sigmoid(importance - thresholds[..., None, None])  # [B, K-1, H, W]
            mask_grad = self._schedule_gradient(
                model,
                schedule_masks.detach(),
                baseline,
                difference,
                targets,
                schedule,
                steps[step - 1],
                chunk,
                nonfinite,
            )
            tv_reduce = "sum" if self.objective == "paper" else "mean"
            surrogate = (schedule_masks * mask_grad).sum() + self.tv_weight * total_variation(mask, tv_reduce).sum()
            (grad,) = torch.autograd.grad(surrogate, mask)
            # Adam by hand: elementwise, so each image's update is independent of the batch,
            # and no optimizer state object or host-side step counter is involved.
            with torch.no_grad():
                mask = mask.detach()
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denominator = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(ADAM_EPS)
                mask.addcdiv_(exp_avg, denominator, value=-lr / (1 - beta1**step))
            advance(schedule.image.shape[0])  # for a progress bar; reads nothing from the device
        return mask

    def _schedule_gradient(
        self,
        model: nn.Module,
        schedule_masks: Tensor,
        baseline: Tensor,
        difference: Tensor,
        targets: Tensor,
        schedule: _Schedule,
        steps: Tensor,
        chunk: int,
        nonfinite: Tensor,
    ) -> Tensor:
        """d(loss)/d(masks) for all items, forwarded in chunks of ``chunk`` images (non-finite
        scores counted per image into ``nonfinite``); ``steps`` ``[S]`` maps each item's slot to
        its schedule step this iteration."""
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
            scores = self._target_scores(self._forward(model, composites), targets[image])
            nonfinite.index_add_(0, image, (~torch.isfinite(scores.detach())).float())
            (chunk_grad,) = torch.autograd.grad((schedule.weight[items] * scores).sum(), masks)
            gradient = chunk_grad if gradient is None else gradient.add_(chunk_grad)
        return gradient

    def _schedule(self, batch: int, slots: int, score_range: Tensor) -> _Schedule:
        device = score_range.device
        per_image = 2 * slots
        item = torch.arange(batch * per_image, device=device)
        image = item // per_image
        within = item % per_image
        is_deletion = within >= slots
        sign = torch.where(is_deletion, 1.0, -1.0)
        if self.objective == "paper":
            # Raw scores summed over the K - 1 interior steps (the endpoints carry no gradient);
            # a subset's terms are scaled up so the sum stays an unbiased estimate.
            return _Schedule(
                image=image, slot=within % slots, is_deletion=is_deletion, weight=sign * (self.num_masks - 1) / slots
            )
        # Mean over the forwarded steps (not a sum), so the balance with TV depends neither on K
        # nor on the subset: a uniform subset's mean is an unbiased estimate of the full mean.
        weight = sign / (score_range[image] * slots)
        return _Schedule(image=image, slot=within % slots, is_deletion=is_deletion, weight=weight)

    def _schedule_steps(self, iterations: int, interior: int, device: torch.device) -> Tensor:
        """``[iterations, S]`` schedule steps forwarded at each iteration, drawn before the loop."""
        if self.schedule_subset is None or self.schedule_subset > interior:
            return torch.arange(interior, device=device).expand(iterations, -1)
        # A local CPU generator: the same draws on every device and for every batch layout.
        generator = torch.Generator().manual_seed(self.seed)
        keys = torch.rand((iterations, interior), generator=generator)
        return keys.argsort(dim=1)[:, : self.schedule_subset].to(device)

    def _initial_mask(self, batch: int, height: int, width: int, device: torch.device) -> Tensor:
        mask_height = max(1, round(height * self.mask_scale))
        mask_width = max(1, round(width * self.mask_scale))
        # The same noise for every image (a local CPU generator), so image i's result does not
        # depend on its position in the batch, nor on the device.
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((1, 1, mask_height, mask_width), generator=generator) * INIT_NOISE_STD
        return noise.to(device).expand(batch, -1, -1, -1).contiguous()

    def _importance(self, mask: Tensor, smoothing: int, size: tuple[int, int]) -> Tensor:
        """``e = SoftPool(GaussianSmooth(m))`` at the image size, ``[B, 1, H, W]``, float32 always.

        Never under autocast: ``e = exp(temperature · m)`` sits near 1 with a spread of about
        ``temperature ×`` the mask's (0.003 when total variation keeps the mask flat); bfloat16's
        steps near 1 are 0.004-0.008, so a bfloat16 smoothing convolution made ``e`` constant
        and the normalised map all zeros.
        """
        with torch.autocast(mask.device.type, enabled=False):
            smoothed = gaussian_blur(mask, smoothing, smoothing / 6)
            importance = F.avg_pool2d(
                torch.exp(self.temperature * smoothed), 3, stride=1, padding=1, count_include_pad=False
            )
            if importance.shape[-2:] != size:
                importance = F.interpolate(importance, size=size, mode="bilinear", align_corners=False)
        return importance

    def _forward(self, model: nn.Module, images: Tensor) -> Tensor:
        if self.autocast_dtype is None:
            return model(images)  # the caller's precision, including an enclosing autocast
        with torch.autocast(device_type=images.device.type, dtype=self.autocast_dtype):
            return model(images)

    def _target_scores(self, logits: Tensor, targets: Tensor) -> Tensor:
        logits = logits.float()
        if self.score == "prob":
            logits = logits.softmax(dim=1)
        return logits.gather(1, targets[:, None])[:, 0]

    def _auto_chunk(self, model: nn.Module, images: Tensor) -> int:
        """Images per forward when ``max_batch`` is None (one-off host syncs, before the loop)."""
        total = images.shape[0] * 2 * self.steps_per_iteration()
        return auto_chunk(model, images[:1], total, with_gradient=True, forward=self._forward)
