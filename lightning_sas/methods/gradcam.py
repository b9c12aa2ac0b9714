"""Grad-CAM: class activation maps weighted by the spatial mean of the gradient."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod, check_logits, minmax_normalize
from lightning_sas.methods.layers import find_target_layer, resolve_layer
from lightning_sas.model_state import uncompiled, unwrap_model
from lightning_sas.outputs import ClassifierOutput, inner_model


class GradCAM(AttributionMethod):
    """Grad-CAM (Selvaraju et al., 2017), batched: one forward and one gradient for all images.

    For target-layer activations ``A`` (``B×C×h×w``) and the gradient ``G`` of each image's
    target logit with respect to ``A``: ``map = ReLU(Σ_c mean_hw(G_c) · A_c)``, upsampled
    bilinearly to the input size and min-max normalised per image.

    Args:
        target_layer: The layer to explain: a dotted module name (``"layer4"``), the module
            itself, or ``None`` to use the last module whose output is still a spatial map
            (found once per model with a dry run).

    Raises:
        TypeError: If ``target_layer`` is neither ``None``, a string nor an ``nn.Module``.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=3)
        >>> maps = GradCAM("layer4").attribute(model, torch.randn(2, 3, 64, 64), torch.tensor([0, 2]))
        >>> maps.shape
        torch.Size([2, 64, 64])
    """

    name = "gradcam"

    def __init__(self, target_layer: str | nn.Module | None = None) -> None:
        if target_layer is not None and not isinstance(target_layer, str | nn.Module):
            raise TypeError(
                f"`target_layer` must be None, a module name or an nn.Module, got {type(target_layer).__name__}."
            )
        self.target_layer = target_layer
        # Automatic location costs a forward; remember the answer per model and input size
        # (which maps still have spatial extent depends on the size).
        self._located: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], nn.Module]] = (
            weakref.WeakKeyDictionary()
        )

    def layer_for(self, model: nn.Module, images: Tensor) -> tuple[str, nn.Module]:
        """The ``(name, module)`` this instance explains for ``model`` (locating it if needed).

        Names are those of the user's model (behind any DDP, ``torch.compile`` or
        :class:`~lightning_sas.outputs.ClassifierOutput` wrapper).
        """
        model = uncompiled(unwrap_model(inner_model(model)))
        if self.target_layer is not None:
            return resolve_layer(model, self.target_layer)
        by_size = self._located.setdefault(model, {})
        size = tuple(images.shape[1:])
        if size not in by_size:
            by_size[size] = find_target_layer(model, images)[1]
        return resolve_layer(model, by_size[size])

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        _, layer = self.layer_for(model, images)
        # The eager module: a compiled graph does not run hooks added after compilation.
        output = model.output if isinstance(model, ClassifierOutput) else None
        model = ClassifierOutput(uncompiled(inner_model(model)), output)
        captured: list[Tensor] = []
        handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            # Parameters are frozen in attribution mode; an input that requires grad is what
            # puts the target layer's activations into the autograd graph.
            logits = model(images.detach().requires_grad_(True))
        finally:
            handle.remove()
        check_logits(logits, targets)
        if len(captured) != 1 or not isinstance(captured[0], Tensor) or captured[0].dim() != 4:
            raise ValueError(
                f"`target_layer` must run once per forward and return a [B, C, h, w] map; "
                f"{type(layer).__name__} ran {len(captured)} time(s)."
            )
        activations = captured[0]
        # Per-sample targets: summing the selected logits keeps the samples' gradients separate.
        target_scores = logits.gather(1, targets[:, None]).sum()
        (gradients,) = torch.autograd.grad(target_scores, activations)
        weights = gradients.float().mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * activations.float()).sum(dim=1, keepdim=True))
        cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)
        # A NaN logit can have a zero gradient (torch.where, masked_fill): its image gets an
        # all-NaN map, never a blank one that would look like an answer.
        finite = torch.isfinite(logits.detach()).all(dim=1)
        return torch.where(finite[:, None, None], minmax_normalize(cams[:, 0]), float("nan"))
