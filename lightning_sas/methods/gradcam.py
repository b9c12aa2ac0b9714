"""Grad-CAM: class activation maps weighted by the spatial mean of the gradient."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod, check_logits, minmax_normalize
from lightning_sas.methods.layers import describe_layouts, locate_target_layer, read_layout, resolve_layer
from lightning_sas.runtime.distributed import any_rank
from lightning_sas.runtime.model_state import uncompiled, unwrap_model
from lightning_sas.runtime.outputs import ClassifierOutput, inner_model


class GradCAM(AttributionMethod):
    """Grad-CAM (Selvaraju et al., 2017), batched: one forward and one gradient for all images.

    For target-layer activations ``A`` read as a map ``B×C×h×w`` and the gradient ``G`` of each
    image's target logit with respect to ``A``: ``map = ReLU(Σ_c mean_hw(G_c) · A_c)``, upsampled
    bilinearly to the input size and min-max normalised per image.

    The layer's output is read as a map automatically (see :mod:`lightning_sas.methods.layers`):
    ``[B, C, h, w]`` (CNNs), channels-last ``[B, h, w, C]`` (torchvision Swin) or a token
    sequence ``[B, N, D]`` whose leading class/register tokens are dropped and whose patch
    tokens are laid out on the grid (ViT). ``reshape`` replaces that reading for layouts it
    does not know.

    Args:
        target_layer: The layer to explain: a dotted module name (``"layer4"``), the module
            itself, or ``None`` to use the last module whose output is a spatial map that the
            model's score depends on, outside the internals of attention modules (found once
            per model and input size with a dry run, see
            :func:`~lightning_sas.methods.layers.locate_target_layer`; ResNet: ``layer4``,
            torchvision ViT: the last block's ``ln_1``, timm ViT/DeiT: ``blocks.11.norm1``).
            :meth:`layer_name` tells which layer that is.
        reshape: ``None`` (read the layout automatically) or a callable mapping the layer's
            output ``[B, ...]`` to a map ``[B, C, h, w]``, like pytorch-grad-cam's
            ``reshape_transform``. It is applied to the activations and to their gradient alike,
            so it must only rearrange or select elements (slice, reshape, permute). Needs
            ``target_layer``.

    Raises:
        TypeError: If ``target_layer`` is neither ``None``, a string nor an ``nn.Module``, or
            ``reshape`` is neither ``None`` nor callable.
        ValueError: If ``reshape`` is given without ``target_layer``.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=3)
        >>> maps = GradCAM("layer4").attribute(model, torch.randn(2, 3, 64, 64), torch.tensor([0, 2]))
        >>> maps.shape
        torch.Size([2, 64, 64])
        >>> vit = torchvision.models.VisionTransformer(32, 16, 1, 1, hidden_dim=8, mlp_dim=8, num_classes=3)
        >>> to_map = lambda tokens: tokens[:, 1:].unflatten(1, (2, 2)).permute(0, 3, 1, 2)  # class token, 2x2 patches
        >>> method = GradCAM("encoder.layers.encoder_layer_0.ln_1", reshape=to_map)
        >>> method.attribute(vit, torch.randn(2, 3, 32, 32), torch.tensor([0, 2])).shape
        torch.Size([2, 32, 32])
    """

    name = "gradcam"

    def __init__(
        self, target_layer: str | nn.Module | None = None, reshape: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        if target_layer is not None and not isinstance(target_layer, str | nn.Module):
            raise TypeError(
                f"`target_layer` must be None, a module name or an nn.Module, got {type(target_layer).__name__}."
            )
        if reshape is not None and not callable(reshape):
            raise TypeError(
                "`reshape` must be None or a callable mapping the layer's output to [B, C, h, w], "
                f"got {type(reshape).__name__} {reshape!r}."
            )
        if reshape is not None and target_layer is None:
            raise ValueError(
                "`reshape` needs `target_layer`: a reshape fits one layer's output, so name the layer it is for "
                "(e.g. GradCAM('encoder.layers.encoder_layer_11.ln_1', reshape=...))."
            )
        self.target_layer = target_layer
        self.reshape = reshape
        # Automatic location costs a forward and a backward; remember the answer per model and
        # input size (which maps still have spatial extent depends on the size).
        self._located: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], nn.Module]] = (
            weakref.WeakKeyDictionary()
        )

    def layer_for(self, model: nn.Module, images: Tensor) -> tuple[str, nn.Module]:
        """The ``(name, module)`` this instance explains for ``model`` (locating it if needed).

        Names are those of the user's model (behind any DDP, ``torch.compile`` or
        :class:`~lightning_sas.runtime.outputs.ClassifierOutput` wrapper).
        """
        named_model = uncompiled(unwrap_model(inner_model(model)))
        if self.target_layer is not None:
            return resolve_layer(named_model, self.target_layer)
        by_size = self._located.setdefault(named_model, {})
        size = tuple(images.shape[1:])
        if size in by_size:
            return resolve_layer(named_model, by_size[size])
        located = locate_target_layer(model, images)
        # A model whose score has no gradient yet (a zero-initialised head) gets the structural
        # fallback for this call only; the next call, after training, decides from the gradient.
        # DDP ranks agree, so that they keep making the same number of dry forwards.
        if not any_rank(not located.from_gradient, images.device):
            by_size[size] = located.module
        return located.name, located.module

    def layer_name(self, model: nn.Module, example_images: Tensor) -> str:
        """The dotted name of the layer this instance explains for ``model`` at this input size.

        For logging the automatic choice and checking a given one before the audit: a given
        ``target_layer`` is only looked up (a name that is not a submodule raises at once), the
        automatic one is located with one dry forward and gradient, and remembered for the model
        and input size, so the attributions that follow do not locate it again.

        Args:
            model: The classifier, as passed to :meth:`attribute` (wrappers allowed).
            example_images: ``[B, C, H, W]`` images of the size that will be explained.

        Raises:
            ValueError: If ``target_layer`` is not a submodule of ``model`` (the message lists
                the nearest valid names), or no layer of ``model`` outputs a spatial map.

        Example:
            >>> import torchvision
            >>> GradCAM().layer_name(torchvision.models.resnet18(num_classes=3), torch.zeros(1, 3, 64, 64))
            'layer4'
        """
        return self.layer_for(model, example_images)[0]

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        layer_name, layer = self.layer_for(model, images)
        # The eager module: a compiled graph does not run hooks added after compilation.
        output = model.output if isinstance(model, ClassifierOutput) else None
        model = ClassifierOutput(uncompiled(inner_model(model)), output)
        captured: list[object] = []
        handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            # Parameters are frozen in attribution mode; an input that requires grad is what
            # puts the target layer's activations into the autograd graph.
            logits = model(images.detach().requires_grad_(True))
        finally:
            handle.remove()
        check_logits(logits, targets)
        if len(captured) != 1 or not isinstance(captured[0], Tensor):
            raise ValueError(
                f"`target_layer` {layer_name!r} must run once per forward and return a tensor; "
                f"{type(layer).__name__} ran {len(captured)} time(s)"
                + (f" and returned a {type(captured[0]).__name__}." if captured else ".")
            )
        activations = captured[0]
        to_map = self.reshape if self.reshape is not None else layout_reader(layer_name, activations, images)
        activation_map = to_map(activations)
        if not isinstance(activation_map, Tensor) or activation_map.dim() != 4 or len(activation_map) != len(images):
            raise ValueError(
                f"`reshape` must map the output of `target_layer` {layer_name!r} (shape {list(activations.shape)}) "
                f"to a map [{images.shape[0]}, C, h, w]; it returned {_describe(activation_map)}."
            )
        # Per-sample targets: summing the selected logits keeps the samples' gradients separate.
        target_scores = logits.gather(1, targets[:, None]).sum()
        (gradients,) = torch.autograd.grad(target_scores, activations)
        gradient_map = to_map(gradients)
        if not isinstance(gradient_map, Tensor) or gradient_map.shape != activation_map.shape:
            raise ValueError(
                f"`reshape` must map the gradient like the activations (shape {list(activation_map.shape)}); "
                f"for the gradient it returned {_describe(gradient_map)}."
            )
        weights = gradient_map.float().mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * activation_map.float()).sum(dim=1, keepdim=True))
        cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)
        # A NaN logit can have a zero gradient (torch.where, masked_fill): its image gets an
        # all-NaN map, never a blank one that would look like an answer.
        finite = torch.isfinite(logits.detach()).all(dim=1)
        return torch.where(finite[:, None, None], minmax_normalize(cams[:, 0]), float("nan"))


def layout_reader(layer_name: str, activations: Tensor, images: Tensor) -> Callable[[Tensor], Tensor]:
    """The function reading ``activations`` (and their gradient) as ``[B, C, h, w]``, from their shape.

    Raises:
        ValueError: If the shape is none of the layouts :func:`~lightning_sas.methods.layers.read_layout`
            knows (naming ``target_layer`` and ``reshape``).
    """
    image_size = (images.shape[-2], images.shape[-1])
    layout = read_layout(activations.shape, image_size) if activations.shape[:1] == images.shape[:1] else None
    if layout is None:
        raise ValueError(
            f"`target_layer` {layer_name!r} returns a tensor of shape {list(activations.shape)} for "
            f"{images.shape[0]} image(s), which is not {describe_layouts(image_size)}. Pass `reshape=` (a "
            "callable mapping this output to [B, C, h, w]) or choose another `target_layer`."
        )
    return layout.to_map


def _describe(value: object) -> str:
    return f"a tensor of shape {list(value.shape)}" if isinstance(value, Tensor) else f"a {type(value).__name__}"
