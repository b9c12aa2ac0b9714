"""Gradient-based attribution, batched: Saliency, SmoothGrad, Integrated Gradients, GradientSHAP.

All four explain a probe with input gradients of its target logit, at the image itself
(Saliency) or at many variants of it (noisy copies, points on a path, points between the
image and background references). Every variant of every probe goes through the model in
chunks of at most ``max_batch`` images (:func:`~lightning_sas.methods.batching.target_scores_in_chunks`,
which also retries with half the chunk on out-of-memory). Random draws come from a local CPU
generator seeded by ``seed`` and are shared by all probes (scaled per probe where needed),
so a probe's result does not depend on the other probes in the batch, nor on the device.

Each method has a public ``raw_attribution`` (the per-channel values before the channel
reduction and normalisation, as the peer libraries return them) and an ``attribute`` that
turns them into a ``[B, H, W]`` map in [0, 1] by its ``sign`` policy. Integrated Gradients
also reports its completeness gap.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from lightning_sas.arguments import require_int, require_max_batch, require_non_negative
from lightning_sas.methods.base import AttributionMethod, minmax_normalize
from lightning_sas.methods.batching import (
    GradientSum,
    auto_chunk,
    image_scores,
    local_generator,
    target_scores_in_chunks,
)
from lightning_sas.methods.gaussian import gaussian_blur, opencv_sigma, scaled_kernel_size
from lightning_sas.methods.sas import REFERENCE_BLUR_KERNEL

#: Integration rules of :class:`IntegratedGradients`, named as Captum's ``method=`` argument.
IG_RULES = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre")

#: ``variant_inputs(image_index [n], draw_index [n]) -> inputs [n, C, H, W]``.
VariantInputs = Callable[[Tensor, Tensor], Tensor]
#: ``(image_index [n], draw_index [n], gradients [n, C, H, W]) -> [n, C, H, W]``: what a variant adds to its image.
VariantContribution = Callable[[Tensor, Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------- shared


def _variant_gradients(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    draws: int,
    variant_inputs: VariantInputs,
    contribution: VariantContribution,
    max_batch: int | None,
    what: str,
) -> tuple[Tensor, Tensor]:
    """Target scores ``[B, draws]`` and, per image, the sum of its variants' contributions ``[B, C, H, W]``.

    Variant ``(i, s)`` is ``variant_inputs(i, s)``; all ``B × draws`` variants are forwarded in
    chunks, image-major, each built only when its chunk runs, and each chunk's gradients are
    turned into ``contribution(i, s, gradient)`` and summed into image ``i`` at once, so memory
    holds one chunk of gradients, never all ``B × draws`` of them.
    """
    batch = images.shape[0]
    total = batch * draws

    def split(start: int, stop: int) -> tuple[Tensor, Tensor]:
        index = torch.arange(start, stop, device=images.device)
        return index // draws, index % draws

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        image_index, draw_index = split(start, stop)
        # Contiguous (NCHW) like the peers' inputs: channels-last gave no measurable speed-up on
        # the CPU here, and other convolution kernels can flip a ReLU / max-pool near a tie,
        # which moves a gradient by far more than float rounding.
        return variant_inputs(image_index, draw_index), targets[image_index]

    def contribute(start: int, stop: int, gradients: Tensor) -> tuple[Tensor, Tensor]:
        image_index, draw_index = split(start, stop)
        return image_index, contribution(image_index, draw_index, gradients)

    chunk = max_batch or auto_chunk(model, images[:1], total, with_gradient=True)
    scores, sums = target_scores_in_chunks(
        model,
        build,
        total,
        chunk=chunk,
        image_targets=targets,
        what=what,
        device=images.device,
        gradient_sum=GradientSum(batch, contribute),
    )
    return scores.view(batch, draws), cast(Tensor, sums)  # with gradient_sum, the sums are always there


def _finite_images(scores: Tensor, raw: Tensor) -> Tensor:
    """``[B]`` bool: every score of the image's variants and every raw value is finite.

    A NaN score can have a zero gradient (``torch.where``, ``masked_fill``), so the scores
    are checked as well as the gradients.
    """
    return torch.isfinite(scores).flatten(1).all(dim=1) & torch.isfinite(raw).flatten(1).all(dim=1)


def _nan_where_not_finite(values: Tensor, finite: Tensor) -> Tensor:
    shape = (-1,) + (1,) * (values.dim() - 1)
    return torch.where(finite.view(shape), values, float("nan"))


def _to_map(per_channel: Tensor, finite: Tensor, reduce: Literal["max_abs", "sum_positive"]) -> Tensor:
    """``[B, C, H, W]`` → ``[B, H, W]`` in [0, 1] (all NaN for the images that are not finite)."""
    if reduce == "max_abs":
        maps = per_channel.abs().amax(dim=1)
    else:
        maps = per_channel.sum(dim=1).clamp_min(0)
    return _nan_where_not_finite(minmax_normalize(maps), finite)


def require_sign(sign: object) -> None:
    """``sign`` is a map policy of a method whose evidence is signed (IG, GradientSHAP)."""
    if sign not in ("positive", "absolute"):
        raise ValueError(f"`sign` must be 'positive' or 'absolute', got {sign!r}.")


def _gaussian_draws(seed: int, draws: int, shape: torch.Size, images: Tensor) -> Tensor:
    """``[draws, C, H, W]`` standard normal noise from a local CPU generator, on the images' device."""
    noise = torch.randn((draws, *shape), generator=local_generator(seed), dtype=torch.float32)
    return noise.to(device=images.device, dtype=images.dtype)


def _repr_with_tensor_shapes(method: AttributionMethod) -> str:
    """``Name(setting=value, ...)`` with tensors shown by shape (a background set would fill a log line)."""

    def describe(value: object) -> str:
        return f"Tensor{list(value.shape)}" if isinstance(value, Tensor) else repr(value)

    settings = ", ".join(f"{key}={describe(value)}" for key, value in vars(method).items() if not key.startswith("_"))
    return f"{type(method).__name__}({settings})"


# ---------------------------------------------------------------------------------- Saliency


class Saliency(AttributionMethod):
    """Saliency (Simonyan et al., 2014): the gradient of the target logit with respect to the input.

    One forward and one backward for all probes. Channel aggregation as in the paper: the map
    is ``max_c |∂ score / ∂ x_c|`` (the largest magnitude over the colour channels), min-max
    normalised per image.

    Sign policy ``"absolute"``: a raw gradient's sign says in which direction a tiny change of
    the pixel would move the score, not whether the pixel is evidence for the class; what
    ranks a pixel is how sensitive the score is to it, whatever the direction (the paper and
    Captum's ``Saliency(abs=True)`` take the magnitude too).

    Args:
        max_batch: Most images in one model forward; ``None`` picks a chunk from free GPU
            memory (CUDA) or a fixed pixel budget (CPU). Halved on out-of-memory.

    Raises:
        ValueError: If ``max_batch`` is not a positive integer or None.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> Saliency().attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape
        torch.Size([2, 32, 32])
    """

    name = "saliency"
    sign = "absolute"

    def __init__(self, max_batch: int | None = None) -> None:
        require_max_batch(max_batch)
        self.max_batch = max_batch

    def passes_per_probe(self) -> int:
        """One forward and one backward per probe."""
        return 1

    def raw_attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """The signed input gradient ``[B, C, H, W]`` (float32), all NaN for an image whose score is not finite."""
        return self._guarded(model, images, targets, self._raw_and_finite)[0].detach()

    def _raw_and_finite(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        scores, gradients = _variant_gradients(
            model,
            images,
            targets,
            1,
            lambda image, draw: images[image],
            lambda image, draw, gradient: gradient,
            self.max_batch,
            "Saliency",
        )
        finite = _finite_images(scores, gradients)
        return _nan_where_not_finite(gradients, finite), finite

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        gradients, finite = self._raw_and_finite(model, images, targets)
        return _to_map(gradients, finite, "max_abs")


# ---------------------------------------------------------------------------------- SmoothGrad


class SmoothGrad(AttributionMethod):
    """SmoothGrad (Smilkov et al., 2017): saliency averaged over noisy copies of the image.

    For each probe ``x``, ``samples`` copies ``x + σ ε_s`` with ``ε_s ~ N(0, I)`` and
    ``σ = noise_level × (max(x) − min(x))`` (the paper's noise level, relative to the image's
    value range, so one setting works whatever the normalisation). The noise ``ε_s`` is drawn
    once from a local generator seeded with ``seed`` and shared by all probes (scaled by each
    probe's ``σ``), so a probe's map does not depend on the batch it is in.

    Aggregation: the mean over samples of ``|gradient|`` per channel, then the maximum over
    channels, min-max normalised. This is what Captum's ``NoiseTunnel(Saliency(model))`` with
    ``nt_type="smoothgrad"`` computes (``Saliency`` takes ``abs`` of each sample's gradient
    before the noise tunnel averages), followed by :class:`Saliency`'s channel reduction;
    the paper's formula averages the signed gradients, which lets opposite-signed samples
    cancel. Matching Captum keeps the comparison with the library people use exact in
    distribution.

    Sign policy ``"absolute"``: the average of gradient magnitudes, for the same reason as
    :class:`Saliency` (a gradient's sign is a direction, not evidence).

    Args:
        samples: Noisy copies per probe (each one forward and one backward).
        noise_level: Noise standard deviation as a fraction of each image's value range.
        max_batch: Most images in one model forward; ``None`` picks one (see :class:`Saliency`).
        seed: Seed of the local noise generator (the global RNG streams are not touched).

    Raises:
        ValueError: If an argument is out of range (the message names it and its value).

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> SmoothGrad(samples=2).attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape
        torch.Size([2, 32, 32])
    """

    name = "smoothgrad"
    sign = "absolute"

    def __init__(
        self, samples: int = 25, noise_level: float = 0.15, max_batch: int | None = None, seed: int = 0
    ) -> None:
        require_int("samples", samples, minimum=1)
        require_non_negative("noise_level", noise_level)
        require_max_batch(max_batch)
        require_int("seed", seed, minimum=0)
        self.samples = samples
        self.noise_level = float(noise_level)
        self.max_batch = max_batch
        self.seed = seed

    def passes_per_probe(self) -> int:
        """``samples`` forward + backward passes per probe.

        Example:
            >>> SmoothGrad(samples=25).passes_per_probe()
            25
        """
        return self.samples

    def noise_std(self, images: Tensor) -> Tensor:
        """``[B]``: the noise standard deviation of each image, ``noise_level × (max − min)``."""
        flat = images.detach().flatten(1)
        return self.noise_level * (flat.amax(dim=1) - flat.amin(dim=1))

    def raw_attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Mean over the noisy samples of ``|gradient|``, ``[B, C, H, W]`` float32 (all NaN where not finite)."""
        return self._guarded(model, images, targets, self._raw_and_finite)[0].detach()

    def _raw_and_finite(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        noise = _gaussian_draws(self.seed, self.samples, images.shape[1:], images)
        std = self.noise_std(images)

        def noisy(image: Tensor, draw: Tensor) -> Tensor:
            return images[image] + std[image, None, None, None] * noise[draw]

        scores, mean_magnitude = _variant_gradients(
            model,
            images,
            targets,
            self.samples,
            noisy,
            lambda image, draw, gradient: gradient.abs() / self.samples,
            self.max_batch,
            "SmoothGrad",
        )
        finite = _finite_images(scores, mean_magnitude)
        return _nan_where_not_finite(mean_magnitude, finite), finite

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        mean_magnitude, finite = self._raw_and_finite(model, images, targets)
        return _to_map(mean_magnitude, finite, "max_abs")


# ---------------------------------------------------------------------------------- Integrated Gradients


def integration_rule(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """``(alphas, weights)`` of an integration rule over [0, 1], exactly as Captum builds them.

    Riemann rules: ``steps`` equal weights ``1 / steps`` at the left ends, right ends or
    midpoints of ``steps`` equal intervals; ``"riemann_trapezoid"`` puts its points at
    ``linspace(0, 1, steps)`` and halves the first and last weight, so (as in Captum) its
    weights sum to ``1 − 1 / steps``, not 1. ``"gausslegendre"``: Gauss–Legendre nodes and
    weights mapped from [−1, 1] to [0, 1] (weights sum to 1; exact for polynomials of degree
    up to ``2 · steps − 1``). The points are computed in float32 (Riemann, via
    ``torch.linspace``) or float64 (NumPy's ``leggauss``) as Captum does.

    Example:
        >>> integration_rule("riemann_trapezoid", 3)
        ([0.0, 0.5, 1.0], [0.16666666666666666, 0.3333333333333333, 0.16666666666666666])
    """
    if rule == "gausslegendre":
        nodes, node_weights = np.polynomial.legendre.leggauss(steps)
        return (0.5 * (1 + nodes)).tolist(), (0.5 * node_weights).tolist()
    weights = [1 / steps] * steps
    if rule == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return torch.linspace(0, 1, steps).tolist(), weights
    start, end = {
        "riemann_left": (0.0, 1 - 1 / steps),
        "riemann_right": (1 / steps, 1.0),
        "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)),
    }[rule]
    return torch.linspace(start, end, steps).tolist(), weights


def _blurred_baseline(images: Tensor, blur_kernel: int | None) -> Tensor:
    """SaS's baseline: the Gaussian blur :meth:`~lightning_sas.methods.sas.SaS.baseline` computes."""
    kernel = blur_kernel or scaled_kernel_size(REFERENCE_BLUR_KERNEL, min(images.shape[-2:]))
    # In the images' precision, also under an enclosing autocast: the baseline is an input, not
    # part of the model, and the path points should not carry bf16 rounding.
    with torch.autocast(images.device.type, enabled=False):
        return gaussian_blur(images, kernel, opencv_sigma(kernel))


class IntegratedGradients(AttributionMethod):
    """Integrated Gradients (Sundararajan et al., 2017), batched over probes and path points.

    ``IG_c(x) = (x_c − b_c) × ∫₀¹ ∂ score(b + α (x − b)) / ∂ x_c dα``, the integral replaced by
    the weighted sum of ``rule`` (points and weights exactly as Captum's ``method=``, see
    :func:`integration_rule`). All probes × path points are forwarded in chunks.

    Map: the sum of ``IG`` over channels (attributions are additive: the channels of a pixel
    together account for its share of the score change), negative values clipped to 0, min-max
    normalised. Sign policy ``"positive"``: IG's sign is meaningful. By completeness,
    ``Σ IG ≈ score(x) − score(b)``; a positive pixel moved the score towards the target when
    going from the baseline to the image (evidence for the class), a negative one moved it
    away (evidence against). Only evidence for the target ranks high; negative evidence is
    shown as 0, not as importance.

    Baselines: ``"blur"`` is the blurred image SaS inserts into / deletes towards (the same
    kernel as :meth:`~lightning_sas.methods.sas.SaS.baseline`, scaled with the image unless
    ``blur_kernel`` is given), so IG and SaS explain the same change; ``"zero"`` is the
    all-zeros input; a tensor is used as given (broadcast to the images).

    Args:
        baseline: ``"blur"``, ``"zero"`` or a floating tensor broadcastable to ``[B, C, H, W]``.
        steps: Points on the path (forward + backward passes per probe).
        rule: ``"gausslegendre"`` (Captum's default) or ``"riemann_trapezoid"``,
            ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``.
        blur_kernel: Odd Gaussian kernel size of the ``"blur"`` baseline; ``None`` scales SaS's
            reference (51 at 224 px) with the image.
        max_batch: Most images in one model forward; ``None`` picks one (see :class:`Saliency`).

    Raises:
        ValueError: If an argument is out of range (the message names it and its value).
        TypeError: If ``baseline`` is neither a known name nor a floating tensor.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> ig = IntegratedGradients(steps=2)
        >>> ig.attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape
        torch.Size([2, 32, 32])
    """

    name = "ig"
    sign = "positive"

    def __init__(
        self,
        baseline: Literal["blur", "zero"] | Tensor = "blur",
        steps: int = 32,
        rule: str = "gausslegendre",
        blur_kernel: int | None = None,
        max_batch: int | None = None,
        sign: Literal["positive", "absolute"] = "positive",
    ) -> None:
        require_sign(sign)
        if isinstance(baseline, Tensor):
            if not baseline.is_floating_point() or baseline.dim() > 4:
                raise TypeError(
                    f"`baseline` tensor must be floating point and broadcastable to [B, C, H, W], "
                    f"got a {baseline.dtype} tensor of shape {list(baseline.shape)}."
                )
        elif baseline not in ("blur", "zero"):
            raise TypeError(f"`baseline` must be 'blur', 'zero' or a floating tensor, got {baseline!r}.")
        if rule not in IG_RULES:
            raise ValueError(f"`rule` must be one of {', '.join(map(repr, IG_RULES))}; got {rule!r}.")
        # Captum's Riemann rules need two points (the trapezoid's two ends); Gauss-Legendre one.
        require_int("steps", steps, minimum=1 if rule == "gausslegendre" else 2)
        if blur_kernel is not None:
            require_int("blur_kernel", blur_kernel, minimum=1)
            if blur_kernel % 2 == 0:
                raise ValueError(f"`blur_kernel` must be odd (or None to scale with the image), got {blur_kernel}.")
        require_max_batch(max_batch)
        self.baseline = baseline.detach().clone() if isinstance(baseline, Tensor) else baseline
        self.steps = steps
        self.rule = rule
        self.blur_kernel = blur_kernel
        self.max_batch = max_batch
        self.sign = sign

    def passes_per_probe(self) -> int:
        """``steps`` forward + backward passes per probe (the path points).

        Example:
            >>> IntegratedGradients(steps=32).passes_per_probe()
            32
        """
        return self.steps

    __repr__ = _repr_with_tensor_shapes

    def baseline_for(self, images: Tensor) -> Tensor:
        """The baseline ``[B, C, H, W]`` for these images (on their device and dtype).

        Raises:
            ValueError: If a tensor baseline does not broadcast to the images' shape.
        """
        if isinstance(self.baseline, Tensor):
            try:
                return torch.broadcast_to(self.baseline.to(device=images.device, dtype=images.dtype), images.shape)
            except RuntimeError:
                raise ValueError(
                    f"`baseline` of shape {list(self.baseline.shape)} does not broadcast to the images' "
                    f"shape {list(images.shape)}."
                ) from None
        if self.baseline == "zero":
            return torch.zeros_like(images)
        return _blurred_baseline(images.detach(), self.blur_kernel)

    def raw_attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """IG per channel ``[B, C, H, W]`` float32, before any reduction (all NaN where not finite)."""
        return self._guarded(model, images, targets, self._raw_and_finite)[0].detach()

    def completeness_gap(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Diagnostic: ``Σ IG − (score(x) − score(baseline))`` per image, ``[B]`` float32.

        Completeness says the attributions add up to the score change along the path; the gap
        is the integration error of ``steps`` points with this ``rule`` (plus, for
        ``"riemann_trapezoid"``, the ``−Δscore / steps`` its weights leave out). A gap that
        is large next to ``|score(x) − score(baseline)|`` means more steps are needed (or a
        model whose gradient is very uneven along the path). Costs two extra forwards.
        """

        def gap(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
            attributions, _ = self._raw_and_finite(model, images, targets)
            ends = torch.cat([images, self.baseline_for(images)])
            batch = images.shape[0]
            scores = image_scores(model, ends, targets.repeat(2), self.max_batch or 2 * batch, "IntegratedGradients")
            return attributions.flatten(1).sum(dim=1) - (scores[:batch] - scores[batch:])

        return self._guarded(model, images, targets, gap).detach()

    def _raw_and_finite(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        alphas_list, weights_list = integration_rule(self.rule, self.steps)
        baseline = self.baseline_for(images)
        difference = images.detach() - baseline
        alphas = torch.tensor(alphas_list, dtype=torch.float64).to(device=images.device, dtype=images.dtype)
        # float32 weights, as Captum multiplies them.
        weights = torch.tensor(weights_list, dtype=torch.float32, device=images.device)

        def on_path(image: Tensor, step: Tensor) -> Tensor:
            return baseline[image] + alphas[step, None, None, None] * difference[image]

        scores, path_integral = _variant_gradients(
            model,
            images,
            targets,
            self.steps,
            on_path,
            lambda image, step, gradient: gradient * weights[step, None, None, None],
            self.max_batch,
            "IntegratedGradients",
        )
        attributions = path_integral * difference.float()
        finite = _finite_images(scores, attributions)
        return _nan_where_not_finite(attributions, finite), finite

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        attributions, finite = self._raw_and_finite(model, images, targets)
        return _to_map(attributions, finite, "sum_positive" if self.sign == "positive" else "max_abs")


# ---------------------------------------------------------------------------------- GradientSHAP


class GradientSHAP(AttributionMethod):
    """GradientSHAP / expected gradients (Lundberg & Lee, 2017; Erion et al., 2021), batched.

    For each of ``samples`` draws ``s``: a reference ``r_s`` picked uniformly from the
    background set, ``α_s ~ U[0, 1]`` and (with ``stdevs > 0``) input noise ``ε_s``; with
    ``x̃ = x + stdevs · ε_s``::

        phi(x) = mean_s (x̃ − r_s) × ∂ score(r_s + α_s (x̃ − r_s)) / ∂ x

    which is what Captum's ``GradientShap`` (noise on the input, ``stdevs`` in input units,
    default 0) and ``shap.GradientExplainer`` (``local_smoothing``, default 0) compute.
    The draws come from a local generator seeded with ``seed`` and are shared by all probes.

    Background: a tensor ``[N, C, H, W]`` (e.g. training images) is a fixed distribution, so
    a probe's result does not depend on the batch it is in. ``"probes"`` uses the images being
    explained as the background (as ``shap.GradientExplainer(model, images)`` on the images
    themselves), which needs at least two images and makes each probe's map depend on the
    others in the set: explain the same set in one call to reproduce it, or fix the background
    to the whole set with :meth:`bind_probe_set` before splitting it (DDP shards).

    Map: the sum over channels, negative values clipped to 0, min-max normalised. Sign policy
    ``"positive"``: like IG's, the attributions add up (in expectation) to the score minus the
    background's mean score, so a positive value is evidence for the target class relative to
    the background, a negative one evidence against.

    Args:
        background: ``"probes"`` or a floating tensor ``[N, C, H, W]``.
        samples: Draws per probe (each one forward and one backward).
        stdevs: Standard deviation of the Gaussian input noise, in input units (0: none).
        max_batch: Most images in one model forward; ``None`` picks one (see :class:`Saliency`).
        seed: Seed of the local generator (the global RNG streams are not touched).

    Raises:
        ValueError: If an argument is out of range (the message names it and its value).
        TypeError: If ``background`` is neither ``"probes"`` nor a floating tensor.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> shap = GradientSHAP(samples=2)
        >>> shap.attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape
        torch.Size([2, 32, 32])
    """

    name = "gradientshap"
    sign = "positive"

    def __init__(
        self,
        background: Literal["probes"] | Tensor = "probes",
        samples: int = 50,
        stdevs: float = 0.0,
        max_batch: int | None = None,
        seed: int = 0,
        sign: Literal["positive", "absolute"] = "positive",
    ) -> None:
        require_sign(sign)
        if isinstance(background, Tensor):
            if not background.is_floating_point() or background.dim() != 4 or background.shape[0] == 0:
                raise TypeError(
                    f"`background` tensor must be a non-empty floating tensor [N, C, H, W], "
                    f"got a {background.dtype} tensor of shape {list(background.shape)}."
                )
        elif background != "probes":
            raise TypeError(f"`background` must be 'probes' or a floating tensor [N, C, H, W], got {background!r}.")
        require_int("samples", samples, minimum=1)
        require_non_negative("stdevs", stdevs)
        require_max_batch(max_batch)
        require_int("seed", seed, minimum=0)
        self.background = background.detach().clone() if isinstance(background, Tensor) else background
        self.samples = samples
        self.stdevs = float(stdevs)
        self.max_batch = max_batch
        self.seed = seed
        self.sign = sign

    def passes_per_probe(self) -> int:
        """``samples`` forward + backward passes per probe.

        Example:
            >>> GradientSHAP(samples=50).passes_per_probe()
            50
        """
        return self.samples

    __repr__ = _repr_with_tensor_shapes

    def draws(self, background_size: int, image_shape: torch.Size) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(reference_index [samples], alpha [samples], noise [samples, C, H, W] or None)`` on the CPU.

        Drawn from the local generator in this order, so a seed gives the same draws on every
        device; ``noise`` (standard normal, before scaling by ``stdevs``) only when ``stdevs > 0``.
        """
        generator = local_generator(self.seed)
        reference_index = torch.randint(background_size, (self.samples,), generator=generator)
        alpha = torch.rand(self.samples, generator=generator)
        noise = torch.randn((self.samples, *image_shape), generator=generator) if self.stdevs > 0 else None
        return reference_index, alpha, noise

    def raw_attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """The expected-gradients values per channel ``[B, C, H, W]`` float32 (all NaN where not finite)."""
        return self._guarded(model, images, targets, self._raw_and_finite)[0].detach()

    def bind_probe_set(self, images: Tensor) -> GradientSHAP:
        """With ``background="probes"``: a copy whose background is ``images``, the whole probe set.

        Explaining any subset of the probes with the copy gives the maps that explaining all of
        them with ``self`` gives, so the maps do not depend on how the set is sharded across
        DDP ranks (nor on padding duplicates), and a one-image shard works. A method with a
        tensor background already is independent of the set and is returned as it is.

        Args:
            images: The whole probe set ``[N, C, H, W]`` (``N >= 2``), as the model expects it.

        Returns:
            A :class:`GradientSHAP` with a fixed tensor background; ``self`` is unchanged.

        Raises:
            TypeError: If ``images`` is not a floating tensor ``[N, C, H, W]``.
            ValueError: If ``images`` holds fewer than 2 images.
        """
        if isinstance(self.background, Tensor):
            return self
        if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
            is_tensor = isinstance(images, Tensor)
            described = f"a {images.dtype} tensor of shape {list(images.shape)}" if is_tensor else type(images).__name__
            raise TypeError(f"`images` must be a floating tensor [N, C, H, W] (the probe set), got {described}.")
        if images.shape[0] < 2:
            raise ValueError(
                "`images` must hold at least 2 probes to be the background of `background='probes'` "
                f"(an image is no reference for itself), got {images.shape[0]}."
            )
        bound = copy.copy(self)
        with torch.inference_mode(False):  # a probe set made in inference mode must serve autograd later
            bound.background = images.detach().clone()
        return bound

    def _background_for(self, images: Tensor) -> Tensor:
        if isinstance(self.background, Tensor):
            if self.background.shape[1:] != images.shape[1:]:
                raise ValueError(
                    f"`background` images have shape {list(self.background.shape[1:])}, the images explained "
                    f"{list(images.shape[1:])}; they must match."
                )
            return self.background.to(device=images.device, dtype=images.dtype)
        if images.shape[0] < 2:
            raise ValueError(
                "`background='probes'` needs at least 2 images (an image is no reference for itself); "
                "got 1. Pass a background tensor to explain images one at a time."
            )
        return images.detach()

    def _raw_and_finite(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        background = self._background_for(images)
        reference_index, alpha, noise = self.draws(background.shape[0], images.shape[1:])
        references = background[reference_index.to(images.device)]  # [S, C, H, W]
        alpha = alpha.to(device=images.device, dtype=images.dtype)
        if noise is not None:
            noise = self.stdevs * noise.to(device=images.device, dtype=images.dtype)
        images = images.detach()

        def noisy(image: Tensor, draw: Tensor) -> Tensor:
            return images[image] if noise is None else images[image] + noise[draw]

        def between(image: Tensor, draw: Tensor) -> Tensor:
            start = references[draw]
            return start + alpha[draw, None, None, None] * (noisy(image, draw) - start)

        def expected_gradient(image: Tensor, draw: Tensor, gradient: Tensor) -> Tensor:
            return gradient * (noisy(image, draw) - references[draw]).float() / self.samples

        scores, attributions = _variant_gradients(
            model, images, targets, self.samples, between, expected_gradient, self.max_batch, "GradientSHAP"
        )
        finite = _finite_images(scores, attributions)
        return _nan_where_not_finite(attributions, finite), finite

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        attributions, finite = self._raw_and_finite(model, images, targets)
        return _to_map(attributions, finite, "sum_positive" if self.sign == "positive" else "max_abs")
