"""Procedural dermoscopy-like data for the "ruler bias" demo.

A skin-lesion classifier is supposed to tell benign lesions from malignant ones by their
morphology. In this data set the morphology really carries the class, but subtly:

* benign: round or oval lesion with a smooth border and an even brown colour;
* malignant: irregular, asymmetric, partly blurred border, colour variegation (black,
  dark brown, blue-grey and light-brown blotches), dark dots, and a slightly larger size
  on average.

Both classes share the same spread of position, eccentricity, skin tone, lesion tone,
texture and noise; each lesion's "severity" (how atypical it looks) is drawn from
overlapping per-class ranges, so a small CNN learns the morphology, but not perfectly.

On top of that, a ruler (a light strip with dark tick marks near an image edge) appears
with probability ``p_ruler_malignant`` in malignant images and ``p_ruler_benign`` in benign
ones -- the shortcut. Every image comes with the exact pixel mask of its ruler, which the
audit uses as the region of interest.

All geometry is expressed as a fraction of the image side, so the images look alike from
32 to 224 px; only the ruler's stripe width, tick spacing and tick thickness have a floor in
pixels so the ticks stay legible on tiny images.

Generation is vectorised over the batch: per-image parameters come from a local
``numpy.random.Generator``, textures are coarse random grids expanded by B-spline matmuls,
the lesion border is a tabulated polar radius function, and the sensor noise comes from a
local ``torch.Generator``. The global RNGs are never touched. About 1.6 s of CPU time for
2,000 64-px images on one core.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "CLASS_NAMES",
    "MEAN",
    "STD",
    "RulerBiasDataset",
    "generate",
    "make_splits",
    "ruler_artifacts",
]

CLASS_NAMES: tuple[str, str] = ("benign", "malignant")
"""Class names; the index is the label (0 = benign, 1 = malignant)."""

# Per-channel statistics of the images in [0, 1], measured once on 20,000 images generated
# with the defaults (64 px, p_ruler_malignant=0.9, p_ruler_benign=0.1, seed=12345). All
# geometry is relative to the image side, so they hold for other sizes and ruler rates to
# within ~0.01.
MEAN: tuple[float, float, float] = (0.772, 0.600, 0.499)
STD: tuple[float, float, float] = (0.164, 0.165, 0.166)

# Pixels rendered at once (images x S x S): small enough that the temporaries stay in
# cache (measured fastest), large enough to amortise the per-call overhead.
_PIXELS_PER_CHUNK = 1 << 18
# How hard the morphology is to learn. Each lesion has an atypia "severity" (0 = textbook
# benign, 1 = textbook melanoma) drawn per class, jittered separately for border and colour
# so the two cues disagree at times. Tuned so that a 3-layer, 16-32 channel CNN trained with
# Adam (lr 1e-3, batch 32) for 3 epochs on 2,000 images without a ruler shortcut reaches
# about 0.76-0.80 validation accuracy (logistic regression on 5 hand-made lesion features:
# about 0.92).
_BENIGN_SEVERITY = (0.0, 0.3)
_MALIGNANT_SEVERITY = (0.45, 1.0)
_SEVERITY_JITTER = 0.08
_MALIGNANT_SIZE_BONUS = 0.03  # added to the radius: melanomas tend to be larger
_BORDER_IRREGULARITY = 0.28  # border harmonic amplitude per unit of severity
_BLOTCH_THRESHOLD = 1.0  # field level above which a variegation blotch shows ...
_BLOTCH_SPREAD = 1.6  # ... lowered by this times the blotch strength
_DOTS_THRESHOLD = (2.8, 1.6)  # field level above which a dot shows: a - b * colour severity
# Angles at which the polar border functions are tabulated; pixels interpolate linearly.
_BORDER_TABLE_SIZE = 256
# Harmonics of the polar border function: 1 (asymmetric shift) up to this order.
_NUM_BORDER_HARMONICS = 10
# Colours (RGB in [0, 1]).
_SKIN_TONES = np.array(
    [[0.95, 0.82, 0.73], [0.90, 0.71, 0.60], [0.78, 0.57, 0.45], [0.60, 0.42, 0.31]],
    dtype=np.float64,
)
_VARIEGATION_TONES = np.array(  # blotch colours of atypical lesions
    [
        [0.11, 0.08, 0.08],  # black
        [0.30, 0.17, 0.11],  # dark brown
        [0.42, 0.45, 0.52],  # blue-grey veil
        [0.0, 0.0, 0.0],  # light brown (regression): set per image between skin and lesion
    ],
    dtype=np.float64,
)


class _Rendered(NamedTuple):
    """Everything one call renders; ``generate`` returns the first three fields."""

    images: Tensor  # float32 [n, 3, S, S] in [0, 1]
    labels: Tensor  # int64 [n]
    ruler_masks: Tensor  # float32 [n, S, S] in {0, 1}
    lesion_masks: Tensor  # float32 [n, S, S] in {0, 1}: lesion opacity above one half


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass, but generate(True) is a bug, not a size.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    # `not (0 <= v <= 1)` also rejects NaN.
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- public API


def generate(
    n: int,
    *,
    image_size: int = 64,
    p_ruler_malignant: float = 0.9,
    p_ruler_benign: float = 0.1,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Generates ``n`` dermoscopy-like images with ruler artifacts.

    Exactly ``n // 2`` images are benign and ``n - n // 2`` malignant, in shuffled order.
    Within each class, the number of images with a ruler is ``round(p * class_size)``
    (stratified rather than Bernoulli, so the bias is exactly what was asked for).

    The random draws do not depend on the ruler probabilities: two calls that differ only in
    ``p_ruler_*`` produce the same labels, skin and lesions, and their images differ
    exactly on the ruler pixels.

    Args:
        n: Number of images, >= 1.
        image_size: Side S of the square images in pixels, >= 16.
        p_ruler_malignant: Fraction of malignant images that show a ruler, in [0, 1].
        p_ruler_benign: Fraction of benign images that show a ruler, in [0, 1].
        seed: Non-negative integer seed; the same seed gives bit-identical output.

    Returns:
        ``(images, labels, ruler_masks)``: images float32 ``[n, 3, S, S]`` in [0, 1],
        labels int64 ``[n]`` (0 = benign, 1 = malignant, see ``CLASS_NAMES``), ruler masks
        float32 ``[n, S, S]`` with 1 exactly on the pixels the ruler covers (all zeros for
        images without a ruler).

    Raises:
        ValueError: If an argument is out of range or of the wrong type.
    """
    rendered = _generate_full(
        n,
        image_size=image_size,
        p_ruler_malignant=p_ruler_malignant,
        p_ruler_benign=p_ruler_benign,
        seed=seed,
    )
    return rendered.images, rendered.labels, rendered.ruler_masks


class RulerBiasDataset(Dataset):
    """Images, labels and ruler masks from :func:`generate`, ready for a DataLoader.

    ``__getitem__`` returns ``(image, label, roi_mask)``: the image normalised with
    ``MEAN``/``STD`` (float32 ``[3, S, S]``), the label (int64 scalar tensor) and the ruler
    mask (float32 ``[S, S]``, the audit's region of interest; all zeros without a ruler).

    Attributes:
        images: float32 ``[n, 3, S, S]`` in [0, 1], not normalised (for display).
        labels: int64 ``[n]``.
        ruler_masks: float32 ``[n, S, S]`` in {0, 1}.
    """

    def __init__(self, images: Tensor, labels: Tensor, ruler_masks: Tensor) -> None:
        """Wraps the three tensors.

        Args:
            images: float32 ``[n, 3, S, S]`` in [0, 1].
            labels: int64 ``[n]``.
            ruler_masks: float32 ``[n, S, S]``.

        Raises:
            ValueError: If the shapes do not fit together.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [n, 3, H, W], got {tuple(images.shape)}")
        n, _, height, width = images.shape
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape [{n}], got {tuple(labels.shape)}")
        if ruler_masks.shape != (n, height, width):
            raise ValueError(f"ruler_masks must have shape [{n}, {height}, {width}], got {tuple(ruler_masks.shape)}")
        self.images = images
        self.labels = labels
        self.ruler_masks = ruler_masks
        # Shaped for broadcasting over [3, H, W].
        self._mean = torch.tensor(MEAN, dtype=images.dtype).view(3, 1, 1)
        self._std = torch.tensor(STD, dtype=images.dtype).view(3, 1, 1)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image = (self.images[index] - self._mean) / self._std
        return image, self.labels[index], self.ruler_masks[index]

    @property
    def has_ruler(self) -> Tensor:
        """bool ``[n]``: whether each image shows a ruler."""
        return self.ruler_masks.flatten(1).any(dim=1)

    def normalised_images(self) -> Tensor:
        """All images normalised with ``MEAN``/``STD``, float32 ``[n, 3, S, S]``."""
        return (self.images - self._mean) / self._std


def make_splits(
    *,
    n_train: int = 2000,
    n_val: int = 400,
    n_counterfactual: int = 400,
    image_size: int = 64,
    p_ruler_malignant: float = 0.9,
    p_ruler_benign: float = 0.1,
    clean: bool = False,
    seed: int = 0,
) -> dict[str, RulerBiasDataset]:
    """Builds the train / val / counterfactual splits of the ruler-bias demo.

    Args:
        n_train: Size of the training split, >= 1.
        n_val: Size of the validation split (same bias as train), >= 1.
        n_counterfactual: Size of the counterfactual split, >= 1. Its bias is swapped:
            benign images get rulers with ``p_ruler_malignant``, malignant ones with
            ``p_ruler_benign``. A model that learned "ruler => malignant" fails here.
        image_size: Side of the square images in pixels, >= 16.
        p_ruler_malignant: Ruler rate among malignant images, in [0, 1].
        p_ruler_benign: Ruler rate among benign images, in [0, 1].
        clean: Control run: both rates are set to their mean in every split, so the ruler
            carries no information about the class.
        seed: Non-negative integer; each split gets its own seed derived from it.

    Returns:
        ``{"train": ..., "val": ..., "counterfactual": ...}``.

    Raises:
        ValueError: If an argument is out of range or of the wrong type.
    """
    sizes = {
        "train": _check_int("n_train", n_train, 1),
        "val": _check_int("n_val", n_val, 1),
        "counterfactual": _check_int("n_counterfactual", n_counterfactual, 1),
    }
    image_size = _check_int("image_size", image_size, 16)
    p_malignant = _check_probability("p_ruler_malignant", p_ruler_malignant)
    p_benign = _check_probability("p_ruler_benign", p_ruler_benign)
    seed = _check_int("seed", seed, 0)
    if clean:
        p_malignant = p_benign = 0.5 * (p_malignant + p_benign)
    rates = {  # (p_ruler_malignant, p_ruler_benign) per split
        "train": (p_malignant, p_benign),
        "val": (p_malignant, p_benign),
        "counterfactual": (p_benign, p_malignant),
    }
    # Independent, reproducible seeds per split (spawned, not seed+1, so that seed s's val
    # split is not seed s+1's train split).
    split_seeds = np.random.SeedSequence(seed).generate_state(len(sizes), dtype=np.uint32)
    splits: dict[str, RulerBiasDataset] = {}
    for (split, size), split_seed in zip(sizes.items(), split_seeds, strict=True):
        images, labels, masks = generate(
            size,
            image_size=image_size,
            p_ruler_malignant=rates[split][0],
            p_ruler_benign=rates[split][1],
            seed=int(split_seed),
        )
        splits[split] = RulerBiasDataset(images, labels, masks)
    return splits


def ruler_artifacts(dataset: RulerBiasDataset, count: int = 32, trials: int = 4, seed: int = 0):
    """Ruler examples cut from ``dataset`` for the audit's intervention score.

    Each example is a whole normalised image with the exact mask of its ruler, so pasting it
    onto a probe puts a real ruler exactly where rulers appear, without the other image's
    lesion. The suspected class is malignant (1): a model that learned "ruler => malignant"
    flips benign probes when a ruler is pasted.

    Args:
        dataset: A split with rulers (e.g. the training split).
        count: Most examples to keep (the first ``count`` images with a ruler).
        trials: Pastes per probe.
        seed: Seed of the choice of example per paste.

    Returns:
        :class:`lightning_sas.trust.intervention.Artifacts`.

    Raises:
        ValueError: If ``dataset`` has no image with a ruler.
    """
    from lightning_sas.trust.intervention import Artifacts

    with_ruler = torch.nonzero(dataset.has_ruler).flatten()[: _check_int("count", count, 1)]
    if len(with_ruler) == 0:
        raise ValueError("`dataset` has no image with a ruler to cut artifact examples from.")
    return Artifacts(
        target_class=CLASS_NAMES.index("malignant"),
        patches=dataset.normalised_images()[with_ruler],
        masks=dataset.ruler_masks[with_ruler] > 0,
        trials=trials,
        seed=seed,
    )


# --------------------------------------------------------------------------- generation


@contextlib.contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Runs torch CPU ops on one thread for the duration, then restores the setting.

    The rendering works on many small tensors; splitting each op across threads costs more
    than it gains, and when the cores are shared with other processes (CI, a training run)
    the threads wait on each other: measured 1.3 s single-threaded vs. over 60 s with two
    threads on two busy cores for 2,000 images.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _generate_full(
    n: int,
    *,
    image_size: int = 64,
    p_ruler_malignant: float = 0.9,
    p_ruler_benign: float = 0.1,
    seed: int = 0,
) -> _Rendered:
    """Like :func:`generate`, also returning the lesion masks (for tests and analysis)."""
    n = _check_int("n", n, 1)
    size = _check_int("image_size", image_size, 16)
    p_malignant = _check_probability("p_ruler_malignant", p_ruler_malignant)
    p_benign = _check_probability("p_ruler_benign", p_ruler_benign)
    seed = _check_int("seed", seed, 0)

    # Two independent local streams: per-image parameters (numpy, drawn up front) and
    # full-resolution sensor noise (torch, drawn chunk by chunk). Nothing drawn depends on
    # the ruler probabilities, so p only switches rulers on and off.
    param_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(param_seq)
    noise_generator = torch.Generator().manual_seed(int(noise_seq.generate_state(1)[0]))

    labels = np.zeros(n, dtype=np.int64)
    labels[n // 2 :] = 1
    rng.shuffle(labels)
    # Stratified ruler assignment: a random order inside each class; the first
    # round(p * class size) images in that order get a ruler.
    rank_in_class = np.empty(n, dtype=np.int64)
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        rank_in_class[members] = rng.permutation(members.size)
    class_sizes = np.array([(labels == 0).sum(), (labels == 1).sum()])
    rulers_per_class = np.rint(np.array([p_benign, p_malignant]) * class_sizes)
    has_ruler = rank_in_class < rulers_per_class[labels]

    images = torch.empty(n, 3, size, size, dtype=torch.float32)
    ruler_masks = torch.empty(n, size, size, dtype=torch.float32)
    lesion_masks = torch.empty(n, size, size, dtype=torch.float32)
    with _single_threaded_torch():
        params = _draw_parameters(rng, labels)
        spline = _bspline_matrices(size, params)
        chunk = max(1, _PIXELS_PER_CHUNK // (size * size))
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            part = {key: value[start:stop] for key, value in params.items()}
            pixel_noise = torch.randn(stop - start, 4, size, size, generator=noise_generator)
            image, ruler, lesion = _render(part, has_ruler[start:stop], pixel_noise, size, spline)
            images[start:stop] = image
            ruler_masks[start:stop] = ruler
            lesion_masks[start:stop] = lesion
    return _Rendered(images, torch.from_numpy(labels), ruler_masks, lesion_masks)


def _draw_parameters(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Draws every per-image random quantity, vectorised over the batch.

    Lengths are fractions of the image side. Keys ending in ``_grid`` hold coarse random
    grids [n, channels, g, g] that ``_smooth_fields`` turns into smooth textures.

    Args:
        rng: The local generator to draw from.
        labels: int64 [n], 0 = benign, 1 = malignant.

    Returns:
        A dict of arrays whose first axis is the image index.
    """
    n = labels.shape[0]
    malignant = labels == 1
    p: dict[str, np.ndarray] = {}

    # Skin: a tone along a light-to-dark ramp with a small per-channel cast, smooth shading,
    # blotchy texture (brightness and redness), a dermoscope vignette in some images.
    p["skin_rgb"] = _interpolate_palette(_SKIN_TONES, rng.uniform(0.0, len(_SKIN_TONES) - 1, n)) + rng.normal(
        0.0, 0.015, (n, 3)
    )
    p["skin_shading_grid"] = rng.standard_normal((n, 1, 5, 5))
    p["skin_texture_grid"] = rng.standard_normal((n, 2, 12, 12))
    p["skin_pores_grid"] = rng.standard_normal((n, 1, 30, 30))
    p["noise_sigma"] = rng.uniform(0.006, 0.022, n)
    p["vignette_strength"] = rng.uniform(0.2, 0.7, n) * (rng.random(n) < 0.5)
    p["vignette_radius"] = rng.uniform(0.6, 0.75, n)

    # Severity: how atypical the lesion looks. The class ranges overlap, and border and
    # colour get their own jitter, so some malignant lesions look benign in one or both.
    severity = np.where(malignant, rng.uniform(*_MALIGNANT_SEVERITY, n), rng.uniform(*_BENIGN_SEVERITY, n))
    border_severity = np.clip(severity + rng.normal(0.0, _SEVERITY_JITTER, n), 0.0, 1.0)
    colour_severity = np.clip(severity + rng.normal(0.0, _SEVERITY_JITTER, n), 0.0, 1.0)

    # Lesion shape: an ellipse whose polar radius is modulated by random harmonics.
    p["lesion_centre"] = 0.5 + rng.uniform(-0.09, 0.09, (n, 2))  # (x, y)
    # Melanomas tend to be larger ("D" of the ABCDE rule); the ranges overlap widely.
    radius = rng.uniform(0.14, 0.24, n) + _MALIGNANT_SIZE_BONUS * malignant
    aspect = rng.uniform(0.6, 1.0, n)  # minor / major axis
    p["semi_axes"] = np.stack([radius / np.sqrt(aspect), radius * np.sqrt(aspect)], axis=1)
    p["ellipse_angle"] = rng.uniform(0.0, math.pi, n)
    orders = np.arange(1, _NUM_BORDER_HARMONICS + 1)
    # Amplitude falls off with the order. Benign lesions keep a faint wobble so that
    # "perfect ellipse" is not a give-away.
    harmonic_scale = (0.012 + _BORDER_IRREGULARITY * border_severity)[:, None]
    harmonic_scale = harmonic_scale / orders[None, :] ** 0.9
    p["harmonic_amplitudes"] = harmonic_scale * rng.standard_normal((n, _NUM_BORDER_HARMONICS))
    p["harmonic_phases"] = rng.uniform(0.0, 2 * math.pi, (n, _NUM_BORDER_HARMONICS))
    # Edge width; atypical borders get blurry in places.
    p["edge_softness"] = rng.uniform(0.006, 0.013, n)
    p["edge_fuzz"] = border_severity * rng.uniform(0.0, 2.0, n)
    p["edge_fuzz_phase"] = rng.uniform(0.0, 2 * math.pi, n)
    p["edge_fuzz_order"] = rng.integers(1, 4, n).astype(np.float64)
    # Keeps every lesion inside a disc of radius 0.32 around its centre, which leaves the
    # outer band of the image to the ruler.
    p["radius_scale"] = _radius_scale_to_fit(p, limit=0.32)

    # Lesion colour: the skin darkened towards brown (so the lesion is darker than the skin
    # on any skin tone), mottled, darker towards the centre in some ...
    darkening = rng.uniform(0.38, 0.72, n)[:, None]
    brown_hue = np.array([1.0, 0.8, 0.68]) + rng.normal(0.0, 0.03, (n, 3))
    p["lesion_rgb"] = p["skin_rgb"] * darkening * brown_hue
    p["lesion_opacity"] = rng.uniform(0.82, 0.97, n)
    p["centre_darkening"] = rng.uniform(0.0, 0.25, n)
    p["lesion_texture_grid"] = rng.standard_normal((n, 1, 14, 14))
    # ... plus, with the colour severity, blotches of other tones (variegation).
    num_tones = len(_VARIEGATION_TONES)
    p["variegation_grid"] = rng.standard_normal((n, num_tones, 11, 11))
    strength = colour_severity[:, None] * rng.uniform(0.75, 1.0, (n, num_tones))
    strength *= rng.random((n, num_tones)) < 0.75  # not every tone in every lesion
    p["variegation_strength"] = strength
    p["variegation_rgb"] = _VARIEGATION_TONES[None] + rng.normal(0.0, 0.03, (n, num_tones, 3))
    p["variegation_rgb"][:, -1] += 0.5 * (p["skin_rgb"] + p["lesion_rgb"])
    # Irregular dark dots and globules: more of them the more atypical the lesion.
    p["dots_grid"] = rng.standard_normal((n, 1, 26, 26))
    p["dots_threshold"] = _DOTS_THRESHOLD[0] - _DOTS_THRESHOLD[1] * colour_severity
    p["dots_rgb"] = rng.uniform(0.06, 0.2, (n, 1)) * np.array([1.2, 0.9, 0.8])

    # Ruler: drawn for every image, even those that will not show one, so the random stream
    # does not depend on the ruler probabilities.
    p["ruler_edge"] = rng.integers(0, 4, n)  # top, bottom, left, right
    p["ruler_width"] = rng.uniform(0.075, 0.11, n)
    p["ruler_length"] = rng.uniform(0.45, 0.9, n)
    p["ruler_angle"] = np.deg2rad(rng.uniform(-6.0, 6.0, n))
    p["ruler_along"] = rng.uniform(0.3, 0.7, n)  # centre position along the edge
    p["ruler_reach"] = rng.uniform(0.1, 0.17, n)  # how deep its inner side reaches
    p["ruler_tick_spacing"] = rng.uniform(0.045, 0.06, n)
    p["ruler_tick_phase"] = rng.uniform(0.0, 1.0, n)
    p["ruler_rgb"] = rng.uniform(0.92, 0.985, (n, 1)) + rng.normal(0.0, 0.012, (n, 3))
    p["ruler_tick_rgb"] = rng.uniform(0.08, 0.25, (n, 1)) + rng.normal(0.0, 0.02, (n, 3))
    return p


def _interpolate_palette(palette: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Linear interpolation between a palette's rows at fractional row positions."""
    lower = np.clip(np.floor(position).astype(np.int64), 0, len(palette) - 2)
    weight = (position - lower)[:, None]
    return palette[lower] * (1.0 - weight) + palette[lower + 1] * weight


def _border_table(p: dict[str, np.ndarray], angles: Tensor) -> Tensor:
    """Polar border radius r(theta) of each lesion, before ``radius_scale``.

    Args:
        p: Per-image parameters.
        angles: float32 [A], the angles to evaluate at.

    Returns:
        float32 [n, A].
    """

    def column(key: str, index: int | None = None) -> Tensor:
        value = p[key] if index is None else p[key][:, index]
        return torch.as_tensor(value, dtype=torch.float32).view(-1, 1)

    relative = angles.view(1, -1) - column("ellipse_angle")
    a, b = column("semi_axes", 0), column("semi_axes", 1)
    # Ellipse in polar form: a b / sqrt((b cos)^2 + (a sin)^2).
    radius = a * b / torch.sqrt((b * torch.cos(relative)) ** 2 + (a * torch.sin(relative)) ** 2)
    modulation = torch.ones_like(radius)
    for order in range(1, _NUM_BORDER_HARMONICS + 1):
        modulation = modulation + column("harmonic_amplitudes", order - 1) * torch.cos(
            order * angles.view(1, -1) + column("harmonic_phases", order - 1)
        )
    # Never let the border collapse through the centre.
    return radius * modulation.clamp_min(0.35)


def _radius_scale_to_fit(p: dict[str, np.ndarray], limit: float) -> np.ndarray:
    """Per-image factor (<= 1) that keeps the largest border radius under ``limit``."""
    largest = _border_table(p, _table_angles()).amax(dim=1).double().numpy()
    # 1.03: margin for the soft edge.
    return np.minimum(1.0, limit / (largest * 1.03))


def _table_angles() -> Tensor:
    """The angles at which border functions are tabulated: 0 .. 2 pi, endpoint included."""
    return torch.linspace(0.0, 2 * math.pi, _BORDER_TABLE_SIZE + 1)


def _lookup(table: Tensor, position: Tensor) -> Tensor:
    """Linear interpolation in per-image tables.

    Args:
        table: [n, T + 1], values at angles k 2 pi / T (last column = first).
        position: [n, P], fractional table positions in [0, T).

    Returns:
        [n, P].
    """
    lower = position.floor().long().clamp(0, table.shape[1] - 2)
    weight = position - lower
    below = torch.gather(table, 1, lower)
    above = torch.gather(table, 1, lower + 1)
    return below * (1 - weight) + above * weight


def _bspline_matrices(size: int, params: dict[str, np.ndarray]) -> dict[int, Tensor]:
    """Cubic B-spline evaluation matrices [S, g] for every grid size g in ``params``."""
    matrices = {}
    for key, value in params.items():
        if key.endswith("_grid") and value.shape[-1] not in matrices:
            grid = value.shape[-1]
            # Control points spaced so that every pixel has its 4 supporting points.
            u = (np.arange(size) + 0.5) / size * (grid - 3) + 1.0
            base = np.floor(u)
            f = u - base
            weights = np.stack(
                [(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6],
                axis=1,
            )
            matrix = np.zeros((size, grid))
            for tap in range(4):
                index = np.clip(base.astype(np.int64) - 1 + tap, 0, grid - 1)
                np.add.at(matrix, (np.arange(size), index), weights[:, tap])
            matrices[grid] = torch.as_tensor(matrix, dtype=torch.float32)
    return matrices


def _smooth_fields(grid: np.ndarray, spline: dict[int, Tensor]) -> Tensor:
    """Smooth random fields [n, c, S, S] with about unit variance from coarse grids."""
    matrix = spline[grid.shape[-1]]
    # Separable B-spline evaluation as two small matmuls; the factor 2 restores about unit
    # variance (the spline averages ~2 x 2 effective control points).
    coefficients = torch.as_tensor(grid, dtype=torch.float32)
    return 2.0 * (matrix @ coefficients @ matrix.T)


def _render(
    p: dict[str, np.ndarray],
    has_ruler: np.ndarray,
    pixel_noise: Tensor,
    size: int,
    spline: dict[int, Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Renders one chunk of images.

    Args:
        p: Per-image parameters for this chunk (see ``_draw_parameters``).
        has_ruler: bool [n], whether to draw the ruler.
        pixel_noise: float32 [n, 4, S, S] standard normal (luminance + 3 colour planes).
        size: Image side S.
        spline: B-spline matrices from ``_bspline_matrices``.

    Returns:
        images [n, 3, S, S] in [0, 1], ruler masks [n, S, S], lesion masks [n, S, S].
    """
    n = has_ruler.shape[0]

    def per_image(key: str, *shape: int) -> Tensor:
        return torch.as_tensor(p[key], dtype=torch.float32).reshape(n, *shape)

    # Pixel-centre coordinates as fractions of the side: x to the right, y downwards.
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    x = coords.view(1, 1, size)
    y = coords.view(1, size, 1)

    # ---- skin
    shading = 1.0 + 0.05 * _smooth_fields(p["skin_shading_grid"], spline)
    texture = _smooth_fields(p["skin_texture_grid"], spline)
    redness = torch.tensor([1.0, -0.6, -0.6]).view(1, 3, 1, 1)
    pores = _smooth_fields(p["skin_pores_grid"], spline)
    image = per_image("skin_rgb", 3, 1, 1) * (shading + 0.02 * texture[:, :1] + 0.015 * pores)
    image = image + 0.015 * texture[:, 1:] * redness

    # ---- lesion shape: tabulated polar radius, looked up at every pixel's angle
    centre = per_image("lesion_centre", 2)
    dx = x - centre[:, 0].view(n, 1, 1)
    dy = y - centre[:, 1].view(n, 1, 1)
    rho = torch.sqrt(dx * dx + dy * dy)
    angles = _table_angles()
    border_table = _border_table(p, angles) * per_image("radius_scale", 1)
    fuzz = torch.cos(per_image("edge_fuzz_order", 1) * angles + per_image("edge_fuzz_phase", 1))
    # Edge width varies around the border, more so for atypical lesions.
    softness_table = per_image("edge_softness", 1) * (1.0 + per_image("edge_fuzz", 1) * (0.5 + 0.5 * fuzz))
    position = torch.remainder(torch.atan2(dy, dx), 2 * math.pi) * (_BORDER_TABLE_SIZE / (2 * math.pi))
    position = position.reshape(n, -1)
    border = _lookup(border_table, position).view(n, size, size)
    softness = _lookup(softness_table, position).view(n, size, size)
    alpha = torch.sigmoid((border - rho) / softness)  # [n, S, S]
    lesion_mask = (alpha > 0.5).float()

    # ---- lesion colour: base tone, darker centre, mottling, variegation blotches
    depth = (1.0 - rho / border).clamp(0.0, 1.0)  # 0 at the border, 1 at the centre
    lesion_texture = _smooth_fields(p["lesion_texture_grid"], spline)[:, 0]
    shade = 1.0 - per_image("centre_darkening", 1, 1) * depth + 0.05 * lesion_texture
    lesion_rgb = per_image("lesion_rgb", 3, 1, 1) * shade.unsqueeze(1)
    blotch_fields = _smooth_fields(p["variegation_grid"], spline)  # [n, T, S, S]
    strengths = per_image("variegation_strength", len(_VARIEGATION_TONES))
    tones = per_image("variegation_rgb", len(_VARIEGATION_TONES), 3)
    for tone in range(len(_VARIEGATION_TONES)):
        # Blotches where the field is high; the threshold drops as the strength rises, so
        # stronger variegation covers more of the lesion.
        strength = strengths[:, tone].view(n, 1, 1)
        weight = strength * torch.sigmoid(
            2.5 * (blotch_fields[:, tone] - _BLOTCH_THRESHOLD + _BLOTCH_SPREAD * strength)
        )
        weight = weight.unsqueeze(1)
        lesion_rgb = lesion_rgb * (1.0 - weight) + tones[:, tone].view(n, 3, 1, 1) * weight
    dots = _smooth_fields(p["dots_grid"], spline)[:, :1]
    weight = 0.9 * torch.sigmoid(4.0 * (dots - per_image("dots_threshold", 1, 1, 1)))
    lesion_rgb = lesion_rgb * (1.0 - weight) + per_image("dots_rgb", 3, 1, 1) * weight
    opacity = (alpha * per_image("lesion_opacity", 1, 1)).unsqueeze(1)
    image = image * (1.0 - opacity) + lesion_rgb * opacity

    # ---- ruler: on top, with hard edges so that the mask is exactly its pixels
    ruler_mask, tick_mask = _ruler_masks(p, size, x, y)
    ruler_mask = ruler_mask & torch.as_tensor(has_ruler).view(n, 1, 1)
    ruler_colour = torch.where(
        tick_mask.unsqueeze(1),
        per_image("ruler_tick_rgb", 3, 1, 1),
        per_image("ruler_rgb", 3, 1, 1),
    )
    image = torch.where(ruler_mask.unsqueeze(1), ruler_colour, image)

    # ---- camera: dermoscope vignette, then sensor noise (luminance + weaker colour)
    from_centre = torch.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2)
    fall_off = ((from_centre - per_image("vignette_radius", 1, 1)) / 0.12).clamp(0.0, 1.0)
    vignette = 1.0 - per_image("vignette_strength", 1, 1) * fall_off * fall_off
    image = image * vignette.unsqueeze(1)
    noise = pixel_noise[:, :1] + 0.4 * pixel_noise[:, 1:]
    image = image + per_image("noise_sigma", 1, 1, 1) * noise
    return image.clamp(0.0, 1.0), ruler_mask.float(), lesion_mask


def _ruler_masks(p: dict[str, np.ndarray], size: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel masks of every image's ruler strip and of its tick marks (bool [n, S, S]).

    The ruler lies along a random image edge, slightly tilted. Its inner long side reaches
    ``ruler_reach`` into the image at its deepest corner, but never more than a hair past
    the lesion's outermost point towards that edge, so it leaves the lesion visible.
    """
    n = p["ruler_edge"].shape[0]
    pixel = 1.0 / size

    def per_image(values: np.ndarray) -> Tensor:
        return torch.as_tensor(values, dtype=torch.float32).view(n, 1, 1)

    # Gap between each image edge and the lesion (top, bottom, left, right).
    angles = _table_angles()
    border = (_border_table(p, angles) * torch.as_tensor(p["radius_scale"]).view(n, 1)).double()
    border_x = border * torch.cos(angles).double()  # offsets of border points from centre
    border_y = border * torch.sin(angles).double()
    centre_x, centre_y = p["lesion_centre"][:, 0], p["lesion_centre"][:, 1]
    gaps = np.stack(
        [
            centre_y + border_y.amin(dim=1).numpy(),
            1.0 - centre_y - border_y.amax(dim=1).numpy(),
            centre_x + border_x.amin(dim=1).numpy(),
            1.0 - centre_x - border_x.amax(dim=1).numpy(),
        ],
        axis=1,
    )
    edge = p["ruler_edge"]
    # May touch the lesion's outermost tip by about a pixel at 64 px, never more.
    reach = np.minimum(p["ruler_reach"], gaps[np.arange(n), edge] + 0.015)

    width = np.maximum(p["ruler_width"], 3.5 * pixel)  # legible ticks on tiny images
    length = p["ruler_length"]
    angle = p["ruler_angle"]
    # Depth of the centre line at the ruler's middle such that the deepest corner of the
    # inner long side is exactly `reach` deep.
    centre_depth = reach - 0.5 * width * np.cos(angle) - 0.5 * length * np.abs(np.sin(angle))

    # Every pixel's depth into the image from the chosen edge, and position along it.
    edge_t = torch.as_tensor(edge).view(n, 1, 1)
    depth = torch.where(edge_t == 0, y, torch.where(edge_t == 1, 1.0 - y, torch.where(edge_t == 2, x, 1.0 - x)))
    along = torch.where(edge_t <= 1, x, y)
    d_along = along - per_image(p["ruler_along"])
    d_depth = depth - per_image(centre_depth)
    cos_a, sin_a = per_image(np.cos(angle)), per_image(np.sin(angle))
    s = d_along * cos_a + d_depth * sin_a  # along the ruler
    t = -d_along * sin_a + d_depth * cos_a  # across the ruler, positive = inwards
    half_width = per_image(0.5 * width)
    half_length = per_image(0.5 * length)
    strip = (s.abs() <= half_length) & (t.abs() <= half_width)

    # Ticks: thin bars across part of the strip; every 5th longer, every 10th longest
    # (mm / half-cm / cm).
    spacing = per_image(np.maximum(p["ruler_tick_spacing"], 3.0 * pixel))
    thickness = max(pixel, 0.012)
    position = (s + half_length) / spacing + per_image(p["ruler_tick_phase"])
    index = torch.floor(position)
    on_tick = (position - index) * spacing < thickness
    tick_length = torch.where(
        torch.remainder(index, 10) == 0,
        0.75,
        torch.where(torch.remainder(index, 5) == 0, 0.55, 0.35),
    ) * (2 * half_width)
    # Ticks hang from the inner long side, which is always in the frame (the outer one may
    # be cut off by the image border).
    ticks = strip & on_tick & (half_width - t <= tick_length)
    return strip, ticks
