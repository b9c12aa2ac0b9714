"""A project written against the classic ``pytorch_lightning`` namespace, for ``lightning-sas audit``.

Importable as ``classic_project`` (``tests/`` on the path); importing it imports
``pytorch_lightning``, so only the tests of that namespace import it.
"""

from __future__ import annotations

import pytorch_lightning
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClassicClassifier(pytorch_lightning.LightningModule):
    """Two convolutions, global average pooling and a linear head, as ``lit_classifier.LitClassifier``."""

    def __init__(self, num_classes: int = 2, width: int = 8, lr: float = 0.02) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
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
