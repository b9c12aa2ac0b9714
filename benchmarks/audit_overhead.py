"""What does auditing cost a training run? Epoch time with and without ``SASAuditCallback``.

Trains the same small ResNet (torchvision ``resnet18``, 2 classes, random init) on the same
procedural 64×64 data twice with a real ``lightning.Trainer`` and a ``TensorBoardLogger``
writing into a temporary directory: once without callbacks, once with
``SASAuditCallback(probe=..., every_n_epochs=..., methods=...)``. Prints the per-epoch times,
the ratio (audited / plain) and the audit's added seconds per epoch, as a Markdown row and a
JSON line. CPU by default. Run from the repository root::

    python benchmarks/audit_overhead.py --epochs 3 --header
    python benchmarks/audit_overhead.py --device cuda --epochs 3 --train-size 4096 --sas-iterations 100

Exit status 2 when ``lightning_sas.SASAuditCallback`` cannot be imported.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

if __package__ in (None, ""):  # run as a script: make `lightning_sas` importable from a checkout too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXIT_NO_CALLBACK = 2


def procedural_dataset(count: int, image_size: int, seed: int) -> TensorDataset:
    """Smooth noise backgrounds; class 1 carries a bright horizontal bar, class 0 a vertical one.

    Args:
        count: Number of images.
        image_size: Square side in pixels.
        seed: Seed of a local generator (global RNG untouched).

    Returns:
        ``TensorDataset(images [N, 3, S, S] float32, labels [N] int64)``.
    """
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, 8, 8, generator=generator)
    images = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False) * 0.5
    labels = torch.randint(0, 2, (count,), generator=generator)
    thickness = max(2, image_size // 16)
    length = image_size // 2
    starts = torch.randint(0, image_size - length, (count, 2), generator=generator)
    for index in range(count):
        row, column = (int(value) for value in starts[index])
        if labels[index] == 1:
            images[index, :, row : row + thickness, column : column + length] += 2.0
        else:
            images[index, :, row : row + length, column : column + thickness] += 2.0
    return TensorDataset(images, labels)


class ResNetClassifier(L.LightningModule):
    """torchvision ``resnet18`` (random init) trained with cross-entropy and SGD."""

    def __init__(self, num_classes: int = 2, lr: float = 0.01) -> None:
        super().__init__()
        self.model = torchvision.models.resnet18(num_classes=num_classes)
        self.lr = lr

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val_loss", F.cross_entropy(logits, labels))
        self.log("val_acc", (logits.argmax(dim=1) == labels).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class EpochTimer(L.Callback):
    """Wall-clock boundaries of each epoch: train batches, validation and every epoch-end hook.

    An epoch runs from its ``on_train_epoch_start`` to the next epoch's start (the last one to
    ``on_train_end``), so whatever other callbacks do at the end of an epoch, in any hook,
    is inside it. CUDA work is synchronised at each boundary.
    """

    def __init__(self) -> None:
        self.boundaries: list[float] = []

    def _mark(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        self.boundaries.append(time.perf_counter())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(trainer)

    @property
    def epoch_seconds(self) -> list[float]:
        """Seconds of each completed epoch."""
        return [end - start for start, end in zip(self.boundaries, self.boundaries[1:], strict=False)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs per run; the first counts as warm-up.")
    parser.add_argument("--train-size", type=int, default=512, help="Training images per epoch.")
    parser.add_argument("--val-size", type=int, default=64, help="Validation images (the probes come from these).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--probe", type=int, default=16, help="SASAuditCallback(probe=...).")
    parser.add_argument("--every-n-epochs", type=int, default=1, help="SASAuditCallback(every_n_epochs=...).")
    parser.add_argument("--methods", default="sas,gradcam", help="Comma-separated SASAuditCallback(methods=...).")
    parser.add_argument(
        "--sas-iterations",
        type=int,
        default=None,
        help="Pass SaS(iterations=N) instead of the name 'sas' (default: the callback's own SaS defaults).",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--header", action="store_true", help="Print the Markdown table header first.")
    parser.add_argument("--json", type=Path, default=None, help="Append the JSON line to this file.")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def import_callback() -> type[L.Callback]:
    """``lightning_sas.SASAuditCallback``, or exit with status 2 and a clear message."""
    try:
        from lightning_sas import SASAuditCallback
    except ImportError as error:
        print(
            f"audit_overhead: cannot import SASAuditCallback from lightning_sas ({error}). "
            "The callback is needed for the audited run; install a lightning_sas that provides it.",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_NO_CALLBACK) from error
    return SASAuditCallback


def train(args: argparse.Namespace, audit_callback: L.Callback | None, log_dir: str) -> tuple[list[float], float]:
    """One training run; returns ``(seconds of each epoch, seconds of the whole fit)``."""
    L.seed_everything(args.seed, verbose=False)
    train_loader = DataLoader(
        procedural_dataset(args.train_size, args.image_size, args.seed), batch_size=args.batch_size, shuffle=True
    )
    val_data = procedural_dataset(args.val_size, args.image_size, args.seed + 1)
    val_loader = DataLoader(val_data, batch_size=args.batch_size)
    timer = EpochTimer()
    callbacks: list[L.Callback] = [timer] + ([audit_callback] if audit_callback is not None else [])
    trainer = L.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=TensorBoardLogger(log_dir, name="audited" if audit_callback is not None else "plain"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    begin = time.perf_counter()
    trainer.fit(ResNetClassifier(), train_dataloaders=train_loader, val_dataloaders=val_loader)
    return timer.epoch_seconds, time.perf_counter() - begin


def steady(seconds: list[float]) -> float:
    """Median epoch time, leaving out the first epoch (warm-up) when there are more."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train without and with the audit callback, print and return the comparison.

    Args:
        argv: Command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The JSON record (also printed, and appended to ``--json``).

    Raises:
        SystemExit: With status 2 if ``SASAuditCallback`` cannot be imported.
    """
    args = parse_args(argv)
    callback_class = import_callback()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    methods: list[Any] = [name.strip() for name in args.methods.split(",") if name.strip()]
    if args.sas_iterations is not None:
        from lightning_sas.methods import SaS

        methods = [SaS(iterations=args.sas_iterations) if name == "sas" else name for name in methods]
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")

    with tempfile.TemporaryDirectory(prefix="audit_overhead_") as log_dir:
        plain_epochs, plain_fit = train(args, None, log_dir)
        options: dict[str, Any] = {}
        if "on_error" in inspect.signature(callback_class).parameters:
            options["on_error"] = "raise"  # a skipped (failed) audit would look like a free one
        audit = callback_class(
            probe=args.probe, every_n_epochs=args.every_n_epochs, methods=tuple(methods), seed=0, **options
        )
        audited_epochs, audited_fit = train(args, audit, log_dir)

    plain, audited = steady(plain_epochs), steady(audited_epochs)
    record: dict[str, Any] = {
        "device": args.device,
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "epochs": args.epochs,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "probe": args.probe,
        "every_n_epochs": args.every_n_epochs,
        "methods": [getattr(method, "name", method) for method in methods],
        "sas_iterations": args.sas_iterations,
        "audits_run": len(getattr(audit, "audited_epochs", [])),
        "plain_epoch_seconds": plain_epochs,
        "audited_epoch_seconds": audited_epochs,
        "plain_seconds_per_epoch": plain,
        "audited_seconds_per_epoch": audited,
        "epoch_time_ratio": audited / plain,
        "audit_seconds_per_epoch": audited - plain,
        "plain_fit_seconds": plain_fit,
        "audited_fit_seconds": audited_fit,
        "fit_time_ratio": audited_fit / plain_fit,
        "torch": torch.__version__,
        "lightning": L.__version__,
    }
    if args.header:
        print("| device | train imgs | probes | methods | plain s/epoch | audited s/epoch | ratio | audit s/epoch |")
        print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.device} | {args.train_size} | {args.probe} | {'+'.join(map(str, record['methods']))} "
        f"| {plain:.2f} | {audited:.2f} | {audited / plain:.2f}× | {audited - plain:.2f} |"
    )
    line = json.dumps(record)
    print(line)
    if args.json is not None:
        with args.json.open("a") as handle:
            handle.write(line + "\n")
    return record


if __name__ == "__main__":
    main()
