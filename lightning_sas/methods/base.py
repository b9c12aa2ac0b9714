"""The contract every attribution method follows (docs/design.md, "The rules every method follows")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn

from lightning_sas.runtime.model_state import attribution_mode, outside_inference_mode
from lightning_sas.runtime.outputs import ClassifierOutput

T = TypeVar("T")


class AttributionMethod(ABC):
    """Base class: ``attribute(model, images, targets) -> Tensor[B, H, W]`` in [0, 1].

    Subclasses implement :meth:`_attribute`, which runs with the model already in
    :func:`~lightning_sas.runtime.model_state.attribution_mode` (eval mode, no parameter gradients,
    autograd on) and with validated inputs. This class checks the inputs and guarantees the
    side-effect rules for every method.
    """

    #: Short name used in TensorBoard tags and reports (``audit/<name>/...``).
    name: str = "method"

    #: How signed evidence becomes the [0, 1] map. ``"positive"``: only evidence *for* the
    #: target class ranks high (negative evidence is clipped or ranks low), for methods whose
    #: sign is meaningful. ``"absolute"``: magnitude ranks high whatever its sign, for methods
    #: whose per-pixel sign is noise (raw gradients). Each method documents its choice and why.
    sign: Literal["positive", "absolute"] = "positive"

    def passes_per_probe(self) -> int:
        """Model passes (forward + backward) one probe costs: what audit time estimates use.

        Subclasses override this; the default assumes one forward and one backward.
        """
        return 1

    def bind_probe_set(self, images: Tensor) -> AttributionMethod:
        """This method with anything it takes from "the images in the call" fixed to ``images``.

        A method whose result for a probe depends on the other images it is explained with
        (GradientSHAP's ``background="probes"``) would otherwise depend on how the probe set is
        split: under DDP each rank explains its shard. Bind the whole probe set once, before
        sharding, and explain the shards with the bound method. The default returns ``self``.

        Args:
            images: The whole probe set ``[N, C, H, W]``, normalised as the model expects.

        Returns:
            ``self`` or a configured copy; ``self`` is never changed.
        """
        return self

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Explain ``model``'s score for ``targets`` on ``images``.

        Args:
            model: A classifier returning logits ``[B, num_classes]`` or a single binary logit
                ``[B]`` / ``[B, 1]``; wrap it in :class:`~lightning_sas.runtime.outputs.ClassifierOutput`
                to pick the logits out of a tuple, list or dict output.
            images: Float tensor ``[B, C, H, W]``, normalised as the model expects.
            targets: Integer tensor ``[B]``: the class to explain for each image.

        Returns:
            Float32 tensor ``[B, H, W]`` with values in [0, 1], on ``images.device``; all NaN
            for an image whose model output or gradient is not finite (never a blank map).
            Under an enclosing ``torch.autocast`` with float16 the method runs in float32 (see
            :func:`attribution_precision`); bfloat16 autocast reaches the model's forwards.

        Raises:
            TypeError: If ``model``, ``images`` or ``targets`` has the wrong type or dtype.
            ValueError: If shapes disagree, the model's output is not class logits, or a target
                is out of range for the model's outputs.
        """
        return self._guarded(model, images, targets, self._attribute).detach().to(torch.float32)

    def _guarded(self, model: nn.Module, images: Tensor, targets: Tensor, compute: Callable[..., T]) -> T:
        """Validate the inputs and run ``compute(model, images, targets)`` in attribution mode."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        images, targets = validate_images_and_targets(images, targets)
        # Every method sees [B, num_classes] logits from the module holding the weights.
        with attribution_mode(ClassifierOutput.wrap(model)) as forward_module, attribution_precision(images):
            return compute(forward_module, outside_inference_mode(images), outside_inference_mode(targets))

    @abstractmethod
    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Compute the maps; inputs are validated and the model is in attribution mode."""

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_"))
        return f"{type(self).__name__}({settings})"


@contextmanager
def attribution_precision(images: Tensor) -> Iterator[None]:
    """Under a float16 autocast, switch autocast off (float32); otherwise leave precision as it is.

    Attribution differentiates the target score with respect to the input. float16's 5-bit
    exponent makes those gradients underflow to zero (blank maps for a model with small logits
    or gradients) or overflow (NaN maps), and unlike training there is no step to skip: a
    GradScaler-like scale would need a finiteness check per backward (a host read, and a rerun
    on overflow) and one scale that fits every pixel's gradient. float32 avoids both, at
    float32 speed. bfloat16 has float32's exponent range, so its autocast stays on and the
    model runs as it trains (the methods keep their own arithmetic in float32).
    """
    device_type = images.device.type
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


def validate_images_and_targets(images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Check the shared input contract and move ``targets`` to the images' device as int64.

    Raises:
        TypeError: If ``images`` is not a floating tensor or ``targets`` not an integer tensor.
        ValueError: If ``images`` is not 4-D or is empty, or ``targets`` is not ``[B]``.
    """
    if not isinstance(images, Tensor) or not images.is_floating_point():
        described = f"a {images.dtype} tensor" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"`images` must be a floating-point tensor [B, C, H, W], got {described}.")
    if images.dim() != 4:
        raise ValueError(f"`images` must be 4-D [B, C, H, W], got shape {list(images.shape)}.")
    if images.shape[0] == 0:
        raise ValueError("`images` must hold at least one image, got an empty batch.")
    if not isinstance(targets, Tensor):
        raise TypeError(f"`targets` must be an integer tensor [B], got {type(targets).__name__}.")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"`targets` must be an integer tensor [B], got dtype {targets.dtype}.")
    if targets.shape != (images.shape[0],):
        raise ValueError(
            f"`targets` must have shape [{images.shape[0]}] (one class per image), got shape {list(targets.shape)}."
        )
    return images, targets.to(device=images.device, dtype=torch.long)


def check_logits(logits: Tensor, targets: Tensor) -> None:
    """Check ``targets`` against the logits' class count (one host sync, before any optimisation).

    ``logits`` come from a :class:`~lightning_sas.runtime.outputs.ClassifierOutput`, which already
    refused anything but ``[B, num_classes]``.

    Raises:
        ValueError: If a target is outside ``[0, num_classes)``.
    """
    num_classes = logits.shape[1]
    out_of_range = (targets < 0) | (targets >= num_classes)
    if bool(out_of_range.any()):
        bad = targets[out_of_range].unique().tolist()  # many-variant methods repeat each target
        raise ValueError(f"`targets` must be class indices in [0, {num_classes}) for this model's outputs, got {bad}.")


def minmax_normalize(maps: Tensor) -> Tensor:
    """Scale each map ``[B, H, W]`` to [0, 1]; a constant map becomes all zeros.

    A map with any non-finite value becomes all NaN: a NaN/inf gradient or score must show
    as "no answer", never as a blank map that would be scored at chance.

    Example:
        >>> minmax_normalize(torch.tensor([[[1.0, 3.0]], [[2.0, float("nan")]]]))
        tensor([[[0., 1.]],
        <BLANKLINE>
                [[nan, nan]]])
    """
    flat = maps.flatten(1)
    finite = torch.isfinite(flat).all(dim=1, keepdim=True)
    safe = torch.where(finite, flat, torch.zeros_like(flat))
    low = safe.amin(dim=1, keepdim=True)
    span = safe.amax(dim=1, keepdim=True) - low
    # Dividing by a zero span would give NaN; a constant map carries no ranking, so zeros.
    scaled = torch.where(span > 0, (safe - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return torch.where(finite, scaled, float("nan")).view_as(maps)
