"""LightningModules and data for the callback tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from models import SmallCNN
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset


def images_and_labels(batch) -> tuple[Tensor, Tensor]:
    """The images and labels of a tuple batch or of a mapping batch (``"image"``, ``"label"``)."""
    if isinstance(batch, dict):
        return batch["image"], batch["label"]
    return batch[0], batch[1]


class ClassifierSteps:
    """SmallCNN (BatchNorm, Dropout) with AdamW and a StepLR schedule: the steps, for either namespace."""

    def __init__(self, num_classes: int = 2, channels: int = 8, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SmallCNN(num_classes=num_classes, channels=channels)
        self.training_steps = 0

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch, batch_index: int) -> Tensor:
        self.training_steps += 1
        images, labels = images_and_labels(batch)
        return torch.nn.functional.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_index: int) -> None:
        images, labels = images_and_labels(batch)
        accuracy = (self(images).argmax(dim=1) == labels).float().mean()
        self.log("val_acc", accuracy)

    def test_step(self, batch, batch_index: int) -> None:
        self.validation_step(batch, batch_index)

    def predict_step(self, batch, batch_index: int) -> Tensor:
        return self(images_and_labels(batch)[0])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)]


class LitClassifier(ClassifierSteps, L.LightningModule):
    """The test classifier as a ``lightning.pytorch`` module."""


def classic_classifier_class() -> type:
    """The same classifier as a ``pytorch_lightning.LightningModule`` (the classic namespace)."""
    import pytorch_lightning

    return type("ClassicLitClassifier", (ClassifierSteps, pytorch_lightning.LightningModule), {})


#: Where the test datasets' (image, label, roi) items keep the ROI mask: a third element is
#: read as the artifact ROI only when told.
ROI_THIRD = {"mask": 2}


class MaskedDataset(TensorDataset):
    """``TensorDataset(images, labels, masks)`` whose items are mappings ``{"image", "label", "mask"}``:
    the form in which the audit reads an ROI mask without being told where it is."""

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image, label, mask = super().__getitem__(index)
        return {"image": image, "label": label, "mask": mask}


def corner_dataset(count: int = 48, size: int = 16, seed: int = 0, channels: int = 3) -> MaskedDataset:
    """Class 1 = a bright top-left square; the ROI marks that square. ``{"image", "label", "mask"}`` items."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, channels, size, size, generator=generator) * 0.5
    labels = torch.arange(count) % 2
    roi = torch.zeros(count, size, size)
    roi[:, : size // 2, : size // 2] = 1
    images[labels == 1, :, : size // 2, : size // 2] += 1.5
    return MaskedDataset(images, labels, roi)


def loaders(dataset: Dataset, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader (consumes the global RNG) and a fixed validation loader."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True), DataLoader(dataset, batch_size=batch_size)


# ----------------------------------------------------------------------------- a Trainer for the tests


def cheap_methods() -> list:
    """SaS at a few iterations and Grad-CAM: the audit's default methods, quick."""
    from lightning_sas import GradCAM, SaS

    return [SaS(iterations=3, num_masks=4), GradCAM()]


def make_trainer(tmp_path: Path, callbacks: list, max_epochs: int = 2, logger=None, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        logger=TensorBoardLogger(tmp_path, name="tb") if logger is None else logger,
        callbacks=callbacks,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def read_events(log_dir: str | Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def fit(
    tmp_path: Path, callback: Callback | None, max_epochs: int = 2, **kwargs
) -> tuple[L.Trainer, LitClassifier]:
    L.seed_everything(0, verbose=False)
    model = LitClassifier()
    train, val = loaders(corner_dataset())
    trainer = make_trainer(tmp_path, [callback] if callback else [], max_epochs=max_epochs, **kwargs)
    trainer.fit(model, train, val)
    return trainer, model


@contextmanager
def single_thread() -> Iterator[None]:
    """Tiny models on a shared machine run fastest (and reproducibly) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
