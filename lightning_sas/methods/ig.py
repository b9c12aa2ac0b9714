"""Integrated Gradients (Sundararajan et al., 2017), batched over probes and path points.

Also reports its completeness gap (:meth:`IntegratedGradients.completeness_gap`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.baselines import blur_baseline
from lightning_sas.methods.chunking import image_scores
from lightning_sas.methods.input_gradients import (
    finite_images,
    nan_where_not_finite,
    normalized_map,
    repr_with_tensor_shapes,
    require_sign,
    variant_gradients,
)
from lightning_sas.validation import require_int, require_max_batch

#: Integration rules of :class:`IntegratedGradients`, named as Captum's ``method=`` argument.
IG_RULES = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre")


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
        max_batch: Most images in one model forward; ``None`` picks one (see
            :class:`~lightning_sas.methods.saliency.Saliency`).

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

    __repr__ = repr_with_tensor_shapes

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
        return blur_baseline(images.detach(), self.blur_kernel)

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

        scores, path_integral = variant_gradients(
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
        finite = finite_images(scores, attributions)
        return nan_where_not_finite(attributions, finite), finite

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        attributions, finite = self._raw_and_finite(model, images, targets)
        return normalized_map(attributions, finite, "sum_positive" if self.sign == "positive" else "max_abs")
