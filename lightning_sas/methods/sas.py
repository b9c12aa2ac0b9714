"""Saliency-as-Schedule (SaS): attribution as an ordering of pixels, optimised over a whole schedule of masks.

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

Batched for real: all images × the iteration's schedule steps × {insertion, deletion} go through
the model in chunks of at most ``max_batch`` images per forward, gradients accumulated into the
masks; the bisection runs vectorised on the device; nothing in the loop waits for the host. The
endpoint masks (all OFF, all ON) carry no gradient and are never forwarded.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod, check_logits, minmax_normalize
from lightning_sas.methods.baselines import REFERENCE_BLUR_KERNEL, blur_baseline, scaled_kernel_size
from lightning_sas.methods.chunking import auto_chunk, input_memory_format, retry_out_of_memory
from lightning_sas.methods.sas_arguments import PAPER_CONFIGURATION, check_sas_arguments
from lightning_sas.methods.sas_mask import importance_map, initial_mask
from lightning_sas.methods.sas_optimisation import LoopSettings, optimise_mask
from lightning_sas.methods.sas_schedule import schedule_items, schedule_steps, total_variation_dominance
from lightning_sas.validation import require_int

# Reference kernel sizes at 224 px (docs/design.md); scaled to the image side unless given.
REFERENCE_SMOOTHING_KERNEL = 17


class SaS(AttributionMethod):
    """Saliency-as-Schedule ("Saliency As A Schedule: Intuitive Image Attribution", ICIP 2024).

    A mask parameter ``m`` per image is turned into an importance map
    ``e = SoftPool(GaussianSmooth(m))``; thresholds cut ``e`` into ``K + 1`` masks whose ON-area
    grows from 0 to 1. Adam on ``m`` makes every insertion image (mask × image + (1 - mask) ×
    blur) score high and every deletion image score low, for the whole schedule at once. The
    result is ``e`` after the last step, min-max normalised: an ordering of pixels by importance.

    Batching, the two objectives, the cost and the kernel sizes: see the module docstring.

    Args:
        iterations: Adam steps on the mask.
        num_masks: ``K``: the schedule has area fractions ``k / K`` for ``k = 0 .. K``.
        lr: Adam learning rate.
        temperature: SoftPool temperature: ``e = avgpool3x3(exp(temperature · smoothed m))``.
        tv_weight: Weight of the per-pixel total-variation term on ``m``.
        smoothing_kernel: Gaussian smoothing kernel (odd) for ``m``; ``None`` scales with size.
        blur_kernel: Gaussian kernel (odd) of the baseline blur; ``None`` scales with size.
        score: ``"logit"`` (default) or ``"prob"`` (softmax probability of the target).
        max_batch: Most images in one model forward; ``None``: chosen from memory (halved and
            restarted on out-of-memory, down to one image per forward).
        mask_scale: Resolution of ``m`` relative to the image, in (0, 1]; 1 = full resolution.
        autocast_dtype: Run the model's forwards under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16``; ``None``: the caller's precision, float16 runs in float32, see
            :func:`~lightning_sas.methods.base.attribution_precision`). Mask arithmetic is float32.
        seed: Seed of the mask's initial noise and of the schedule subsets (local generators:
            global RNG untouched).
        schedule_subset: Interior schedule steps forwarded per iteration (of ``K - 1``), drawn
            afresh each iteration, the same for every image; reweighted by ``(K - 1) / subset``
            (an unbiased estimate of the full schedule's gradient). ``None``: all ``K - 1``.
        lr_schedule: ``"constant"`` or ``"cosine"`` (from ``lr`` to 0 over the call, half a cosine).
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
        check_sas_arguments(
            iterations=iterations,
            num_masks=num_masks,
            lr=lr,
            temperature=temperature,
            tv_weight=tv_weight,
            smoothing_kernel=smoothing_kernel,
            blur_kernel=blur_kernel,
            score=score,
            max_batch=max_batch,
            mask_scale=mask_scale,
            autocast_dtype=autocast_dtype,
            seed=seed,
            schedule_subset=schedule_subset,
            lr_schedule=lr_schedule,
            objective=objective,
        )
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
        """The paper's method: its objective, 100 iterations over the full schedule of ``K = 20``
        masks (``PAPER_CONFIGURATION``); ``overrides``: other constructor arguments.

        Example:
            >>> SaS.paper().passes_per_probe()
            3800
        """
        return cls(**{**PAPER_CONFIGURATION, **overrides})

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
        """The blurred baseline ``b`` SaS inserts into / deletes towards, in the images' precision
        (an input, not part of the model: built without an enclosing autocast)."""
        return blur_baseline(images, self.kernel_sizes(*images.shape[-2:])[1])

    # ------------------------------------------------------------------ the algorithm

    def attribute_from(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        initial_mask: Tensor | None = None,
        iterations: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Warm start: like :meth:`attribute`, from ``initial_mask``, also returning the final mask
        (the model moves little between two audits: fewer iterations than from noise).

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

        def solve(forward_module: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
            return self._solve(forward_module, images, targets, initial_mask, iterations)

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
        # forward calls (see lightning_sas.runtime.distributed).
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
            reference = self._composite_scores_of(logits, targets.repeat(2))
        score_range = insertion_range(reference.view(2, batch))
        if self.objective == "paper":
            self._warn_if_total_variation_dominates(score_range, min(mask.shape[-2:]))

        schedule = schedule_items(batch, self.steps_per_iteration(), score_range, self.objective, self.num_masks)
        # Counts, per image, the scores that were not finite (kept on the device: no sync). A NaN
        # score can have a zero gradient (torch.where, masked_fill), which would leave a finite
        # map that looks like an answer; such an image gets an all-NaN map instead.
        nonfinite = (~torch.isfinite(reference.view(2, batch)).all(dim=0)).float()
        iterations = iterations or self.iterations
        steps = schedule_steps(iterations, interior, self.schedule_subset, self.seed, images.device)
        mask = self._optimise_mask(
            model, baseline, images - baseline, targets, schedule, steps, chunk, mask, iterations, nonfinite
        )
        with torch.no_grad():
            importance = importance_map(mask, self.kernel_sizes(height, width)[0], (height, width), self.temperature)
            maps = minmax_normalize(importance[:, 0])
        return torch.where(nonfinite[:, None, None] > 0, float("nan"), maps), mask

    def _warn_if_total_variation_dominates(self, score_range: Tensor, mask_side: int) -> None:
        """Warn when the paper's balance lets total variation win (see
        :func:`~lightning_sas.methods.sas_schedule.total_variation_dominance`; one host read)."""
        if self._warned_total_variation:
            return
        message = total_variation_dominance(score_range, mask_side, self.tv_weight, self.num_masks)
        if message is not None:
            self._warned_total_variation = True  # once per method object: an audit repeats it every epoch
            warnings.warn(message, UserWarning, stacklevel=4)

    def _optimise_mask(self, model: nn.Module, *loop_inputs: Any) -> Tensor:
        """The optimisation loop (:func:`~lightning_sas.methods.sas_optimisation.optimise_mask`, whose
        arguments after ``settings`` are ``loop_inputs``) with this method's settings: entirely on the
        device, never waiting for the host."""
        settings = LoopSettings(
            num_masks=self.num_masks,
            smoothing=self.kernel_sizes(*loop_inputs[0].shape[-2:])[0],
            temperature=self.temperature,
            tv_weight=self.tv_weight,
            tv_reduce="sum" if self.objective == "paper" else "mean",
            lr=self.lr,
            lr_schedule=self.lr_schedule,
        )
        return optimise_mask(model, self._composite_scores, settings, *loop_inputs)

    def _composite_scores(self, model: nn.Module, composites: Tensor, targets: Tensor) -> Tensor:
        """The target scores ``[n]`` (float32) of insertion / deletion composites, by :attr:`score`."""
        return self._composite_scores_of(self._forward(model, composites), targets)

    def _composite_scores_of(self, logits: Tensor, targets: Tensor) -> Tensor:
        return target_scores(logits, targets, self.score)

    def _initial_mask(self, batch: int, height: int, width: int, device: torch.device) -> Tensor:
        """The mask parameter before the first step (see :func:`~lightning_sas.methods.sas_mask.initial_mask`)."""
        return initial_mask(batch, height, width, self.mask_scale, self.seed, device)

    def _forward(self, model: nn.Module, images: Tensor) -> Tensor:
        if self.autocast_dtype is None:
            return model(images)  # the caller's precision, including an enclosing autocast
        with torch.autocast(device_type=images.device.type, dtype=self.autocast_dtype):
            return model(images)

    def _auto_chunk(self, model: nn.Module, images: Tensor) -> int:
        """Images per forward when ``max_batch`` is None (one-off host syncs, before the loop)."""
        total = images.shape[0] * 2 * self.steps_per_iteration()
        return auto_chunk(model, images[:1], total, with_gradient=True, forward=self._forward)


def target_scores(logits: Tensor, targets: Tensor, score: Literal["logit", "prob"]) -> Tensor:
    """The targets' scores ``[n]`` in float32: their logits, or their softmax probabilities."""
    logits = logits.float()
    if score == "prob":
        logits = logits.softmax(dim=1)
    return logits.gather(1, targets[:, None])[:, 0]


def insertion_range(reference: Tensor) -> Tensor:
    """Each image's score range ``|score(x) − score(blur(x))|`` from ``reference`` ``[2, B]`` (image, blur).

    The scale-free objective measures an image's score terms in units of it. The floor keeps a
    blur-invariant score (range 0) from giving huge loss weights.
    """
    return (reference[0] - reference[1]).abs().clamp_min(1e-6 * reference.abs().amax(dim=0) + 1e-12)
