"""Faithfulness of attribution maps: the deletion and insertion curves of RISE.

Petsiuk et al. (2018), "RISE: Randomized Input Sampling for Explanation of Black-box Models",
the evaluation the SaS paper reports. A map ranks the pixels (higher = more important). The
*deletion* curve replaces the top-ranked pixels (all channels) by a baseline in ``steps``
equal fractions ``k / steps`` of the image; the *insertion* curve starts from the baseline and
puts the top-ranked pixels of the image back in the same fractions. Step ``k`` moves
``round(k * H * W / steps)`` pixels. Each point is the softmax probability of the target
class; the AUC is the trapezoidal area under the curve over the fraction axis ``[0, 1]``.
A faithful map has a low deletion AUC (the score collapses as soon as its top pixels go) and
a high insertion AUC (its top pixels alone restore the score).

The pure functions (:func:`~lightning_sas.scores.faithfulness_forwards.pixel_ranks`,
:func:`curve_auc`, :func:`faithfulness_curves`) do the work; :class:`Faithfulness` only holds
a configuration, like a torchmetrics metric. The baseline and the checks of the settings are
in :mod:`lightning_sas.scores.faithfulness_baseline`, the batched forwards in
:mod:`lightning_sas.scores.faithfulness_forwards`.

Batched: every probe × interior step × {deletion, insertion} × method goes through the model
in chunks of at most ``max_batch`` images, each chunk's composites built on the device from
a per-pixel rank tensor. The curve endpoints are the image itself and the baseline, which do
not depend on the map, so each is forwarded once per probe and shared by all methods.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_sas.methods.base import validate_images_and_targets
from lightning_sas.methods.chunking import retry_out_of_memory
from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector, check_output_selector
from lightning_sas.scores.faithfulness_baseline import Baseline, baseline_images, check_baseline, check_steps
from lightning_sas.scores.faithfulness_forwards import auto_chunk, stacked_curves
from lightning_sas.validation import require_max_batch


@dataclass(frozen=True)
class FaithfulnessCurves:
    """Deletion and insertion curves of one method's maps, one row per probe.

    Point ``k`` of a curve is at fraction ``k / steps`` of the pixels moved. A probe whose map
    has a non-finite value has all-NaN curves (and NaN AUCs).

    Attributes:
        deletion: ``[B, steps + 1]`` float32 softmax probability of the target while the
            top-ranked pixels are replaced by the baseline (starts at the image).
        insertion: ``[B, steps + 1]`` float32 probability while the top-ranked pixels of the
            image are put back into the baseline (starts at the baseline).
    """

    deletion: Tensor
    insertion: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        """``[B]`` area under the deletion curve over ``[0, 1]``; lower is more faithful."""
        return curve_auc(self.deletion)

    @property
    def insertion_auc(self) -> Tensor:
        """``[B]`` area under the insertion curve over ``[0, 1]``; higher is more faithful."""
        return curve_auc(self.insertion)


def curve_auc(curves: Tensor) -> Tensor:
    """Trapezoidal area under curves sampled at ``S + 1`` equally spaced points of ``[0, 1]``.

    Args:
        curves: ``[..., S + 1]`` values, ``S >= 1`` (e.g. ``[B, steps + 1]``).

    Returns:
        ``[...]`` areas: the mean of the averages of adjacent points (NaN where a curve has NaN).

    Raises:
        ValueError: If ``curves`` is not a floating tensor with at least two points per curve.

    Example:
        >>> curve_auc(torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]))
        tensor([0.5000, 1.0000])
    """
    if not isinstance(curves, Tensor) or not curves.is_floating_point() or curves.dim() < 1 or curves.shape[-1] < 2:
        described = (
            f"shape {list(curves.shape)} ({curves.dtype})" if isinstance(curves, Tensor) else type(curves).__name__
        )
        raise ValueError(f"`curves` must be a floating tensor [..., S + 1] with S >= 1, got {described}.")
    # Equal spacing 1/S: the trapezoid rule is the mean of the adjacent-pair averages.
    return ((curves[..., :-1] + curves[..., 1:]) / 2).mean(dim=-1)


def faithfulness_curves(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    maps: Mapping[str, Tensor],
    *,
    steps: int = 20,
    baseline: Baseline = "blur",
    max_batch: int | None = None,
    output: OutputSelector = None,
) -> dict[str, FaithfulnessCurves]:
    """Deletion and insertion curves of several methods' maps of the same probes, batched.

    The model is run in :func:`~lightning_sas.runtime.model_state.attribution_mode` under
    ``torch.no_grad()``: eval mode, parameter flags, grad / inference mode and RNG states are
    restored afterwards, so this can run inside Lightning's validation loop
    (``torch.inference_mode()``) and under ``torch.autocast`` (the softmax is taken in
    float32; the baseline is built in float32 whatever the autocast). Out of memory halves
    the chunk and starts again, down to one image per forward.

    Args:
        model: A classifier returning logits ``[B, num_classes]``, a single binary logit
            ``[B]`` / ``[B, 1]``, or a tuple/list/dict holding them (see ``output``).
        images: ``[B, C, H, W]`` floating tensor, normalised as the model expects.
        targets: ``[B]`` integer tensor: the class whose probability the curves follow.
        maps: Method name -> ``[B, H, W]`` map of each probe (higher = more important), e.g.
            ``{"sas": sas_maps, "gradcam": gradcam_maps}``.
        steps: Number of equal fractions; curves have ``steps + 1`` points.
        baseline: ``"blur"`` (``blur_baseline(images)``: the Gaussian blur SaS inserts into,
            kernel scaled with the image side), ``"zero"``, a number, or a tensor
            broadcastable to ``images``.
        max_batch: Most images in one forward. ``None``: a pixel budget on the CPU
            (``256 * 64 * 64`` pixels per chunk) or a share of the free memory on CUDA.
        output: Where the logits are in the model's output (an index, key or callable), as in
            :class:`~lightning_sas.runtime.outputs.ClassifierOutput`; ignored if ``model`` already is one.

    Returns:
        Method name -> :class:`FaithfulnessCurves` (float32, on ``images.device``).

    Raises:
        TypeError: If ``model``, ``images``, ``targets``, ``maps`` or ``output`` has the wrong type.
        ValueError: If a shape disagrees, a target is out of range for the model's outputs,
            ``steps``, ``baseline`` or ``max_batch`` is invalid, or the model's output is not
            class logits.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> images, targets = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
        >>> curves = faithfulness_curves(model, images, targets, {"random": torch.rand(2, 16, 16)}, steps=8)
        >>> curves["random"].deletion.shape, curves["random"].insertion_auc.shape
        (torch.Size([2, 9]), torch.Size([2]))
        >>> bool((curves["random"].deletion[:, 0] == curves["random"].insertion[:, -1]).all())  # both: the image
        True
    """
    _check_curve_arguments(model, steps, baseline, max_batch, output)
    images, targets = validate_images_and_targets(images, targets)
    names, stacked = _stack_maps(maps, images)
    adapter = ClassifierOutput.wrap(model, output)
    deletion, insertion = _batched_curves(adapter, images, targets, stacked, steps, baseline, max_batch)
    return _split_by_method(names, deletion, insertion, images.shape[0])


class Faithfulness:
    """Deletion / insertion faithfulness with a fixed configuration (see :func:`faithfulness_curves`).

    Args:
        steps: Number of equal fractions of the pixels; curves have ``steps + 1`` points.
        baseline: ``"blur"`` (default, the SaS blur), ``"zero"``, a number, or a tensor
            broadcastable to the images.
        max_batch: Most images in one model forward; ``None`` picks a chunk automatically.

    Raises:
        ValueError: If an argument is invalid (the message names it, its value and what is expected).

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
        >>> metric = Faithfulness(steps=4, baseline="zero")
        >>> curves = metric(model, torch.rand(2, 3, 8, 8), torch.tensor([2, 0]), {"a": torch.rand(2, 8, 8)})
        >>> curves["a"].deletion.shape, curves["a"].deletion_auc.dtype
        (torch.Size([2, 5]), torch.float32)
    """

    def __init__(self, steps: int = 20, baseline: Baseline = "blur", max_batch: int | None = None) -> None:
        check_steps(steps)
        check_baseline(baseline)
        require_max_batch(max_batch)
        self.steps = steps
        self.baseline = baseline
        self.max_batch = max_batch

    def __call__(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        maps_by_method: Mapping[str, Tensor],
        output: OutputSelector = None,
    ) -> dict[str, FaithfulnessCurves]:
        """Curves of each method's maps with this configuration.

        Args:
            model: The classifier (logits, a single binary logit, or a structure ``output`` selects from).
            images: ``[B, C, H, W]`` floating tensor.
            targets: ``[B]`` integer tensor.
            maps_by_method: Method name -> ``[B, H, W]`` maps of the probes.
            output: Where the logits are in the model's output (see :func:`faithfulness_curves`).

        Returns:
            Method name -> :class:`FaithfulnessCurves`.

        Raises:
            TypeError, ValueError: As :func:`faithfulness_curves`.
        """
        return faithfulness_curves(
            model,
            images,
            targets,
            maps_by_method,
            steps=self.steps,
            baseline=self.baseline,
            max_batch=self.max_batch,
            output=output,
        )

    def __repr__(self) -> str:
        baseline = f"Tensor{list(self.baseline.shape)}" if isinstance(self.baseline, Tensor) else repr(self.baseline)
        return f"Faithfulness(steps={self.steps}, baseline={baseline}, max_batch={self.max_batch})"


# ---------------------------------------------------------------------------- helpers


def _check_curve_arguments(
    model: object, steps: object, baseline: object, max_batch: object, output: OutputSelector
) -> None:
    """The checks of :func:`faithfulness_curves`' arguments other than the images, targets and maps."""
    check_steps(steps)
    check_baseline(baseline)
    require_max_batch(max_batch)
    check_output_selector(output)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")


def _batched_curves(
    adapter: ClassifierOutput,
    images: Tensor,
    targets: Tensor,
    maps: Tensor,
    steps: int,
    baseline: Baseline,
    max_batch: int | None,
) -> tuple[Tensor, Tensor]:
    """``(deletion, insertion)`` curves of the stacked maps, the model in attribution mode, without grad.

    Forwards go to the module holding the weights, never through a DDP wrapper's hooks.
    """
    methods = maps.shape[0] // images.shape[0]
    with attribution_mode(adapter) as forward_module:
        total = images.shape[0] * (2 + 2 * methods * (steps - 1))
        chunk = max_batch or auto_chunk(forward_module, images, total)
        with torch.no_grad():
            base = baseline_images(images, baseline)
            return retry_out_of_memory(
                lambda size: stacked_curves(forward_module, images, targets, base, maps, steps, size),
                chunk,
                images.device,
                "Faithfulness",
            )


def _split_by_method(
    names: list[str], deletion: Tensor, insertion: Tensor, batch: int
) -> dict[str, FaithfulnessCurves]:
    """Method name -> its rows ``[B, steps + 1]`` of the stacked curves (row ``method * B + probe``)."""
    return {
        name: FaithfulnessCurves(
            deletion=deletion[i * batch : (i + 1) * batch], insertion=insertion[i * batch : (i + 1) * batch]
        )
        for i, name in enumerate(names)
    }


def _stack_maps(maps: Mapping[str, Tensor], images: Tensor) -> tuple[list[str], Tensor]:
    """Method names and their maps stacked ``[M * B, H, W]`` on the images' device."""
    expected = [images.shape[0], *images.shape[2:]]
    if not isinstance(maps, Mapping):
        hint = ' (wrap a single tensor as {"name": maps})' if isinstance(maps, Tensor) else ""
        raise TypeError(
            f"`maps` must be a mapping of method name -> [B, H, W] tensor{hint}, got {type(maps).__name__}."
        )
    if not maps:
        raise ValueError("`maps` must hold at least one method's maps, got an empty mapping.")
    names = list(maps)
    checked = []
    for name in names:
        value = maps[name]
        if not isinstance(value, Tensor) or value.is_complex():
            described = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"`maps[{name!r}]` must be a real tensor {expected} ([B, H, W]), got {described}.")
        if list(value.shape) != expected:
            raise ValueError(
                f"`maps[{name!r}]` must have shape {expected} ([B, H, W] of the images {list(images.shape)}), "
                f"got shape {list(value.shape)}."
            )
        checked.append(value.detach().to(images.device))
    # At least float32 (for the NaN check); never lower a float64 map's precision, which
    # could turn distinct values into ties and change the ordering.
    dtype = functools.reduce(torch.promote_types, (value.dtype for value in checked), torch.float32)
    return names, torch.cat([value.to(dtype) for value in checked])
