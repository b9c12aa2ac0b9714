"""A deliberately naive, per-image Saliency-as-Schedule: the yardstick for the batched ``SaS``.

This is EXACTLY the algorithm of :class:`lightning_sas.methods.SaS` (same initial mask noise
from the same seed, same importance map ``e = avgpool3x3(exp(T · GaussianSmooth(m)))``, same
objective — the paper's by default (raw scores summed over the ``K - 1`` interior schedule
steps plus the summed total variation), or the scale-free one (each image's score terms divided
by its own range ``|score(x) - score(blur(x))|``, per-pixel-mean total variation) — same Adam
hyper-parameters, same kernel-size rule), written the
way a straightforward implementation does it (docs/design.md, "Batching and memory"):

* one image at a time, with its own mask and its own ``torch.optim.Adam``;
* the ``K - 1`` interior schedule steps one after another, the insertion and the deletion image
  as two separate forwards at batch size 1;
* each threshold found by bisection in a Python loop that asks the host (``.item()``) whether
  it has converged at every step;
* the baseline blur computed on the CPU with OpenCV (``cv2.GaussianBlur``, ``sigma=0`` so
  OpenCV's own rule picks sigma) and copied back to the device;
* the gradient by ``loss.backward()`` into the mask (a leaf tensor), with the model in eval
  mode and its parameters frozen for the duration of the call (flags restored afterwards).

It is meant for timing comparisons and as an independent cross-check of the batched version
(the two agree in rank order, not bit for bit: Adam turns float noise in flat regions into
full-size steps, and the batched version solves the thresholds with warm-started Newton steps
instead of a bisection to a tolerance). Nothing here is imported from ``lightning_sas``.

Known, intended difference at small images: OpenCV's ``sigma=0`` rule uses fixed binomial
kernels for sizes 3, 5, 7 (and 9 in OpenCV 5), which the batched version's Gaussian with
OpenCV's sigma formula only approximates. The blur kernel is 9 or smaller below about 44 px.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The reference configuration (docs/design.md, "Kernel sizes") at 224 px; scaled to the image side.
REFERENCE_SIDE = 224
REFERENCE_SMOOTHING_KERNEL = 17
REFERENCE_BLUR_KERNEL = 51
INIT_NOISE_STD = 0.01
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def scaled_kernel(reference_size: int, side: int) -> int:
    """The kernel-size rule: nearest odd integer to ``reference_size × side / 224``, at least 3."""
    scaled = reference_size * side / REFERENCE_SIDE
    return max(3, 2 * round((scaled - 1) / 2) + 1)


def gaussian_kernel_2d(kernel_size: int, sigma: float, device: torch.device) -> Tensor:
    """Normalised ``[1, 1, k, k]`` Gaussian kernel (the full 2-D kernel, not separated)."""
    offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    return torch.outer(weights, weights).to(device=device, dtype=torch.float32)[None, None]


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the block; training and ``requires_grad`` flags restored."""
    training_flags = [(module, module.training) for module in model.modules()]
    grad_flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in grad_flags:
            param.requires_grad_(False)
        with torch.enable_grad():
            yield model
    finally:
        for module, was_training in training_flags:
            module.training = was_training
        for param, required_grad in grad_flags:
            param.requires_grad_(required_grad)


class NaiveSaS:
    """Saliency-as-Schedule, one image, one schedule step, one forward at a time.

    Args:
        iterations: Adam steps on each image's mask.
        num_masks: ``K``: area fractions ``k / K``; the interior steps ``k = 1 .. K-1`` are optimised.
        lr: Adam learning rate.
        temperature: SoftPool temperature: ``e = avgpool3x3(exp(temperature · smoothed m))``.
        tv_weight: Weight of the per-pixel-mean total variation of ``m``.
        smoothing_kernel: Gaussian smoothing kernel for ``m`` (sigma = kernel / 6); ``None``
            scales 17 (at 224 px) to the mask side.
        blur_kernel: Kernel of the OpenCV baseline blur; ``None`` scales 51 (at 224 px) to the image side.
        score: ``"logit"`` or ``"prob"`` (softmax probability of the target).
        mask_scale: Resolution of ``m`` relative to the image, in (0, 1].
        autocast_dtype: Run the model's forwards under ``torch.autocast`` with this dtype, or ``None``.
        seed: Seed of the initial mask noise (the same noise for every image).
        bisection_tolerance: The bisection stops when the ON-area is within this of its target.
        max_bisection_steps: Hard cap on bisection steps per threshold.
        objective: ``"paper"`` (the source's loss, SaS's default: raw scores summed over the
            schedule plus ``tv_weight`` times the total variation summed over pixels) or
            ``"scale_free"`` (each image's scores divided by its own range, per-pixel-mean TV).

    Attributes:
        host_syncs: ``.item()`` calls made by the last :meth:`attribute` call.
        forwards: Model forwards made by the last :meth:`attribute` call.
    """

    def __init__(
        self,
        iterations: int = 100,
        num_masks: int = 20,
        lr: float = 0.01,
        temperature: float = 0.3,
        tv_weight: float = 0.08,
        smoothing_kernel: int | None = None,
        blur_kernel: int | None = None,
        score: Literal["logit", "prob"] = "logit",
        mask_scale: float = 1.0,
        autocast_dtype: torch.dtype | None = None,
        seed: int = 0,
        bisection_tolerance: float = 1e-6,
        max_bisection_steps: int = 64,
        objective: Literal["scale_free", "paper"] = "paper",
    ) -> None:
        self.iterations = iterations
        self.num_masks = num_masks
        self.lr = lr
        self.temperature = temperature
        self.tv_weight = tv_weight
        self.smoothing_kernel = smoothing_kernel
        self.blur_kernel = blur_kernel
        self.score = score
        self.mask_scale = mask_scale
        self.autocast_dtype = autocast_dtype
        self.seed = seed
        self.bisection_tolerance = bisection_tolerance
        self.max_bisection_steps = max_bisection_steps
        self.objective = objective
        self.host_syncs = 0
        self.forwards = 0

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Explain ``model``'s score for ``targets`` on ``images``, one image after another.

        Args:
            model: Classifier returning logits ``[B, num_classes]``.
            images: ``[B, C, H, W]`` float images, normalised as the model expects.
            targets: ``[B]`` class indices.

        Returns:
            ``[B, H, W]`` float32 maps in [0, 1] on the images' device.
        """
        self.host_syncs = 0
        self.forwards = 0
        with frozen_eval(model):
            maps = [self._attribute_one(model, images[i : i + 1], int(targets[i])) for i in range(images.shape[0])]
        return torch.cat(maps)

    # ------------------------------------------------------------------ one image

    def _attribute_one(self, model: nn.Module, image: Tensor, target: int) -> Tensor:
        _, _, height, width = image.shape
        mask_height = max(1, round(height * self.mask_scale))
        mask_width = max(1, round(width * self.mask_scale))
        smoothing = self.smoothing_kernel or scaled_kernel(REFERENCE_SMOOTHING_KERNEL, min(mask_height, mask_width))
        blur = self.blur_kernel or scaled_kernel(REFERENCE_BLUR_KERNEL, min(height, width))
        smoothing_weights = gaussian_kernel_2d(smoothing, smoothing / 6, image.device)

        baseline = self._opencv_blur(image, blur)
        with torch.no_grad():
            image_score = self._score(model, image, target).item()
            baseline_score = self._score(model, baseline, target).item()
        self.host_syncs += 2
        score_range = max(abs(image_score - baseline_score), 1e-6 * abs(image_score) + 1.1754943508222875e-38)

        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((1, 1, mask_height, mask_width), generator=generator) * INIT_NOISE_STD
        mask = noise.to(image.device).requires_grad_(True)
        optimizer = torch.optim.Adam([mask], lr=self.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        interior = self.num_masks - 1
        for _ in range(self.iterations):
            optimizer.zero_grad()
            importance = self._importance(mask, smoothing_weights, (height, width))
            loss = self.tv_weight * self._total_variation(mask)
            for k in range(1, self.num_masks):
                threshold = self._threshold(importance.detach(), k / self.num_masks)
                schedule_mask = torch.sigmoid(importance - threshold)
                insertion = schedule_mask * image + (1 - schedule_mask) * baseline
                deletion = (1 - schedule_mask) * image + schedule_mask * baseline
                insertion_score = self._score(model, insertion, target)
                deletion_score = self._score(model, deletion, target)
                if self.objective == "paper":
                    loss = loss + deletion_score - insertion_score
                else:
                    loss = loss + (deletion_score - insertion_score) / (score_range * interior)
            loss.backward()
            optimizer.step()

        with torch.no_grad():
            importance = self._importance(mask, smoothing_weights, (height, width))[0]
        low, high = importance.min(), importance.max()
        return ((importance - low) / (high - low)) if high > low else torch.zeros_like(importance)

    def _opencv_blur(self, image: Tensor, kernel_size: int) -> Tensor:
        """Blur on the CPU with OpenCV, channel by channel, and copy back to the image's device."""
        pixels = image[0].detach().float().cpu().numpy()
        blurred = np.stack([cv2.GaussianBlur(channel, (kernel_size, kernel_size), 0) for channel in pixels])
        return torch.from_numpy(blurred)[None].to(device=image.device, dtype=image.dtype)

    def _importance(self, mask: Tensor, smoothing_weights: Tensor, size: tuple[int, int]) -> Tensor:
        """``e = avgpool3x3(exp(T · GaussianSmooth(m)))``, ``[1, 1, H, W]``."""
        pad = smoothing_weights.shape[-1] // 2
        smoothed = F.conv2d(F.pad(mask, (pad, pad, pad, pad), mode="reflect"), smoothing_weights)
        importance = F.avg_pool2d(
            torch.exp(self.temperature * smoothed), 3, stride=1, padding=1, count_include_pad=False
        )
        if importance.shape[-2:] != size:
            importance = F.interpolate(importance, size=size, mode="bilinear", align_corners=False)
        return importance

    def _threshold(self, importance: Tensor, fraction: float) -> float:
        """``t`` with ``mean(sigmoid(e - t)) = fraction``: bisection, one host sync per step."""
        logit = math.log(fraction / (1 - fraction))
        low = importance.min().item() - logit
        high = importance.max().item() - logit
        self.host_syncs += 2
        middle = (low + high) / 2
        for _ in range(self.max_bisection_steps):
            middle = (low + high) / 2
            area = torch.sigmoid(importance - middle).mean().item()
            self.host_syncs += 1
            if abs(area - fraction) <= self.bisection_tolerance:
                break
            if area > fraction:
                low = middle
            else:
                high = middle
        return middle

    def _total_variation(self, mask: Tensor) -> Tensor:
        vertical = (mask[..., 1:, :] - mask[..., :-1, :]).abs()
        horizontal = (mask[..., :, 1:] - mask[..., :, :-1]).abs()
        if self.objective == "paper":
            return vertical.sum() + horizontal.sum()
        return vertical.mean() + horizontal.mean()

    def _score(self, model: nn.Module, image: Tensor, target: int) -> Tensor:
        self.forwards += 1
        with torch.autocast(
            device_type=image.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        ):
            logits = model(image)
        logits = logits.float()
        if self.score == "prob":
            logits = logits.softmax(dim=1)
        return logits[0, target]
