"""The model and probes of ``nightly_scale.py``: a small CNN classifier and striped probe images with masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import lightning
import numpy as np
import torch
from torch import nn

IMAGE_SIZE = 64


class ScaleClassifier(lightning.LightningModule):
    """Four conv blocks and a linear head (about 0.1 M parameters): a few ms per 64 px forward on a CPU core."""

    def __init__(self, num_classes: int = 2, width: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        channels = 3
        for _ in range(4):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


def write_probes(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` random RGB images with a bright square (its mask in ``masks/``), as PNG files."""
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    generator = np.random.default_rng(seed)
    for number in range(count):
        pixels = (generator.random((IMAGE_SIZE, IMAGE_SIZE, 3)) * 255).astype(np.uint8)
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        top, left = generator.integers(0, IMAGE_SIZE - 16, size=2)
        pixels[top : top + 16, left : left + 16] = 255
        mask[top : top + 16, left : left + 16] = 255
        cv2.imwrite(str(images / f"probe_{number:03d}.png"), pixels)
        cv2.imwrite(str(masks / f"probe_{number:03d}.png"), mask)
