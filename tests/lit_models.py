"""LightningModules and data for the callback tests."""

from __future__ import annotations

import lightning as L
import torch
from models import SmallCNN
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset


class LitClassifier(L.LightningModule):
    """SmallCNN (BatchNorm, Dropout) with AdamW and a StepLR schedule."""

    def __init__(self, num_classes: int = 2, channels: int = 8, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SmallCNN(num_classes=num_classes, channels=channels)
        self.training_steps = 0

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch, batch_index: int) -> Tensor:
        self.training_steps += 1
        images, labels = batch[0], batch[1]
        return torch.nn.functional.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_index: int) -> None:
        images, labels = batch[0], batch[1]
        accuracy = (self(images).argmax(dim=1) == labels).float().mean()
        self.log("val_acc", accuracy)

    def test_step(self, batch, batch_index: int) -> None:
        self.validation_step(batch, batch_index)

    def predict_step(self, batch, batch_index: int) -> Tensor:
        return self(batch[0])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)]


def corner_dataset(count: int = 48, size: int = 16, seed: int = 0, channels: int = 3) -> TensorDataset:
    """Class 1 = a bright top-left square; the ROI marks that square. (image, label, roi) items."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, channels, size, size, generator=generator) * 0.5
    labels = torch.arange(count) % 2
    roi = torch.zeros(count, size, size)
    roi[:, : size // 2, : size // 2] = 1
    images[labels == 1, :, : size // 2, : size // 2] += 1.5
    return TensorDataset(images, labels, roi)


def loaders(dataset: Dataset, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader (consumes the global RNG) and a fixed validation loader."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True), DataLoader(dataset, batch_size=batch_size)
