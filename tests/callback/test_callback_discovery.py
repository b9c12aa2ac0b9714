"""Shortcut discovery in training: probes without ROI masks or artifacts, a real Trainer, real event files."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lit_models import LitClassifier, corner_dataset, make_trainer, read_events
from tensorboard.util import tensor_util
from torch.utils.data import DataLoader, TensorDataset

from lightning_sas import SASAuditCallback
from lightning_sas.audit.discovery import DiscoveryOptions


def unmasked(count: int, seed: int, second_site: bool = False) -> TensorDataset:
    """The corner data (class 1 = a bright top-left square) as ``(image, label)``: nobody names the
    square. ``second_site``: the square is also on every other class-0 image (validation data from
    a site where it does not go with the label)."""
    data = corner_dataset(count=count, seed=seed)
    images, labels, _ = data.tensors
    if second_site:
        images[(labels == 0) & (torch.arange(count) % 4 == 0), :, :8, :8] += 1.5
    return TensorDataset(images, labels)


def fit(tmp_path: Path, callback: SASAuditCallback) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2)
    train = DataLoader(unmasked(96, seed=0), batch_size=16, shuffle=True)
    trainer.fit(LitClassifier(), train, DataLoader(unmasked(48, seed=1, second_site=True), batch_size=16))
    return trainer


def test_without_masks_or_artifacts_discovery_finds_the_corner_and_alerts(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=32, methods=["occlusion", "gradcam"], sanity=False, faithfulness=False)
    trainer = fit(tmp_path, callback)
    events = read_events(trainer.logger.log_dir)
    assert {"audit/discovery/candidates", "audit/discovery/strategies"} <= set(events.Tags()["images"])
    scalars = set(events.Tags()["scalars"])
    assert {"audit/discovery/top_flip_rate", "audit/discovery/candidates"} <= scalars
    text = tensor_util.make_ndarray(events.Tensors("audit/discovery/text_summary")[-1].tensor_proto)
    assert b"Shortcut discovery in occlusion's maps" in text.item()
    last = callback.verdicts[-1]
    assert "discovery" in last["checked"]
    assert last["alert"], last
    assert callback.alerts and "moves" in callback.alerts[0]["reasons"][0]
    assert "labelled probes where it appears are labelled as that class" in callback.alerts[0]["reasons"][0]


def test_discovery_never_and_with_too_few_probes(tmp_path: Path) -> None:
    off = SASAuditCallback(probe=32, methods=["gradcam"], sanity=False, faithfulness=False, discovery="never")
    trainer = fit(tmp_path / "off", off)
    assert not any(tag.startswith("audit/discovery") for tag in read_events(trainer.logger.log_dir).Tags()["images"])
    assert off.verdicts[-1]["status"] == "cannot tell"  # nothing to check: no ROI, no artifacts, no discovery
    few = SASAuditCallback(probe=8, methods=["gradcam"], sanity=False, faithfulness=False, discovery=DiscoveryOptions())
    fit(tmp_path / "few", few)
    assert "needs at least 16" in few.verdicts[-1]["not_checkable"]["discovery"]
