"""Probe folders on disk, a real fit with the audit callback on them, and the command line's audit of the result.

Shared by the tests of :class:`~lightning_sas.probes.folder_dataset.ProbeFolderDataset`,
``lightning-sas audit --probes-from-checkpoint`` and ``SASAuditCallback.from_config``: one probe
set for training and the command line.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import pytest
from lit_classifier import IMAGE_SIZE, LitClassifier, ruler_images, write_probes
from lit_models import make_trainer
from lit_models import single_thread as one_thread
from torch.utils.data import DataLoader, TensorDataset

from lightning_sas import SASAuditCallback
from lightning_sas.audit.result import AuditResult
from lightning_sas.cli.main import main

MODEL = "lit_classifier:LitClassifier"
CLASS_NAMES = ("benign", "malignant")
MEAN = (0.2, 0.25, 0.3)
STD = (0.3, 0.25, 0.2)
#: Probes at these positions get an object mask (the centre); the others an empty one (no file).
WITH_OBJECT = (0, 1, 2, 3, 4, 5, 6, 7)


@dataclass(frozen=True)
class ProbeFolder:
    """A probe folder as ``lightning-sas export-probes`` lays it out, plus object masks and artifacts."""

    root: Path
    images: Path
    masks: Path
    object_masks: Path
    labels: Path
    artifacts: Path
    #: The probes' file names in file-name order (the order of the folder's probes).
    names: list[str]
    with_mask: list[str]
    with_object: list[str]
    label_of: dict[str, int]

    def cli_options(self) -> list[str]:
        """The command line's options reading this folder as :func:`dataset_arguments` does."""
        return [
            "--probe", str(self.images),
            "--masks", str(self.masks),
            "--object-masks", str(self.object_masks),
            "--labels", str(self.labels),
            "--class-names", ",".join(CLASS_NAMES),
            "--image-size", str(IMAGE_SIZE),
            "--mean", *map(str, MEAN),
            "--std", *map(str, STD),
        ]  # fmt: skip

    def dataset_arguments(self) -> dict[str, Any]:
        """``ProbeFolderDataset`` keyword arguments for this folder."""
        return {
            "masks": self.masks,
            "object_masks": self.object_masks,
            "labels": self.labels,
            "class_names": CLASS_NAMES,
            "image_size": IMAGE_SIZE,
            "mean": MEAN,
            "std": STD,
        }


def write_probe_folder(root: Path, count: int = 16) -> ProbeFolder:
    """``count`` ruler probes (odd ones with a ruler and its mask), object masks, labels and a ruler patch."""
    images, masks, names = write_probes(root, count=count)
    objects = root / "objects"
    objects.mkdir()
    centre = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    centre[IMAGE_SIZE // 4 : 3 * IMAGE_SIZE // 4, IMAGE_SIZE // 4 : 3 * IMAGE_SIZE // 4] = 255
    with_object = [name for position, name in enumerate(names) if position in WITH_OBJECT]
    for name in with_object:
        assert cv2.imwrite(str(objects / name), centre)
    label_of = {name: position % 2 for position, name in enumerate(names)}  # odd ones carry the ruler
    labels = root / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([("filename", "label"), *((name, CLASS_NAMES[label_of[name]]) for name in names)])
    artifacts = root / "artifacts"
    (artifacts / "masks").mkdir(parents=True)
    assert cv2.imwrite(str(artifacts / "ruler.png"), np.full((6, 6, 3), 255, dtype=np.uint8))
    assert cv2.imwrite(str(artifacts / "masks" / "ruler.png"), np.full((6, 6), 255, dtype=np.uint8))
    found = sorted(names)
    return ProbeFolder(root, images, masks, objects, labels, artifacts, found, names[1::2], with_object, label_of)


@dataclass
class Fit:
    """A fit with the callback: the callback, its checkpoint, and every audit's result."""

    callback: SASAuditCallback
    checkpoint: Path
    results: list[AuditResult] = field(default_factory=list)


@contextmanager
def captured_results(results: list[AuditResult]) -> Iterator[None]:
    """Keep every audit result the callback computes (its maps and per-probe scores are not logged as data)."""
    import lightning_sas.callback.audit_callback as audit_callback

    explain = audit_callback.explain_on_every_rank

    def spy(*args: Any, **kwargs: Any) -> AuditResult:
        result = explain(*args, **kwargs)
        results.append(result)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audit_callback, "explain_on_every_rank", spy)
        yield


def fit_with(callback: SASAuditCallback, root: Path, checkpoint: Path | None = None) -> Fit:
    """One epoch of LitClassifier on ruler images with ``callback``; the checkpoint saved after it."""
    L.seed_everything(0, verbose=False)
    images, labels = ruler_images(128, seed=0)
    trainer = make_trainer(root, [callback], max_epochs=1)
    fit = Fit(callback, checkpoint or root / "trained.ckpt")
    with captured_results(fit.results), one_thread():
        trainer.fit(LitClassifier(lr=0.02), DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True))
    trainer.save_checkpoint(fit.checkpoint)
    return fit


def run_audit(*arguments: str) -> tuple[int, dict[str, Any] | None]:
    """``lightning-sas audit ARGS`` in this process: the exit status and summary.json (``None`` if not written)."""
    with one_thread():
        status = main(["audit", *arguments])
    out = Path(arguments[arguments.index("--out") + 1]) if "--out" in arguments else None
    summary = out / "summary.json" if out is not None else None
    return status, json.loads(summary.read_text(encoding="utf-8")) if summary and summary.exists() else None


def close(value: float | None, expected: float, tolerance: float = 1e-5) -> bool:
    """A summary.json number (``None`` for NaN) equals ``expected`` within ``tolerance``."""
    if value is None:
        return math.isnan(expected)
    return abs(value - expected) <= tolerance * max(1.0, abs(expected))


def assert_same_scores(result: AuditResult, summary: Mapping[str, Any], methods: Sequence[str]) -> None:
    """The callback's audit and the command line's summary.json agree probe by probe."""
    probes = summary["probes"]
    assert len(probes) == len(result.predictions)
    for position, probe in enumerate(probes):
        assert probe["prediction"] == int(result.predictions[position]), probe["file"]
        assert close(probe["confidence"], float(result.confidences[position])), probe["file"]
        for method in methods:
            for score, values in (("roi_share", result.roi_share), ("roi_mass", result.roi_mass)):
                assert close(probe[score][method], float(values[method][position])), (probe["file"], method, score)
            curves = result.faithfulness[method]
            assert close(probe["deletion_auc"][method], float(curves.deletion_auc[position])), (probe["file"], method)
            assert close(probe["insertion_auc"][method], float(curves.insertion_auc[position])), (probe["file"], method)
