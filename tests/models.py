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
        self.features = nn.Sequential(
            self.conv, nn.ReLU(), RectangleGate(size, (top + 1, bottom - 1, left + 1, right - 1))
        )
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
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(2 * channels, num_classes)
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class SingleLogit(SmallCNN):
    """A binary classifier with one logit ``z`` per image: ``[B]`` (``squeeze=True``) or ``[B, 1]``."""

    def __init__(self, squeeze: bool = False, channels: int = 8) -> None:
        super().__init__(num_classes=1, channels=channels)
        self.squeeze = squeeze

    def forward(self, images: Tensor) -> Tensor:
        z = super().forward(images)
        return z[:, 0] if self.squeeze else z


class TwoLogitsFrom(SmallCNN):
    """The two-class model ``(-scale·z, scale·z)`` with a single-logit model's weights (same layer names)."""

    def __init__(self, binary: SmallCNN, scale: float) -> None:
        super().__init__(num_classes=1, channels=binary.features[0].out_channels)
        self.load_state_dict(binary.state_dict())
        self.train(binary.training)
        self.scale = scale

    def forward(self, images: Tensor) -> Tensor:
        z = super().forward(images)
        return torch.cat([-self.scale * z, self.scale * z], dim=1)


class TupleAndDictOutputs(SmallCNN):
    """Returns ``(logits, features)``, ``{"logits": ..., "features": ...}`` or ``[features, logits]``."""

    def __init__(self, kind: str, num_classes: int = 4) -> None:
        super().__init__(num_classes=num_classes)
        self.kind = kind

    def forward(self, images: Tensor):  # type: ignore[override]
        features = self.features(images)
        logits = self.head(features)
        if self.kind == "tuple":
            return logits, features
        if self.kind == "dict":
            return {"features": features, "logits": logits}
        return [features, logits]


class RecordsDtypes(SmallCNN):
    """A SmallCNN that records the dtype of every Conv2d and Linear output it computes."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__(num_classes=num_classes)
        self.seen: list[torch.dtype] = []
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.register_forward_hook(lambda module, inputs, output: self.seen.append(output.dtype))


class NaNForBrightImages(SmallCNN):
    """NaN logits for every image whose mean exceeds ``threshold`` (its composites included).

    ``how="multiply"``: the logits are multiplied by NaN, so the gradient is NaN too.
    ``how="masked"``: the logits are replaced by NaN with ``torch.where`` (as ``masked_fill``
    or an all-masked softmax do), so the gradient of the NaN rows is zero, not NaN.
    """

    def __init__(self, how: str, threshold: float = 5.0, num_classes: int = 4) -> None:
        super().__init__(num_classes=num_classes)
        self.how = how
        self.threshold = threshold

    def forward(self, images: Tensor) -> Tensor:
        logits = super().forward(images)
        bad = images.mean(dim=(1, 2, 3)) > self.threshold
        if self.how == "multiply":
            return logits * torch.where(bad, float("nan"), 1.0)[:, None]
        return torch.where(bad[:, None], float("nan"), logits)


class CollectiveInForward(SmallCNN):
    """A forward with a collective (like SyncBatchNorm's): every rank must make the same forward calls.

    The logits are multiplied by ``all_reduce(1) / world_size``, i.e. by exactly 1 when the ranks'
    collectives pair up; without a process group (a single-process reference) or with
    ``collective=False`` there is no collective. Each forward's batch size is recorded in
    ``batch_sizes``; with ``oom_above`` a larger batch raises ``torch.OutOfMemoryError``.
    """

    def __init__(self, num_classes: int = 4, oom_above: int | None = None, collective: bool = True) -> None:
        super().__init__(num_classes=num_classes)
        self.batch_sizes: list[int] = []
        self.oom_above = oom_above
        self.collective = collective

    def forward(self, images: Tensor) -> Tensor:
        import torch.distributed as dist

        self.batch_sizes.append(images.shape[0])
        if self.oom_above is not None and images.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError(f"batch of {images.shape[0]} does not fit")
        logits = super().forward(images)
        if not (self.collective and dist.is_available() and dist.is_initialized()):
            return logits
        ones = torch.ones(1)
        dist.all_reduce(ones)
        return logits * (ones / dist.get_world_size())
