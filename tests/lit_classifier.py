"""A tiny LightningModule and a synthetic "ruler" data set for the command-line tests.

Importable as ``lit_classifier`` from a subprocess when ``tests/`` is on ``PYTHONPATH``, so the
CLI can load it with ``--model lit_classifier:LitClassifier``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Side of the synthetic images, in pixels.
IMAGE_SIZE = 16
#: The "ruler": a bright square in the top-left corner, rows/cols [0, RULER_SIDE).
RULER_SIDE = 6


class Marker:
    """A custom object; as a hyper-parameter it makes a checkpoint need full unpickling."""

    def __init__(self, note: str = "custom") -> None:
        self.note = note


class LitClassifier(lightning.LightningModule):
    """Two small convolutions, global average pooling and a linear head.

    Args:
        num_classes: Number of output classes.
        channels: Input channels.
        width: Feature channels of the convolutions.
        lr: Adam learning rate.
        extra: Any extra hyper-parameter (stored in the checkpoint; unused by the model).
    """

    def __init__(
        self, num_classes: int = 2, channels: int = 3, width: int = 8, lr: float = 0.01, extra: object = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.pool(self.features(images)).flatten(1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def ruler_images(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` noisy images in [0, 1]; class 1 (every other image) carries the ruler.

    Returns:
        ``(images [count, 3, S, S], labels [count])``.
    """
    generator = torch.Generator().manual_seed(seed)
    images = 0.4 * torch.rand(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.arange(count) % 2
    images[labels == 1, :, :RULER_SIDE, :RULER_SIDE] = 1.0
    return images, labels


def ruler_mask() -> Tensor:
    """``[S, S]`` bool: where the ruler is."""
    mask = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    mask[:RULER_SIDE, :RULER_SIDE] = True
    return mask


# ----------------------------------------------------------------------------- more model shapes
# The variants below share LitClassifier's weights (same submodules), so a LitClassifier
# checkpoint loads into each of them with --model lit_classifier:<Variant>.


class BinaryClassifier(LitClassifier):
    """A single-logit binary classifier (class 1 = ruler), trained with ``BCEWithLogitsLoss``.

    Its forward returns ``[B]`` (or ``[B, 1]`` with ``keep_dim=True``): the CLI must read it
    without ``--output``.
    """

    def __init__(self, channels: int = 3, width: int = 8, lr: float = 0.02, keep_dim: bool = False) -> None:
        super().__init__(num_classes=1, channels=channels, width=width, lr=lr)
        self.keep_dim = keep_dim

    def forward(self, images: Tensor) -> Tensor:
        logit = self.head(self.pool(self.features(images)).flatten(1))
        return logit if self.keep_dim else logit[:, 0]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        images, labels = batch
        return F.binary_cross_entropy_with_logits(self(images).reshape(-1), labels.float())


class DictClassifier(LitClassifier):
    """Returns ``{"features": [B, W, S, S], "logits": [B, C]}``: needs ``--output logits``."""

    def forward(self, images: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        features = self.features(images)
        return {"features": features, "logits": self.head(self.pool(features).flatten(1))}


class TupleClassifier(LitClassifier):
    """Returns ``(features [B, W, S, S], logits [B, C])``: needs ``--output 1``."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        features = self.features(images)
        return features, self.head(self.pool(features).flatten(1))


def pick_logits(output: object) -> Tensor:
    """An ``--output module:function`` for :class:`DictClassifier` and :class:`TupleClassifier`."""
    return output["logits"] if isinstance(output, dict) else output[1]  # type: ignore[index]


def failing_output(output: object) -> Tensor:
    """An ``--output`` function with a bug: it raises."""
    raise KeyError("no logits here (a bug in the --output function)")


class FeatureMapModel(LitClassifier):
    """Returns its feature maps ``[B, W, S, S]`` instead of logits: not a classifier output."""

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)


class ForwardFails(LitClassifier):
    """A forward that raises, as a model with a bug does."""

    def forward(self, images: Tensor) -> Tensor:
        raise RuntimeError("forward exploded on purpose")


#: :class:`NaNClassifier` outputs NaN for images whose mean is above this.
NAN_ABOVE = 0.45


class NaNClassifier(LitClassifier):
    """LitClassifier whose logits are NaN for bright images (mean above :data:`NAN_ABOVE`)."""

    def forward(self, images: Tensor) -> Tensor:
        logits = super().forward(images)
        bright = images.flatten(1).mean(dim=1) > NAN_ABOVE
        return torch.where(bright[:, None], torch.full_like(logits, float("nan")), logits)


class CornerBlind(LitClassifier):
    """The ruler model blind to its input (zeroed first), the corner where the ruler goes included:
    pasting the ruler cannot change a prediction, and every probe gets the same output whatever
    the weights. (Zeroing only the corner left the outputs equal only for some initialisations:
    a trained network that lost the ruler still tells its inputs apart a little.)"""

    def forward(self, images: Tensor) -> Tensor:
        return super().forward(images * 0.0)


class WeightBlind(LitClassifier):
    """Grad-CAM's maps of this model do not depend on its weights.

    Its logits are ``(brightness, -brightness)`` of a parameter-free layer (so every probe is
    predicted as class 0 for images in [0, 1]); the inherited parameters are never used.
    Grad-CAM explains that layer (the only spatial one), so its map is the image's brightness
    whatever the weights: the sanity check must flag it.
    """

    def __init__(
        self, num_classes: int = 2, channels: int = 3, width: int = 8, lr: float = 0.01, extra: object = None
    ) -> None:
        super().__init__(num_classes=num_classes, channels=channels, width=width, lr=lr, extra=extra)
        self.brightness = nn.ReLU()

    def forward(self, images: Tensor) -> Tensor:
        score = self.brightness(images).mean(dim=(1, 2, 3))
        return torch.stack([score, -score], dim=1)


# ----------------------------------------------------------------------------- data sets for export-probes

#: Normalisation of :class:`RulerDataset`'s images.
DATASET_MEAN = (0.5, 0.4, 0.3)
DATASET_STD = (0.25, 0.2, 0.3)


class RulerDataset(torch.utils.data.Dataset):
    """Normalised ruler images as ``(image, label, roi)`` items; the ruler images (class 1) carry its mask.

    Args:
        count: Number of items.
        seed: Seed of the images.
        grey: One channel instead of three.
    """

    def __init__(self, count: int = 10, seed: int = 3, grey: bool = False) -> None:
        images, self.labels = ruler_images(count, seed=seed)
        if grey:
            images = images.mean(dim=1, keepdim=True)
            mean, std = torch.tensor(DATASET_MEAN[:1]), torch.tensor(DATASET_STD[:1])
        else:
            mean, std = torch.tensor(DATASET_MEAN), torch.tensor(DATASET_STD)
        self.images = (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor]:
        label = int(self.labels[index])
        roi = ruler_mask() if label == 1 else torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
        return self.images[index], label, roi


def ruler_dataset() -> RulerDataset:
    """An ``--dataset`` callable for ``lightning-sas export-probes``."""
    return RulerDataset()


def not_a_dataset() -> int:
    """An ``--dataset`` callable that returns no data set."""
    return 42


def dataset_of_strings() -> list[str]:
    """An ``--dataset`` callable whose items are not images."""
    return ["not", "an", "image"]


def dataset_raises() -> RulerDataset:
    """An ``--dataset`` callable with a bug: it raises."""
    raise RuntimeError("cannot reach the data server (a bug in the --dataset callable)")


# ----------------------------------------------------------------------------- fixtures' helpers


def train_quickly(model: LitClassifier, steps: int = 60, seed: int = 0, batch: int = 32) -> LitClassifier:
    """A few Adam steps on fresh ruler images, without a Trainer (for fast test fixtures).

    Grey models (``channels=1``) get the images' channel mean.
    """
    torch.manual_seed(seed)
    optimiser = model.configure_optimizers()
    model.train()
    for step in range(steps):
        images, labels = ruler_images(batch, seed=seed * 1000 + step)
        if model.hparams.channels == 1:
            images = images.mean(dim=1, keepdim=True)
        loss = model.training_step((images, labels), step)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def save_checkpoint(model: lightning.LightningModule, path: Path | str) -> Path:
    """What ``Trainer.save_checkpoint`` stores that ``load_from_checkpoint`` needs, without a Trainer."""
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return Path(path)


def write_probes(
    folder: Path | str,
    count: int = 6,
    *,
    seed: int = 1,
    size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
    grey: bool = False,
    brighten: Sequence[int] = (),
) -> tuple[Path, Path, list[str]]:
    """Ruler probes as PNG files (``images/``) with ruler masks (``masks/``) under ``folder``.

    Args:
        folder: Where ``images/`` and ``masks/`` are created.
        count: How many probes; every other one (odd positions) has a ruler and a mask.
        seed: Seed of the images.
        size: ``(height, width)`` of the files (the ruler is scaled with the image).
        grey: Write 1-channel PNGs.
        brighten: Positions whose image is brightened by 0.5 (mean above :data:`NAN_ABOVE`).

    Returns:
        ``(images folder, masks folder, file names)``.
    """
    import cv2
    import numpy as np

    root = Path(folder)
    images_dir, masks_dir = root / "images", root / "masks"
    images_dir.mkdir(parents=True)
    masks_dir.mkdir()
    images, labels = ruler_images(count, seed=seed)
    images = F.interpolate(images, size=size, mode="nearest")
    mask = F.interpolate(ruler_mask()[None, None].float(), size=size, mode="nearest")[0, 0] > 0
    names = []
    for position, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        if position in brighten:
            image = (image + 0.5).clamp(0, 1)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        pixels = pixels.mean(axis=2).round().astype(np.uint8) if grey else np.ascontiguousarray(pixels[..., ::-1])
        name = f"probe_{position}.png"
        cv2.imwrite(str(images_dir / name), pixels)
        if label == 1:
            cv2.imwrite(str(masks_dir / name), mask.numpy().astype(np.uint8) * 255)
        names.append(name)
    return images_dir, masks_dir, names


class LargeBatchFails(LitClassifier):
    """The ruler model failing on batches of more than 8 images, as a model short of memory would:
    Grad-CAM on a few probes runs, methods that batch many perturbations (occlusion) fail."""

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[0] > 8:
            raise RuntimeError(f"a batch of {images.shape[0]} images is more than this test model takes")
        return super().forward(images)


class FailsOnRankOne(LitClassifier):
    """The ruler model whose construction fails on the second process only (a node short of memory)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        import os

        if os.environ.get("LOCAL_RANK") == "1":
            raise MemoryError("no memory left on this process (rank 1, on purpose)")
        super().__init__(*args, **kwargs)
