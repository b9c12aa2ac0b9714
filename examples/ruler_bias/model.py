"""A small skin-lesion classifier (LightningModule) for the ruler-bias demo.

Importable as ``model:LesionClassifier`` with ``examples/ruler_bias`` on ``PYTHONPATH`` (that is
how ``lightning-sas audit --model`` finds it for nightly audits of the demo's checkpoints).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class LesionClassifier(L.LightningModule):
    """Conv-BN-ReLU stages with pooling, global average pooling and a linear head.

    Validation dataloader 0 is the validation split (``val_acc``); dataloader 1, if present,
    is the counterfactual split with the ruler bias swapped (``counterfactual_acc``).

    Args:
        num_classes: Number of classes.
        width: Channels of the first stage (doubled at each of the three stages).
        lr: AdamW learning rate (cosine-annealed over ``max_epochs``).
        weight_decay: AdamW weight decay.
    """

    def __init__(self, num_classes: int = 2, width: int = 16, lr: float = 3e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            conv_block(3, width),
            nn.MaxPool2d(2),
            conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            conv_block(2 * width, 4 * width),
            conv_block(4 * width, 4 * width),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * width, num_classes)
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    def training_step(self, batch: tuple[Tensor, ...], batch_index: int) -> Tensor:
        images, labels = batch[0], batch[1]
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_index: int, dataloader_idx: int = 0) -> None:
        images, labels = batch[0], batch[1]
        accuracy = (self(images).argmax(dim=1) == labels).float().mean()
        name = "val_acc" if dataloader_idx == 0 else "counterfactual_acc"
        self.log(name, accuracy, add_dataloader_idx=False, prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        epochs = max(1, self.trainer.max_epochs or 1)
        return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)]
