"""Models and data sets shaped like real projects' for the command line (``tests/`` on the path).

* :class:`NeedsArgs`: a constructor argument that ``save_hyperparameters`` leaves out, as
  projects do for the arguments they pass from a LightningCLI config or a training script.
* Data sets whose items are mappings with other keys than the defaults, for ``export-probes``.
"""

from __future__ import annotations

import lightning
from lit_classifier import RulerDataset
from torch import Tensor, nn


class NeedsArgs(lightning.LightningModule):
    """A classifier whose ``num_classes`` is not saved in its checkpoint; ``temperature`` divides the logits.

    Args:
        num_classes: Output classes (not saved: it must be given when loading).
        temperature: The logits are divided by it.
        width: Feature channels.
    """

    def __init__(self, num_classes: int, temperature: float = 1.0, width: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["num_classes"])
        self.temperature = temperature
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.pool(self.features(images)).flatten(1)) / self.temperature


def renamed_items() -> list[dict[str, object]]:
    """Ruler items as ``{"pixels", "y", "ruler"}`` mappings: every key needs an option."""
    dataset = RulerDataset(count=6, seed=3)
    return [{"pixels": image, "y": label, "ruler": roi} for image, label, roi in (dataset[i] for i in range(6))]


def roi_items() -> list[dict[str, object]]:
    """Ruler items as ``{"image", "label", "roi"}`` mappings: ``"roi"`` is the mask's other default key."""
    dataset = RulerDataset(count=6, seed=3)
    return [{"image": image, "label": label, "roi": roi} for image, label, roi in (dataset[i] for i in range(6))]
