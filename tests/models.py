"""Small hand-built models shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RectangleGate(nn.Module):
    """Zeroes a feature map outside a fixed rectangle (rows top:bottom, cols left:right)."""

    def __init__(self, size: int, box: tuple[int, int, int, int]) -> None:
        super().__init__()
        top, bottom, left, right = box
        gate = torch.zeros(1, 1, size, size)
        gate[..., top:bottom, left:right] = 1.0
        self.register_buffer("gate", gate)

    def forward(self, features: Tensor) -> Tensor:
        return features * self.gate


class RectangleModel(nn.Module):
    """A classifier whose logits provably depend only on the pixels inside ``box``.

    Features: |Laplacian| of each channel (a 3×3 conv with +/- kernels and a ReLU), gated to
    the rectangle shrunk by one pixel, so every input pixel the score can see lies in ``box``.
    Logit of class 1 = ``logit_scale`` × (mean gated texture energy - offset); class 0 = its
    negative. Blurring the image removes texture, so inserting any pixel of the box raises
    the class-1 score and deleting it lowers it.
    """

    def __init__(self, size: int, box: tuple[int, int, int, int], logit_scale: float = 1.0) -> None:
        super().__init__()
        laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            for channel in range(3):
                self.conv.weight[2 * channel, channel] = laplacian
                self.conv.weight[2 * channel + 1, channel] = -laplacian
        top, bottom, left, right = box
        self.features = nn.Sequential(self.conv, nn.ReLU(), RectangleGate(size, (top + 1, bottom - 1, left + 1, right - 1)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.logit_scale = logit_scale
        self.offset = 0.05

    def forward(self, images: Tensor) -> Tensor:
        energy = self.pool(self.features(images)).flatten(1).sum(dim=1, keepdim=True)
        malignant = self.logit_scale * (energy - self.offset)
        return torch.cat([-malignant, malignant], dim=1)


def box_mask(size: int, box: tuple[int, int, int, int]) -> Tensor:
    top, bottom, left, right = box
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


class SmallCNN(nn.Module):
    """Conv-BN-ReLU ×3, dropout, linear: small but with every layer type that has state."""

    def __init__(self, num_classes: int = 3, channels: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(2 * channels, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))
