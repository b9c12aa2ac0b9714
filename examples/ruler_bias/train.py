"""The ruler-bias story, end to end: a lesion classifier learns the ruler, and the audit shows it.

Trains a small CNN on procedural dermoscopy-like images in which rulers appear mostly next to
malignant lesions, with :class:`lightning_sas.SASAuditCallback` auditing a fixed probe set
every epoch. Prints one row per audited epoch: validation accuracy (same bias as training),
counterfactual accuracy (bias swapped: rulers on benign lesions), SaS and Grad-CAM
``roi_share`` on the ruler and its lift over chance, the intervention's flip rate (rulers cut
from training images pasted onto benign probes) and whether the shortcut alert fired.
``--clean`` is the control run: rulers equally likely in both classes.

Run from the repository root::

    python examples/ruler_bias/train.py            # biased run (default)
    python examples/ruler_bias/train.py --clean    # control run
    tensorboard --logdir outputs/ruler_bias
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import CLASS_NAMES, MEAN, STD, make_splits, ruler_artifacts
from model import LesionClassifier

from lightning_sas import GradCAM, SaS, SASAuditCallback


class AuditTable(Callback):
    """Prints a row per audited epoch from the audit's history and the validation metrics."""

    def __init__(self, audit: SASAuditCallback) -> None:
        self.audit = audit
        self.rows: list[dict[str, float | int | str]] = []
        self._printed = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print_new_rows(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print_new_rows(trainer)

    def _print_new_rows(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        if not self.rows:
            if self.audit.cost is not None:
                print(f"each audit: {self.audit.cost.describe()}", flush=True)
            print(
                f"{'epoch':>5} {'val_acc':>8} {'cf_acc':>8} {'sas_share':>10} {'sas_lift':>9} "
                f"{'gcam_share':>10} {'gcam_lift':>9} {'flip':>6}  alert",
                flush=True,
            )
        for entry in self.audit.history[self._printed :]:
            epoch = int(entry["epoch"])
            crossed = [
                item["method"] or "intervention"
                for alert in self.audit.alerts
                if alert["epoch"] == epoch
                for item in alert["crossed"]
            ]
            row = {
                "epoch": epoch,
                "val_acc": float(trainer.callback_metrics.get("val_acc", math.nan)),
                "counterfactual_acc": float(trainer.callback_metrics.get("counterfactual_acc", math.nan)),
                "sas_roi_share": entry.get("audit/sas/roi_share", math.nan),
                "sas_roi_lift": entry.get("audit/sas/roi_lift", math.nan),
                "gradcam_roi_share": entry.get("audit/gradcam/roi_share", math.nan),
                "gradcam_roi_lift": entry.get("audit/gradcam/roi_lift", math.nan),
                "flip_rate": entry.get("audit/intervention/flip_rate", math.nan),
                "alert": ",".join(crossed),
            }
            self.rows.append(row)
            print(
                f"{epoch:>5} {row['val_acc']:>8.3f} {row['counterfactual_acc']:>8.3f} "
                f"{row['sas_roi_share']:>10.3f} {row['sas_roi_lift']:>9.1f} "
                f"{row['gradcam_roi_share']:>10.3f} {row['gradcam_roi_lift']:>9.1f} {row['flip_rate']:>6.2f}  "
                f"{row['alert'] or '-'}",
                flush=True,
            )
        self._printed = len(self.audit.history)


def export_last_grids(log_dir: str | Path) -> list[Path]:
    """Write the last audit's ``audit/grid/<method>`` images as PNG files next to the event files.

    Read back with TensorBoard's own event reader, so the files are exactly what the dashboard shows.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    written = []
    for tag in events.Tags()["images"]:
        if tag.startswith("audit/grid/"):
            method = tag.split("/")[2]
            path = Path(log_dir) / f"last_{method}_grid.png"
            path.write_bytes(events.Images(tag)[-1].encoded_image_string)
            written.append(path)
    return written


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", action="store_true", help="control run: rulers equally likely in both classes")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=400)
    parser.add_argument("--p-ruler-malignant", type=float, default=0.9)
    parser.add_argument("--p-ruler-benign", type=float, default=0.1)
    parser.add_argument("--probes", type=int, default=8, help="probe images audited every epoch")
    parser.add_argument("--every-n-epochs", type=int, default=2)
    parser.add_argument(
        "--sanity",
        action="store_true",
        help="also run the randomisation sanity check at the first audit (costs about five audits once)",
    )
    parser.add_argument(
        "--sas-iterations",
        type=int,
        default=None,
        help="SaS iterations per audit (default: SaS's own, 95 iterations of 10 model passes per probe)",
    )
    parser.add_argument(
        "--shortcut-threshold",
        type=float,
        default=None,
        help="also alert on an absolute mean roi_share above this (default: the alert rule's lift and flip rate only)",
    )
    parser.add_argument("--width", type=int, default=16, help="channels of the CNN's first stage")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/ruler_bias"))
    parser.add_argument("--quiet", action="store_true", help="no Lightning model summary")
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> dict:
    """Train with the audit and return what happened (rows, alerts, accuracies, paths)."""
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    started = time.perf_counter()
    splits = make_splits(
        n_train=args.train_size,
        n_val=args.val_size,
        n_counterfactual=args.val_size,
        image_size=args.image_size,
        p_ruler_malignant=args.p_ruler_malignant,
        p_ruler_benign=args.p_ruler_benign,
        clean=args.clean,
        seed=args.seed,
    )
    name = "clean" if args.clean else "biased"
    audit = SASAuditCallback(
        probe=args.probes,
        every_n_epochs=args.every_n_epochs,
        methods=[SaS() if args.sas_iterations is None else SaS(iterations=args.sas_iterations), GradCAM()],
        mean=MEAN,
        std=STD,
        seed=args.seed,
        shortcut_threshold=args.shortcut_threshold,
        class_names=CLASS_NAMES,
        artifacts=ruler_artifacts(splits["train"], seed=args.seed),
        # Items are (image, label, ruler_mask): a third element is read as the artifact ROI only when told.
        item_keys={"mask": 2},
        sanity=args.sanity,
        # The demo audits often on purpose: its cost is estimated and printed below, never warned.
        cost_warning_share=math.inf,
    )
    table = AuditTable(audit)
    logger = TensorBoardLogger(args.out, name=name)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        logger=logger,
        callbacks=[audit, table, ModelCheckpoint(save_last=True, save_top_k=-1, every_n_epochs=1)],  # one per epoch
        enable_progress_bar=True,  # training and each audit show a progress bar; the table sums up each epoch
        enable_model_summary=not args.quiet,
        log_every_n_steps=10,
    )
    loader = DataLoader(splits["train"], batch_size=args.batch_size, shuffle=True)
    val_loaders = [
        DataLoader(splits["val"], batch_size=256),
        DataLoader(splits["counterfactual"], batch_size=256),
    ]
    print(f"ruler-bias demo ({name} run): {len(splits['train'])} training images of {args.image_size} px", flush=True)
    with warnings.catch_warnings():
        # The alert is printed in the table; keep the console to one line per epoch.
        warnings.filterwarnings("ignore", message="Shortcut alert")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")  # Lightning's own deprecation
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        trainer.fit(LesionClassifier(width=args.width), loader, val_loaders)
    final = trainer.validate(trainer.lightning_module, val_loaders, verbose=False)
    grids = export_last_grids(logger.log_dir)
    summary = {
        "run": name,
        "rows": table.rows,
        "alerts": audit.alerts,
        "first_alert_epoch": audit.alerts[0]["epoch"] if audit.alerts else None,
        "val_acc": final[0]["val_acc"],
        "counterfactual_acc": final[1]["counterfactual_acc"],
        "last_scores": {k: v for k, v in audit.history[-1].items() if k.startswith("audit/")} if audit.history else {},
        "log_dir": logger.log_dir,
        "checkpoint": str(Path(logger.log_dir) / "checkpoints" / "last.ckpt"),
        "grids": [str(path) for path in grids],
        "seconds": time.perf_counter() - started,
    }
    print(
        f"\n{name} run: val accuracy {summary['val_acc']:.3f}, counterfactual accuracy "
        f"{summary['counterfactual_acc']:.3f}, first shortcut alert at epoch "
        f"{summary['first_alert_epoch'] if summary['first_alert_epoch'] is not None else '-'}, "
        f"{summary['seconds']:.0f} s",
    )
    for path in grids:
        print(f"Last audit's grid: {path}")
    print(f"Open the audit in TensorBoard:\n    tensorboard --logdir {args.out}")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
