"""Quickstart: train a small CNN on the CPU, then explain it with Grad-CAM and SaS.

The data is procedural and the answer is known. Each 32x32 RGB image is clutter (a smooth
random colour field, pixel noise, a patch of diagonal stripes and a bright blob, all
independent of the class) plus a fixed 10x10 region in the top-right corner that carries
the class: horizontal stripes (class 0) or vertical stripes (class 1), with random period,
phase, contrast, colour and a tilt of up to 17 degrees. Nothing outside that region
tells the classes apart, so a faithful attribution must point at it.

The script trains the CNN with a ``lightning.Trainer`` (well under a minute on one or two
CPU cores), explains 8 validation images with both methods (SaS at its default settings,
Grad-CAM on the automatically found layer), prints how much of each map falls in the
known region next to chance level, and writes a figure with one row per image:
image | Grad-CAM overlay | SaS overlay, drawn by ``lightning_sas.report.render``. A dashed white
box marks the known region; each row's label ends with each method's *share*: the
fraction of the map's top 100 pixels (the region's size) that lie inside the region, whose
chance level is 100 / 1024, about 0.10.

Run it from anywhere::

    python examples/quickstart.py                  # writes outputs/quickstart.png
    python examples/quickstart.py --epochs 2 --sas-iterations 20 --out /tmp/qs.png
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning_sas  # noqa: F401  (installed editable by `make install`)
except ModuleNotFoundError:  # running from a plain checkout: use the repository's copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L

from lightning_sas.methods import GradCAM, SaS
from lightning_sas.report.render import comparison_grid, overlay, save_png, to_display
from lightning_sas.scores.metrics import roi_mass, roi_share

__all__ = [
    "CLASS_NAMES",
    "IMAGE_SIZE",
    "REGION",
    "MethodResult",
    "QuickstartResult",
    "StripeClassifier",
    "StripeData",
    "accuracy",
    "build_model",
    "explain",
    "main",
    "make_data",
    "outline_region",
    "pick_probes",
    "region_mask",
    "render_figure",
    "train",
]

IMAGE_SIZE = 32
#: The region that decides the class, as (top, left, height, width) in pixels: top-right,
#: away from the centre and the borders, so that it cannot be found by a centre bias.
REGION = (3, 19, 10, 10)
CLASS_NAMES: tuple[str, str] = ("horizontal", "vertical")

# Stripe geometry. Periods stay well above the 2-px Nyquist limit and short enough that
# SaS's baseline blur (7-px kernel, sigma 1.4 at 32 px) removes most of their contrast
# (at least 65%), so the blurred baseline carries little class evidence.
_STRIPE_PERIOD = (3.5, 6.0)
_STRIPE_TILT = 0.3  # radians (~17 degrees) of random tilt around the class orientation
_STRIPE_AMPLITUDE = (0.15, 0.35)
# The clutter's diagonal stripes (45 degrees +- 9) sit between the two classes'
# orientations, so the model has to learn orientation, not "there are stripes".
_DISTRACTOR_TILT = 0.15
_DISTRACTOR_RADIUS = (3.5, 5.5)
_PIXEL_NOISE = 0.03


class StripeData(NamedTuple):
    """A procedural data set: images in [0, 1], labels and the class-deciding region."""

    images: Tensor  # [N, 3, H, W] float32 in [0, 1]
    labels: Tensor  # [N] int64: 0 = horizontal stripes in the region, 1 = vertical
    region: Tensor  # [H, W] bool: True inside the region that decides the class


@dataclass(frozen=True)
class MethodResult:
    """One method's explanation of a batch.

    Attributes:
        maps: Attribution maps ``[B, H, W]`` in [0, 1].
        seconds: Wall-clock time of the ``attribute`` call.
        roi_share: Per image, the fraction of the map's ``|R|`` top pixels inside the region.
        roi_mass: Per image, the share of the map's total mass inside the region.
    """

    maps: Tensor
    seconds: float
    roi_share: Tensor
    roi_mass: Tensor


@dataclass(frozen=True)
class QuickstartResult:
    """What :func:`main` measured.

    Attributes:
        val_accuracy: Accuracy on the validation set, in [0, 1].
        chance: Region area / image area: the score of an uninformative map.
        methods: Display name (``"Grad-CAM"``, ``"SaS"``) -> its explanation and scores.
        train_seconds: Wall-clock time of :func:`train`.
        total_seconds: Wall-clock time of :func:`main`, from start to the written figure.
        out: Path of the written PNG.
    """

    val_accuracy: float
    chance: float
    methods: dict[str, MethodResult]
    train_seconds: float
    total_seconds: float
    out: Path


# --------------------------------------------------------------------------- data


def region_mask(image_size: int = IMAGE_SIZE) -> Tensor:
    """The class-deciding region as a bool mask ``[image_size, image_size]``.

    The region is defined for 32-px images and scales with ``image_size``.
    """
    scale = image_size / IMAGE_SIZE
    top, left, height, width = (round(value * scale) for value in REGION)
    mask = torch.zeros(image_size, image_size, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask


def _uniform(generator: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator)


def _stripes(normal_angle: Tensor, period: Tensor, phase: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """Sinusoidal stripes ``[N, H, W]`` in [-1, 1]; the intensity varies along ``normal_angle``."""
    along = xs * torch.cos(normal_angle)[:, None, None] + ys * torch.sin(normal_angle)[:, None, None]
    return torch.sin(2 * math.pi * along / period[:, None, None] + phase[:, None, None])


def _random_colours(generator: torch.Generator, count: int) -> Tensor:
    """Random RGB directions ``[N, 3, 1, 1]`` of unit length (a stripe's tint)."""
    colours = _uniform(generator, -1.0, 1.0, count, 3)
    return (colours / colours.norm(dim=1, keepdim=True).clamp_min(1e-6))[:, :, None, None]


def make_data(num_images: int, seed: int, image_size: int = IMAGE_SIZE) -> StripeData:
    """Generate the procedural data set, vectorised over the batch.

    Every random draw comes from a local generator seeded with ``seed`` (the global RNG is
    not touched), so the same arguments give the same images.

    Args:
        num_images: How many images to generate (classes are drawn with probability 1/2).
        seed: Seed of the local random generator.
        image_size: Side of the square images in pixels.

    Returns:
        The images, their labels and the class-deciding region.

    Raises:
        ValueError: If ``num_images`` < 1 or ``image_size`` < 16.
    """
    if num_images < 1:
        raise ValueError(f"`num_images` must be >= 1, got {num_images}.")
    if image_size < 16:
        raise ValueError(f"`image_size` must be >= 16, got {image_size}.")
    generator = torch.Generator().manual_seed(seed)
    n, side = num_images, image_size
    scale = side / IMAGE_SIZE
    labels = torch.randint(0, 2, (n,), generator=generator)
    coords = torch.arange(side, dtype=torch.float32)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    region = region_mask(side)

    # Clutter 1: a smooth random colour field (5x5 control points, bicubic).
    control = torch.rand(n, 3, 5, 5, generator=generator)
    images = 0.25 + 0.5 * F.interpolate(control, size=(side, side), mode="bicubic", align_corners=False)

    # Clutter 2: a disc of diagonal stripes, left of or below the region (never inside it).
    left_of_region = torch.rand(n, generator=generator) < 0.5
    centre_y = torch.where(left_of_region, _uniform(generator, 5, 27, n), _uniform(generator, 19, 27, n)) * scale
    centre_x = torch.where(left_of_region, _uniform(generator, 5, 13, n), _uniform(generator, 5, 27, n)) * scale
    distance = torch.hypot(ys - centre_y[:, None, None], xs - centre_x[:, None, None])
    radius = _uniform(generator, *_DISTRACTOR_RADIUS, n) * scale
    disc = (distance < radius[:, None, None]).float()
    diagonal = torch.where(torch.rand(n, generator=generator) < 0.5, 0.25, 0.75) * math.pi
    diagonal = diagonal + _uniform(generator, -_DISTRACTOR_TILT, _DISTRACTOR_TILT, n)
    distractor = _stripes(
        diagonal,
        _uniform(generator, *_STRIPE_PERIOD, n) * scale,
        _uniform(generator, 0, 2 * math.pi, n),
        ys,
        xs,
    )
    contrast = _uniform(generator, *_STRIPE_AMPLITUDE, n)[:, None, None]
    images = images + (contrast * disc * distractor)[:, None] * _random_colours(generator, n)

    # Clutter 3: a bright Gaussian blob in the left half.
    blob_y = _uniform(generator, 4, 28, n) * scale
    blob_x = _uniform(generator, 4, 16, n) * scale
    blob_sigma = _uniform(generator, 1.5, 3.0, n) * scale
    blob = torch.exp(
        -((ys - blob_y[:, None, None]) ** 2 + (xs - blob_x[:, None, None]) ** 2) / (2 * blob_sigma[:, None, None] ** 2)
    )
    images = images + 0.35 * blob[:, None]

    # The signal: stripes in the region whose orientation is the class. Class 1 varies
    # along x (vertical stripes), class 0 along y (horizontal stripes).
    normal = torch.where(labels == 1, 0.0, 0.5 * math.pi) + _uniform(generator, -_STRIPE_TILT, _STRIPE_TILT, n)
    signal = _stripes(
        normal,
        _uniform(generator, *_STRIPE_PERIOD, n) * scale,
        _uniform(generator, 0, 2 * math.pi, n),
        ys,
        xs,
    )
    amplitude = _uniform(generator, *_STRIPE_AMPLITUDE, n)[:, None, None]
    images = images + (amplitude * region * signal)[:, None] * _random_colours(generator, n)

    images = images + _PIXEL_NOISE * torch.randn(n, 3, side, side, generator=generator)
    return StripeData(images.clamp(0.0, 1.0).contiguous(), labels, region)


# --------------------------------------------------------------------------- model and training


def build_model(num_classes: int = 2) -> nn.Module:
    """A small CNN: three conv/BN/ReLU blocks (two with stride 2), global average pooling, linear.

    Striding early keeps the model cheap: SaS forwards it ~950 times per image.
    """

    def block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(block(3, 16, 2), block(16, 32, 2), block(32, 32, 1)),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(32, num_classes),
        )
    )


class StripeClassifier(L.LightningModule):
    """LightningModule around :func:`build_model`: cross-entropy, AdamW with a one-cycle schedule.

    Args:
        learning_rate: Peak learning rate of the one-cycle schedule.
    """

    def __init__(self, learning_rate: float = 3e-3) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.net = build_model()

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, 2]``."""
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on one batch."""
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self) -> dict:
        """AdamW with a one-cycle schedule over all steps (converges in a few epochs)."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.learning_rate, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's start-up banner, tips and CPU-only hints while the Trainer runs."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # In-memory tensors need no loader workers; the hint would only be noise here.
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            # Emitted by Lightning's own pytree helper with newer torch; nothing to act on here.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def train(data: StripeData, epochs: int = 3, seed: int = 0, batch_size: int = 32) -> StripeClassifier:
    """Train a :class:`StripeClassifier` on ``data`` with a ``lightning.Trainer`` on the CPU.

    Args:
        data: Training set from :func:`make_data`.
        epochs: Passes over the training set.
        seed: Seeds the model's initialisation and the shuffling.
        batch_size: Images per optimisation step.

    Returns:
        The trained model, in eval mode.
    """
    # The global torch RNG drives the weight initialisation; the shuffling gets its own
    # generator, so the order of batches does not depend on what ran before.
    torch.manual_seed(seed)
    model = StripeClassifier()
    loader = DataLoader(
        TensorDataset(data.images, data.labels),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    with _quiet_lightning():
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, train_dataloaders=loader)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data: StripeData, batch_size: int = 500) -> float:
    """Fraction of ``data`` that ``model`` (in eval mode) classifies correctly."""
    correct = 0
    for start in range(0, len(data.labels), batch_size):
        logits = model(data.images[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == data.labels[start : start + batch_size]).sum())
    return correct / len(data.labels)


# --------------------------------------------------------------------------- explanation


def explain(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    region: Tensor,
    sas_iterations: int | None = None,
) -> dict[str, MethodResult]:
    """Explain ``targets`` on ``images`` with Grad-CAM and SaS and score the maps against ``region``.

    Args:
        model: The classifier (any mode; the methods leave it as they found it).
        images: ``[B, 3, H, W]`` model inputs.
        targets: ``[B]`` classes to explain.
        region: ``[H, W]`` bool mask of the region that decides the class.
        sas_iterations: SaS optimisation steps; ``None`` keeps SaS's default (95). Every
            other SaS setting stays at its default.

    Returns:
        ``{"Grad-CAM": ..., "SaS": ...}``, each with the maps, the seconds the method took
        and the per-image ``roi_share`` / ``roi_mass``.
    """
    sas = SaS() if sas_iterations is None else SaS(iterations=sas_iterations)
    methods = {"Grad-CAM": GradCAM(), "SaS": sas}
    regions = region.to(images.device).expand(images.shape[0], -1, -1)
    results = {}
    for name, method in methods.items():
        started = time.perf_counter()
        maps = method.attribute(model, images, targets)
        seconds = time.perf_counter() - started
        results[name] = MethodResult(
            maps=maps, seconds=seconds, roi_share=roi_share(maps, regions), roi_mass=roi_mass(maps, regions)
        )
    return results


def pick_probes(labels: Tensor, count: int = 8) -> Tensor:
    """Indices of ``count`` images, half of each class where possible, in data-set order."""
    half = (count + 1) // 2
    balanced = torch.cat([torch.nonzero(labels == label).flatten()[:half] for label in (0, 1)])
    # Top up from the rest when one class has fewer than half the images.
    rest = torch.ones_like(labels, dtype=torch.bool)
    rest[balanced] = False
    chosen = torch.cat([balanced, torch.nonzero(rest).flatten()])[:count]
    return chosen.sort().values


# --------------------------------------------------------------------------- figure


def outline_region(pictures: Tensor, region: Tensor) -> Tensor:
    """Draw a dashed white outline one pixel outside ``region`` onto ``pictures``.

    The outline lies on the ring of pixels that touch the region from outside, so every
    pixel of the region itself (and its heat) stays visible.

    Args:
        pictures: ``[B, 3, H, W]`` RGB in [0, 1] (images or overlays).
        region: ``[H, W]`` bool mask.

    Returns:
        A copy of ``pictures`` with the outline drawn in white.
    """
    inside = region.to(device=pictures.device, dtype=torch.float32)[None, None]
    grown = F.max_pool2d(inside, kernel_size=3, stride=1, padding=1)[0, 0] > 0
    ys, xs = torch.meshgrid(
        torch.arange(region.shape[0], device=pictures.device),
        torch.arange(region.shape[1], device=pictures.device),
        indexing="ij",
    )
    # Two pixels on, two off along the ring: dashed, so it reads as an annotation.
    dashes = ((ys + xs) // 2) % 2 == 0
    ring = grown & ~region.to(pictures.device) & dashes
    return torch.where(ring, torch.ones_like(pictures), pictures)


def render_figure(
    images: Tensor,
    results: dict[str, MethodResult],
    region: Tensor,
    row_labels: Sequence[str],
    title: str,
) -> np.ndarray:
    """Draw one row per image: the image, then one heatmap overlay per method.

    Drawn by the package's :func:`lightning_sas.report.render.comparison_grid` (so the layout,
    and what it guarantees, are the package's own). The known region is outlined (dashed)
    on every panel, and each row's label ends with every method's ``roi_share`` for that
    image, in column order.

    Args:
        images: ``[B, 3, H, W]`` images in [0, 1].
        results: Method name -> result from :func:`explain` (column order).
        region: ``[H, W]`` bool mask of the known region.
        row_labels: One label per image (shown above its row).
        title: One line of text at the top of the figure (about 75 characters fit).

    Returns:
        RGB uint8 array ``[H', W', 3]``; its height grows linearly with ``B``.
    """
    # The images are already in [0, 1]: mean 0 and std 1 only clip, they do not rescale.
    display = to_display(images, mean=[0.0], std=[1.0])
    overlays = {
        name: outline_region(overlay(display, result.maps, cmap="jet", alpha=0.5), region)
        for name, result in results.items()
    }
    labels = []
    for row, label in enumerate(row_labels):
        shares = "  ".join(f"{name} {float(result.roi_share[row]):.2f}" for name, result in results.items())
        labels.append(f"{label}  share: {shares}")
    return comparison_grid(outline_region(display, region), overlays, labels, title=title)


# --------------------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/quickstart.png"),
        help="PNG to write, relative to the current directory (default: outputs/quickstart.png).",
    )
    parser.add_argument("--epochs", type=int, default=3, help="Training epochs (default: 3).")
    parser.add_argument("--seed", type=int, default=0, help="Seed for data, model and shuffling.")
    parser.add_argument(
        "--sas-iterations",
        type=int,
        default=SaS().iterations,
        help=f"SaS optimisation steps (default: SaS's own, {SaS().iterations}).",
    )
    parser.add_argument("--train-size", type=int, default=2000, help="Training images (default: 2000).")
    parser.add_argument("--val-size", type=int, default=500, help="Validation images (default: 500).")
    parser.add_argument("--probes", type=int, default=8, help="Validation images to explain (default: 8).")
    args = parser.parse_args(argv)
    for name in ("epochs", "sas_iterations", "train_size", "val_size", "probes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.probes > args.val_size:
        parser.error(f"--probes ({args.probes}) must not exceed --val-size ({args.val_size})")
    return args


def main(argv: Sequence[str] | None = None) -> QuickstartResult:
    """Train, explain, print the scores and write the figure.

    Args:
        argv: Command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The measured accuracy, chance level, per-method results and timings.
    """
    started = time.perf_counter()
    args = _parse_args(argv)
    # Different seeds for the two splits: validation images are never training images.
    train_data = make_data(args.train_size, seed=2 * args.seed)
    val_data = make_data(args.val_size, seed=2 * args.seed + 1)

    train_started = time.perf_counter()
    model = train(train_data, epochs=args.epochs, seed=args.seed)
    train_seconds = time.perf_counter() - train_started
    val_accuracy = accuracy(model, val_data)

    probe_indices = pick_probes(val_data.labels, args.probes)
    images, labels = val_data.images[probe_indices], val_data.labels[probe_indices]
    with torch.no_grad():
        probabilities = model(images).softmax(dim=1)
    predictions = probabilities.argmax(dim=1)
    # Explain what the model decided (the same as the label when it is right).
    results = explain(model, images, predictions, val_data.region, sas_iterations=args.sas_iterations)
    chance = float(val_data.region.float().mean())

    row_labels = [
        f"val #{int(index)}  true: {CLASS_NAMES[int(label)]}  pred: {CLASS_NAMES[int(prediction)]} "
        f"({float(probabilities[row, prediction]):.2f})"
        for row, (index, label, prediction) in enumerate(zip(probe_indices, labels, predictions, strict=True))
    ]
    title = f"Validation accuracy {val_accuracy:.1%}  ·  dashed box: class region  ·  red: important"
    picture = render_figure(images, results, val_data.region, row_labels, title)
    save_png(picture, args.out)
    total_seconds = time.perf_counter() - started

    print(f"trained {args.epochs} epochs on {args.train_size} images in {train_seconds:.1f} s")
    print(f"validation accuracy: {val_accuracy:.1%} ({args.val_size} images)")
    print(
        f"known region: {int(val_data.region.sum())} of {val_data.region.numel()} pixels, "
        f"chance level {chance:.3f}; means over {len(labels)} validation images:"
    )
    print(f"  {'method':<9} {'seconds':>8} {'roi_share':>10} {'roi_mass':>9}")
    for name, result in results.items():
        print(
            f"  {name:<9} {result.seconds:>8.2f} {float(result.roi_share.mean()):>10.3f} "
            f"{float(result.roi_mass.mean()):>9.3f}"
        )
    print(f"  {'chance':<9} {'':>8} {chance:>10.3f} {chance:>9.3f}")
    print(f"wrote {args.out} ({total_seconds:.1f} s in all)")
    return QuickstartResult(
        val_accuracy=val_accuracy,
        chance=chance,
        methods=results,
        train_seconds=train_seconds,
        total_seconds=total_seconds,
        out=args.out,
    )


if __name__ == "__main__":
    main()
