"""The audit in a real Weights & Biases run (offline, no network), read back from the run's own files."""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from lit_models import LitClassifier, corner_dataset, loaders, make_trainer
from PIL import Image

from lightning_sas import SASAuditCallback

wandb = pytest.importorskip("wandb")
wandb_internal_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")

# The run file (run-<id>.wandb) is a LevelDB-style log: a 7-byte file header, then records in
# 32 KiB blocks, each chunk behind a 7-byte header (checksum, length, type).
_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def run_records(path: Path) -> Iterator[object]:
    """Every record (wandb_internal_pb2.Record) of an offline run file, in order."""
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a W&B run file"
    position, pending = _HEADER, b""
    while position + _HEADER <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _HEADER:  # block trailer: padding
            position += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        chunk = data[position + _HEADER : position + _HEADER + length]
        position += _HEADER + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (_FIRST, _MIDDLE):
            pending += chunk


def _items(entries) -> dict[str, object]:
    """History / summary items as {"key" or "key/nested": decoded JSON}."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in entries}


def read_run(run_dir: Path, timeout: float = 20.0) -> tuple[list[dict], dict]:
    """The run's history rows and its final summary, from its run file.

    W&B's service process writes the file; reading waits (up to ``timeout`` seconds) for the
    ``exit`` record that closes it.
    """
    (run_file,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = list(run_records(run_file))
        if records and records[-1].WhichOneof("record_type") == "exit" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    history, summary = [], {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
    return history, summary


def use_offline_wandb(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """W&B offline, silent, with every directory it writes under ``folder`` (restored afterwards)."""
    for name, value in {
        "WANDB_MODE": "offline",  # WandbLogger(offline=True) also sets it; monkeypatch restores it
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(folder),
        "WANDB_CACHE_DIR": str(folder / "cache"),
        "WANDB_CONFIG_DIR": str(folder / "config"),
        "WANDB_DATA_DIR": str(folder / "data"),
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_offline_wandb(monkeypatch, tmp_path)
    return tmp_path


def test_wandb_run_gets_captioned_images_scores_manifest_alert_and_raw_maps(offline_wandb: Path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(offline_wandb), offline=True, project="audit")
    # A zero threshold makes the first audit raise a shortcut alert, so there is one to log.
    callback = SASAuditCallback(
        probe=2, methods=["gradcam"], class_names=["plain", "corner"], shortcut_threshold=0.0, sanity=False
    )
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(offline_wandb, [callback], max_epochs=2, logger=logger)
    try:
        trainer.fit(LitClassifier(), *loaders(corner_dataset()))
        run_dir = Path(logger.experiment.dir).parent
    finally:
        wandb.finish()
    assert callback.audited_epochs == [0, 1] and callback.alerts
    history, summary = read_run(run_dir)
    expected_steps = [3, 6]

    # Scores: metrics at trainer.global_step, the same values the callback keeps.
    shares = [row for row in history if "audit/gradcam/roi_share" in row]
    assert [row["trainer/global_step"] for row in shares] == expected_steps
    assert [row["audit/gradcam/roi_share"] for row in shares] == [
        pytest.approx(entry["audit/gradcam/roi_share"]) for entry in callback.history
    ]

    # Pictures: one wandb.Image per tag and audit, captioned, its PNG in the run's files.
    for tag in ("audit/grid/gradcam", "audit/probe_00", "audit/probe_01"):
        rows = [row for row in history if f"{tag}/_type" in row]
        assert [row["trainer/global_step"] for row in rows] == expected_steps, tag
        for row, epoch in zip(rows, (0, 1), strict=True):
            assert row[f"{tag}/_type"] == "image-file"
            picture = np.asarray(Image.open(run_dir / "files" / row[f"{tag}/path"]))
            assert picture.shape == (row[f"{tag}/height"], row[f"{tag}/width"], 3)
            assert picture.std() > 10  # a real figure, not a blank
            assert f"epoch {epoch}" in row[f"{tag}/caption"]
    captions = [row["audit/probe_01/caption"] for row in history if "audit/probe_01/caption" in row]
    name, true = callback.manifest[1]["name"], ["plain", "corner"][callback.manifest[1]["label"]]
    for caption, epoch in zip(captions, (0, 1), strict=True):
        assert re.fullmatch(
            rf"{re.escape(name)}  true: {true}  pred: (plain|corner) \(\d\.\d\d\) epoch {epoch}", caption
        )

    # The manifest: a wandb.Table with one row per probe, as the callback recorded it.
    (manifest_row,) = [row for row in history if row.get("audit/manifest/_type") == "table-file"]
    table = json.loads((run_dir / "files" / manifest_row["audit/manifest/path"]).read_text())
    assert table["columns"] == ["probe", "index", "label", "sha256"]
    assert [[row[0], row[1], row[3]] for row in table["data"]] == [
        [entry["name"], entry["index"], entry["sha256"]] for entry in callback.manifest
    ]

    # Alerts and other text: in the run summary.
    assert summary["audit/alert"].startswith("Shortcut alert at epoch 0")
    assert "audit/cost" in summary and "| probe | index |" in summary["audit/manifest_markdown"]

    # Raw maps: a run file, the same arrays the callback saw.
    raw = np.load(run_dir / "files" / "audits" / "epoch=1.npz")
    assert raw["maps_gradcam"].shape == (2, 16, 16)
    assert list(raw["names"]) == [entry["name"] for entry in callback.manifest]
    # W&B got no loose PNG directory: everything went through the run.
    assert not list(offline_wandb.glob("**/audits/images"))
