"""Occlusion (Zeiler & Fergus, 2014): how much the target score drops when a window of the image is hidden."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod, minmax_normalize
from lightning_sas.methods.chunking import auto_chunk, image_scores, target_scores_in_chunks
from lightning_sas.validation import require_max_batch

#: ``window=None`` uses about this share of the image side (rounded, at least 1 pixel).
DEFAULT_WINDOW_SHARE = 1 / 8


class Occlusion(AttributionMethod):
    """Occlusion ("Visualizing and Understanding Convolutional Networks", Zeiler & Fergus, ECCV 2014).

    A window of ``window`` pixels slides over the image in steps of ``stride``; at each
    position the window (all channels) is replaced by ``baseline`` and the target logit is
    read. The attribution of a pixel is the mean, over the windows that cover it, of
    ``score(x) - score(x with the window hidden)``: exactly ``captum.attr.Occlusion`` with
    ``sliding_window_shapes=(C, h, w)``, ``strides=(C, sh, sw)``, ``baselines=baseline``.
    Windows start at ``0, stride, 2·stride, ...`` until one reaches the border; when the
    stride does not divide ``side - window`` the last window is cut at the border (as in
    captum), so every pixel is covered.

    Batched for real: all windows of all images (and each image itself) go through the
    model in chunks of at most ``max_batch`` images, each chunk's occluded images built on
    the device when it is needed.

    Window rule: ``window=None`` uses ``max(1, round(side / 8))`` per side and ``stride=None``
    half the window (at least 1), so about 15 × 15 windows at any image size (225 at 32, 64
    or 224 px): the map's resolution and the cost do not depend on the image size.

    Sign (``"positive"``): the raw value is signed and its sign means something. Hiding
    evidence *for* the class lowers its score (positive attribution); hiding evidence
    *against* it raises the score (negative). The map is the min-max normalised signed value,
    so evidence for the class ranks highest and evidence against it lowest, below the pixels
    that do not matter. The absolute value would rank counter-evidence as high as evidence.

    Args:
        window: Side of the occluding window in pixels: an int (square) or ``(height, width)``;
            ``None`` scales it with the image (see above).
        stride: Step between windows: an int or ``(height, width)``, at most the window;
            ``None`` uses half the window (at least 1).
        baseline: The value hidden pixels take, in the model's input space (0.0 is the
            dataset mean for mean/std-normalised inputs).
        max_batch: Most images in one model forward. ``None`` picks a chunk from free GPU
            memory (CUDA) or a fixed pixel budget (CPU). On out-of-memory the chunk is halved
            and the forwards restarted, down to one image per forward.

    Raises:
        ValueError: If an argument is out of range (the message names it and its value).

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> maps = Occlusion(window=8).attribute(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
        >>> maps.shape, float(maps.min()) >= 0.0, float(maps.max()) <= 1.0
        (torch.Size([2, 32, 32]), True, True)
    """

    name = "occlusion"
    sign = "positive"

    def __init__(
        self,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        baseline: float = 0.0,
        max_batch: int | None = None,
    ) -> None:
        if window is not None:
            window = _pair("window", window)
        if stride is not None:
            stride = _pair("stride", stride)
        if window is not None and stride is not None and (stride[0] > window[0] or stride[1] > window[1]):
            raise ValueError(
                f"`stride` must not exceed `window` (pixels between windows would never be hidden), "
                f"got stride={stride} for window={window}."
            )
        if isinstance(baseline, bool) or not isinstance(baseline, int | float) or not math.isfinite(baseline):
            raise ValueError(f"`baseline` must be a finite number, got {baseline!r}.")
        require_max_batch(max_batch)
        self.window = window
        self.stride = stride
        self.baseline = float(baseline)
        self.max_batch = max_batch

    # ------------------------------------------------------------------ public helpers

    def window_and_stride(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((window_h, window_w), (stride_h, stride_w))`` used for images of this size.

        Raises:
            ValueError: If the window is larger than the image, or the stride (from
                ``stride=None``-free settings) exceeds the window.

        Example:
            >>> Occlusion().window_and_stride(64, 64), Occlusion().window_and_stride(224, 100)
            (((8, 8), (4, 4)), ((28, 12), (14, 6)))
        """
        window = self.window or (
            max(1, round(height * DEFAULT_WINDOW_SHARE)),
            max(1, round(width * DEFAULT_WINDOW_SHARE)),
        )
        if window[0] > height or window[1] > width:
            raise ValueError(f"`window` must fit in the image ({height}x{width}), got {window}.")
        stride = self.stride or (max(1, window[0] // 2), max(1, window[1] // 2))
        if stride[0] > window[0] or stride[1] > window[1]:
            raise ValueError(
                f"`stride` must not exceed the window, got stride={stride} for window={window} "
                f"(the window used for {height}x{width} images)."
            )
        return window, stride

    def window_counts(self, height: int, width: int) -> tuple[int, int]:
        """Window positions per column and per row: ``ceil((side - window) / stride) + 1`` each."""
        window, stride = self.window_and_stride(height, width)
        return (
            math.ceil((height - window[0]) / stride[0]) + 1,
            math.ceil((width - window[1]) / stride[1]) + 1,
        )

    def passes_per_probe(self, height: int = 224, width: int | None = None) -> int:
        """Forward passes one probe of this size costs: one per window, plus the image itself.

        Occlusion runs forward passes only (no backward); each counts as one pass.

        Example:
            >>> Occlusion().passes_per_probe(), Occlusion(window=16, stride=16).passes_per_probe(64)
            (226, 17)
        """
        rows, columns = self.window_counts(height, height if width is None else width)
        return rows * columns + 1

    def raw_attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """The signed attribution before normalisation, ``[B, H, W]`` float32 (captum's values).

        Inputs are validated and the model runs in attribution mode, as for :meth:`attribute`.
        A pixel's value is NaN or infinite when a score it depends on is not finite.
        """
        return self._guarded(model, images, targets, self._raw).detach()

    # ------------------------------------------------------------------ the algorithm

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        raw = self._raw(model, images, targets)
        # minmax_normalize turns a map with any non-finite value into all NaN: an image with a
        # non-finite score (its own or an occluded one's) has no answer.
        return minmax_normalize(raw)

    def _raw(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        batch, _, height, width = images.shape
        (window_h, window_w), (stride_h, stride_w) = self.window_and_stride(height, width)
        rows, columns = self.window_counts(height, width)
        device = images.device
        row_hidden = _covered(rows, stride_h, window_h, height, device)  # [rows, H]
        column_hidden = _covered(columns, stride_w, window_w, width, device)  # [columns, W]
        # Window k = i·columns + j hides rows [i·stride_h, i·stride_h + window_h) × columns
        # [j·stride_w, j·stride_w + window_w), cut at the border.
        hidden_rows = row_hidden.repeat_interleave(columns, dim=0)  # [K, H]
        hidden_columns = column_hidden.repeat(rows, 1)  # [K, W]
        per_image = rows * columns
        total = batch * per_image
        baseline = torch.tensor(self.baseline, dtype=images.dtype, device=device)
        chunk = self.max_batch or auto_chunk(model, images[:1], total + batch, with_gradient=False)
        # The images themselves first: their scores are the reference, and a bad target is
        # reported once per image (not once per window).
        own_scores = image_scores(model, images, targets, chunk, "Occlusion")

        def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
            variant = torch.arange(start, stop, device=device)
            image, window = variant // per_image, variant % per_image
            hidden = hidden_rows[window, :, None] & hidden_columns[window, None, :]  # [n, H, W]
            return torch.where(hidden[:, None], baseline, images[image]), targets[image]

        scores, _ = target_scores_in_chunks(
            model, build, total, chunk=chunk, image_targets=targets, what="Occlusion", device=device
        )
        # [B, K]: score(x) - score(x with window k hidden)
        drops = own_scores[:, None].double() - scores.view(batch, per_image).double()
        windows_rows, windows_columns = hidden_rows.double(), hidden_columns.double()
        summed = torch.einsum("bk,kh,kw->bhw", drops, windows_rows, windows_columns)
        coverage = torch.einsum("kh,kw->hw", windows_rows, windows_columns)  # >= 1 everywhere
        return (summed / coverage).float()


def _covered(count: int, stride: int, window: int, side: int, device: torch.device) -> Tensor:
    """``[count, side]`` bool: which pixels window ``i`` (starting at ``i · stride``) covers."""
    starts = torch.arange(count, device=device)[:, None] * stride
    pixels = torch.arange(side, device=device)[None, :]
    return (pixels >= starts) & (pixels < starts + window)


def _pair(name: str, value: object) -> tuple[int, int]:
    """An int or a pair of ints >= 1 as ``(height, width)``."""
    pair = (value, value) if not isinstance(value, tuple | list) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"`{name}` must be an integer >= 1 or a pair (height, width) of them, got {value!r}.")
    return pair  # type: ignore[return-value]
