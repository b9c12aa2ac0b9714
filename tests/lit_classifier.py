"""A tiny LightningModule and a synthetic "ruler" data set for the command-line tests.

Importable as ``lit_classifier`` from a subprocess when ``tests/`` is on ``PYTHONPATH``, so the
CLI can load it with ``--model lit_classifier:LitClassifier``.
"""

from __future__ import annotations

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
