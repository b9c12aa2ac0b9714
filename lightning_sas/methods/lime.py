"""LIME (Ribeiro et al., 2016) for images: a kernel-weighted linear model of the score over superpixels."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_sas.methods.base import AttributionMethod, minmax_normalize
from lightning_sas.methods.chunking import auto_chunk, image_scores, local_generator, target_scores_in_chunks
from lightning_sas.methods.superpixels import SegmentationFunction, image_digest, segment_image
from lightning_sas.validation import require_int, require_max_batch, require_positive

#: Segmentations kept per method instance (least recently used dropped first); probe sets are
#: usually a few dozen images, and one segmentation of a 224 px image takes 200 kB.
SEGMENTATION_CACHE_SIZE = 256


class LIME(AttributionMethod):
    """LIME ("Why Should I Trust You?", Ribeiro, Singh & Guestrin, KDD 2016), batched on the device.

    Each image is cut into superpixels (computed once per image and cached, see below). Each
    of ``samples`` draws switches every superpixel on or off with probability 1/2 (the first
    draw keeps them all on: the image itself, as lime_image does); an "off" superpixel shows
    its mean colour (lime_image's default ``hide_color=None``) or the constant ``hide_value``.
    The target score of every draw is fitted by a weighted ridge regression on the on/off
    vector, as lime_image's defaults do: weight ``sqrt(exp(-d² / kernel_width²))`` with ``d``
    the cosine distance of the draw to the all-on vector, ``kernel_width=0.25``, ridge
    ``alpha=1`` with an unpenalised intercept. A pixel's attribution is its superpixel's
    coefficient.

    Batched for real: all draws of all images go through the model in chunks of at most
    ``max_batch`` images, each chunk's images composed on the device; the regressions of all
    images are solved at once on the device (``torch.linalg.solve`` on the normal equations,
    float64, superpixels padded to the batch's largest count: a padded column is all zeros and
    gets coefficient 0).

    Superpixels: ``"slic"`` (default) is scikit-image's SLIC with ``n_segments=50``,
    ``compactness=10`` (scikit-image's default) and ``sigma=1`` (a light pre-smoothing that keeps
    SLIC from collapsing noisy images into one superpixel): about 30-50 superpixels whatever
    the image size, so the sampling density per coefficient is predictable. lime_image's
    quickshift default gives a count that grows with the image size and content: 1 to 8
    superpixels at 32-64 px, too few to explain anything.
    ``"quickshift"`` uses lime_image's default settings. Both see the image min-max rescaled to
    [0, 1] (over all channels), so the superpixels do not depend on the model's input
    normalisation. A callable gets each image as it is (see
    :data:`~lightning_sas.methods.superpixels.SegmentationFunction`).

    Cache: a segmentation is reused for an image whose bytes (shape, dtype and values) hash to
    the same BLAKE2b digest as one seen before with the same segmentation settings; a changed
    image is segmented again. Hashing costs one copy of the images to the host per call.

    Randomness: image ``i``'s draws come from ``local_generator(seed)`` (one fresh generator
    per image), so they do not depend on the other images in the batch, and the global random
    streams are not touched. Images with the same number of superpixels get the same draws.

    Sign (``"positive"``): a coefficient's sign means something: positive when showing the
    superpixel raises the target score (evidence for the class), negative when it lowers it.
    The map is the min-max normalised coefficient, so evidence for the class ranks highest and
    evidence against it lowest; the absolute value would rank them alike.

    Args:
        samples: On/off draws per image, the first being the image itself (lime_image's
            default 1000; each is one forward).
        segmentation: ``"slic"``, ``"quickshift"`` or a :data:`~lightning_sas.methods.superpixels.SegmentationFunction`.
        n_segments: SLIC's approximate number of superpixels.
        compactness: SLIC's compactness (higher: squarer superpixels).
        sigma: SLIC's Gaussian pre-smoothing (pixels); 0 turns it off.
        hide_value: What an "off" superpixel shows: ``None`` for its mean colour, or a number
            in the model's input space (0.0 is the dataset mean for normalised inputs).
        kernel_width: Width of the exponential kernel on the cosine distance.
        ridge_alpha: Ridge penalty on the coefficients (not on the intercept).
        score: ``"logit"`` (default) or ``"prob"`` (softmax probability of the target, which
            is what a lime_image ``classifier_fn`` returning probabilities fits).
        max_batch: Most images in one model forward. ``None`` picks a chunk from free GPU
            memory (CUDA) or a fixed pixel budget (CPU). On out-of-memory the chunk is halved
            and the forwards restarted, down to one image per forward.
        seed: Seed of the on/off draws (a local generator: global RNG untouched).

    Raises:
        ValueError: If an argument is out of range (the message names it and its value).
        TypeError: If ``segmentation`` is neither a known name nor a callable.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> maps = LIME(samples=16).attribute(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
        >>> maps.shape, float(maps.min()) >= 0.0, float(maps.max()) <= 1.0
        (torch.Size([2, 32, 32]), True, True)
    """

    name = "lime"
    sign = "positive"

    def __init__(
        self,
        samples: int = 1000,
        segmentation: Literal["slic", "quickshift"] | SegmentationFunction = "slic",
        n_segments: int = 50,
        compactness: float = 10.0,
        sigma: float = 1.0,
        hide_value: float | None = None,
        kernel_width: float = 0.25,
        ridge_alpha: float = 1.0,
        score: Literal["logit", "prob"] = "logit",
        max_batch: int | None = None,
        seed: int = 0,
    ) -> None:
        require_int("samples", samples, minimum=2)
        if isinstance(segmentation, str):
            if segmentation not in ("slic", "quickshift"):
                raise ValueError(f"`segmentation` must be 'slic', 'quickshift' or a callable, got {segmentation!r}.")
        elif not callable(segmentation):
            raise TypeError(
                f"`segmentation` must be 'slic', 'quickshift' or a callable image -> labels, "
                f"got {type(segmentation).__name__}."
            )
        require_int("n_segments", n_segments, minimum=1)
        require_positive("compactness", compactness)
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"`sigma` must be a number >= 0, got {sigma!r}.")
        if hide_value is not None and (
            isinstance(hide_value, bool) or not isinstance(hide_value, int | float) or not math.isfinite(hide_value)
        ):
            raise ValueError(f"`hide_value` must be None (mean colour) or a finite number, got {hide_value!r}.")
        require_positive("kernel_width", kernel_width)
        if isinstance(ridge_alpha, bool) or not isinstance(ridge_alpha, int | float) or not ridge_alpha > 0:
            raise ValueError(f"`ridge_alpha` must be a positive number, got {ridge_alpha!r}.")
        if score not in ("logit", "prob"):
            raise ValueError(f"`score` must be 'logit' or 'prob', got {score!r}.")
        require_max_batch(max_batch)
        require_int("seed", seed, minimum=0)
        self.samples = samples
        self.segmentation = segmentation
        self.n_segments = n_segments
        self.compactness = float(compactness)
        self.sigma = float(sigma)
        self.hide_value = None if hide_value is None else float(hide_value)
        self.kernel_width = float(kernel_width)
        self.ridge_alpha = float(ridge_alpha)
        self.score = score
        self.max_batch = max_batch
        self.seed = seed
        self._segment_cache: OrderedDict[tuple, Tensor] = OrderedDict()

    # ------------------------------------------------------------------ public helpers

    def passes_per_probe(self) -> int:
        """``samples`` forward passes (no backward; a forward-only pass counts as one pass).

        Example:
            >>> LIME().passes_per_probe()
            1000
        """
        return self.samples

    def superpixels(self, images: Tensor) -> Tensor:
        """Superpixel labels ``[B, H, W]`` (int64, ``0 .. count - 1`` per image) on the images' device.

        Computed on the host for images not seen before (scikit-image), cached per image.

        Raises:
            ValueError: If a segmentation function returns labels of the wrong shape or type.
        """
        settings = self._segmentation_settings()
        host_images = images.detach().cpu().contiguous()
        labels: list[Tensor] = []
        for image in host_images:
            key = (settings, image_digest(image))
            cached = self._segment_cache.get(key)
            if cached is None:
                cached = self._segment(image)
                self._segment_cache[key] = cached
                while len(self._segment_cache) > SEGMENTATION_CACHE_SIZE:
                    self._segment_cache.popitem(last=False)
            else:
                self._segment_cache.move_to_end(key)
            labels.append(cached)
        return torch.stack(labels).to(device=images.device, dtype=torch.long)

    def on_off_draws(self, counts: Tensor) -> Tensor:
        """The on/off design ``[B, samples, max(counts)]`` (float32, CPU) for images with these superpixel counts.

        Row 0 of each image is all on; padded columns (beyond an image's count) are 0.

        Example:
            >>> draws = LIME(samples=4).on_off_draws(torch.tensor([2, 3]))
            >>> draws.shape, draws[:, 0].tolist(), draws[0, :, 2].tolist()
            (torch.Size([2, 4, 3]), [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], [0.0, 0.0, 0.0, 0.0])
        """
        largest = int(counts.max())
        design = torch.zeros(len(counts), self.samples, largest)
        for index, count in enumerate(counts.tolist()):
            draws = torch.randint(0, 2, (self.samples, count), generator=local_generator(self.seed))
            draws[0] = 1
            design[index, :, :count] = draws
        return design

    def superpixel_weights(
        self, model: nn.Module, images: Tensor, targets: Tensor, design: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The fitted coefficients ``[B, max_count]`` (float64, NaN for an image with a non-finite
        score; 0 beyond an image's count) and the superpixels ``[B, H, W]``.

        Args:
            model: The classifier.
            images: ``[B, C, H, W]`` float tensor.
            targets: ``[B]`` integer tensor.
            design: On/off draws ``[B, n, max_count]`` to use instead of :meth:`on_off_draws`
                (e.g. another library's draws, to compare the fits); row 0 should be all on.
        """
        return self._guarded(
            model, images, targets, lambda module, checked, labels: self._weights(module, checked, labels, design)
        )

    def raw_attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Each pixel's superpixel coefficient, before normalisation: ``[B, H, W]`` float32.

        Inputs are validated and the model runs in attribution mode, as for :meth:`attribute`;
        an image with a non-finite score gets an all-NaN map.
        """
        weights, segments = self.superpixel_weights(model, images, targets)
        return _paint(weights, segments).float()

    # ------------------------------------------------------------------ the algorithm

    def _attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        weights, segments = self._weights(model, images, targets, None)
        return minmax_normalize(_paint(weights, segments).float())

    def _weights(
        self, model: nn.Module, images: Tensor, targets: Tensor, design: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        batch = images.shape[0]
        device = images.device
        segments = self.superpixels(images)
        counts = segments.flatten(1).amax(dim=1) + 1
        if design is None:
            design = self.on_off_draws(counts.cpu())
        elif (
            design.dim() != 3 or design.shape[0] != batch or design.shape[1] < 2 or design.shape[2] != int(counts.max())
        ):
            raise ValueError(
                f"`design` must have shape [{batch}, n >= 2, {int(counts.max())}] for these images, "
                f"got {list(design.shape)}."
            )
        design = design.to(device=device, dtype=torch.float32)
        if not bool((design[:, 0] == (torch.arange(design.shape[2], device=device) < counts[:, None])).all()):
            raise ValueError("`design` must keep every superpixel on in its first draw (row 0: the image itself).")
        per_image = design.shape[1] - 1  # draws forwarded as composites; row 0 is the image itself
        hidden = self._hidden_images(images, segments, design.shape[2])
        flat_segments = segments.flatten(1)

        def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
            variant = torch.arange(start, stop, device=device)
            image, draw = variant // per_image, 1 + variant % per_image
            shown = design[image, draw].gather(1, flat_segments[image]).view(-1, 1, *images.shape[-2:]) > 0
            return torch.where(shown, images[image], hidden[image]), targets[image]

        total = batch * per_image
        chunk = self.max_batch or auto_chunk(model, images[:1], total + batch, with_gradient=False)
        forward = self._forward if self.score == "prob" else None
        # The images themselves first (a bad target is reported once per image, not per draw).
        own_scores = image_scores(model, images, targets, chunk, "LIME", forward)
        scores, _ = target_scores_in_chunks(
            model, build, total, chunk=chunk, image_targets=targets, what="LIME", device=device, forward=forward
        )
        scores = torch.cat([own_scores[:, None], scores.view(batch, per_image)], dim=1)
        weights = kernel_ridge(design, scores, counts, kernel_width=self.kernel_width, alpha=self.ridge_alpha)
        return weights, segments

    def _forward(self, model: nn.Module, inputs: Tensor) -> Tensor:
        # Softmax probabilities in place of the logits: the target's is what gets fitted.
        return model(inputs).float().softmax(dim=1)

    def _hidden_images(self, images: Tensor, segments: Tensor, largest: int) -> Tensor:
        """What the images show where a superpixel is off: its mean colour, or ``hide_value``."""
        if self.hide_value is not None:
            return torch.full_like(images, self.hide_value)
        batch, channels = images.shape[:2]
        flat = images.flatten(2).double()  # [B, C, HW]; float64 sums, so the means do not drift
        index = segments.flatten(1)[:, None, :].expand(-1, channels, -1)
        sums = flat.new_zeros(batch, channels, largest).scatter_add_(2, index, flat)
        sizes = flat.new_zeros(batch, 1, largest).scatter_add_(2, index[:, :1], torch.ones_like(flat[:, :1]))
        means = sums / sizes.clamp_min(1)
        return means.gather(2, index).view_as(images).to(images.dtype)

    def _segment(self, image: Tensor) -> Tensor:
        """Labels ``[H, W]`` (int32, relabelled to ``0 .. count - 1``) of one host image ``[C, H, W]``."""
        return segment_image(image, self.segmentation, self.n_segments, self.compactness, self.sigma)

    def _segmentation_settings(self) -> tuple:
        if callable(self.segmentation):
            return ("callable", id(self.segmentation))
        if self.segmentation == "quickshift":
            return ("quickshift",)
        return ("slic", self.n_segments, self.compactness, self.sigma)


def kernel_ridge(design: Tensor, scores: Tensor, counts: Tensor, *, kernel_width: float, alpha: float) -> Tensor:
    """lime_image's fit for a batch: weighted ridge of ``scores`` on the on/off ``design``.

    Weight of a draw: ``sqrt(exp(-d² / kernel_width²))``, ``d`` its cosine distance to the
    all-on vector (``1 - sqrt(on / count)``; 1 for an all-off draw, as scikit-learn gives).
    The intercept is not penalised (scikit-learn's ``Ridge(alpha, fit_intercept=True)``).

    Args:
        design: ``[B, n, S]`` 0/1 draws, columns beyond an image's count all 0.
        scores: ``[B, n]`` scores of the draws.
        counts: ``[B]`` superpixels per image.
        kernel_width: Width of the exponential kernel.
        alpha: Ridge penalty.

    Returns:
        ``[B, S]`` float64 coefficients; NaN for an image with a non-finite score; 0 in padded columns.

    Example:
        >>> design = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
        >>> kernel_ridge(design, torch.tensor([[3.0, 1.0, 2.0, 0.0]]), torch.tensor([2]), kernel_width=1.0, alpha=1e-9)
        tensor([[1.0000, 2.0000]], dtype=torch.float64)
    """
    # float64: the normal equations square the condition number. MPS has no float64.
    dtype = torch.float32 if design.device.type == "mps" else torch.float64
    design = design.to(dtype)
    scores = scores.to(device=design.device, dtype=dtype)
    finite = torch.isfinite(scores).all(dim=1)
    scores = torch.where(finite[:, None], scores, 0.0)
    on_share = design.sum(dim=2) / counts.to(device=design.device, dtype=dtype)[:, None]
    distance = 1 - on_share.sqrt()
    weights = torch.exp(-(distance**2) / kernel_width**2).sqrt()  # [B, n]
    augmented = torch.cat([design, torch.ones_like(design[..., :1])], dim=2)  # [B, n, S + 1]; last: intercept
    weighted = augmented * weights[..., None]
    normal = augmented.transpose(1, 2) @ weighted
    penalty = torch.full((augmented.shape[2],), alpha, dtype=dtype, device=design.device)
    penalty[-1] = 0.0
    normal = normal + torch.diag(penalty)
    right = (weighted * scores[..., None]).sum(dim=1)  # [B, S + 1]
    solution = torch.linalg.solve(normal, right)
    return torch.where(finite[:, None], solution[:, :-1], float("nan"))


def _paint(weights: Tensor, segments: Tensor) -> Tensor:
    """Each pixel gets its superpixel's weight: ``[B, H, W]``."""
    return weights.gather(1, segments.flatten(1)).view(segments.shape)
