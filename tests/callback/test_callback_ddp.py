"""A real 2-process CPU DDP run (gloo): probes sharded across ranks, gathered and written on rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lit_models import LitClassifier, corner_dataset
from test_callback import read_events

from lightning_sas import GradCAM, SaS
from lightning_sas.scores.metrics import spearman


def test_ddp_shards_probes_and_rank_zero_writes(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        import pytest

        pytest.skip("torch.distributed with gloo is not available")
    script = Path(__file__).resolve().parents[1] / "ddp_audit_script.py"
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=environment, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "rank0_audited.json").read_text()) == [0]
    assert json.loads((tmp_path / "rank1_audited.json").read_text()) == [0]

    log_dir = tmp_path / "tb" / "version_0"
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1  # only rank 0 wrote
    events = read_events(log_dir)
    assert {f"audit/probe_{i:02d}" for i in range(5)} <= set(events.Tags()["images"])

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    raw = np.load(log_dir / "audits" / "epoch=0.npz")
    assert list(raw["names"]) == [entry["name"] for entry in manifest]  # gathered back in probe order
    assert raw["maps_gradcam"].shape == (5, 16, 16)

    # The gathered maps are the maps of those probes on the trained model, computed in one process.
    model = LitClassifier()
    model.load_state_dict(torch.load(tmp_path / "final.pt"))
    images = torch.stack([corner_dataset()[entry["index"]]["image"] for entry in manifest])
    targets = torch.from_numpy(raw["targets"])
    expected = GradCAM().attribute(model, images, targets)
    torch.testing.assert_close(torch.from_numpy(raw["maps_gradcam"]), expected, atol=1e-5, rtol=0)
    expected_sas = SaS(iterations=3, num_masks=4).attribute(model, images, targets)
    assert spearman(torch.from_numpy(raw["maps_sas"]), expected_sas).min().item() > 0.99


def test_ddp_ranks_make_the_same_forward_calls_with_fewer_probes_than_ranks(tmp_path: Path) -> None:
    """A model whose forward all-reduces deadlocks unless every rank forwards alike; one probe, two ranks."""
    if not dist.is_available() or not dist.is_gloo_available():
        import pytest

        pytest.skip("torch.distributed with gloo is not available")
    script = Path(__file__).resolve().parents[1] / "ddp_audit_script.py"
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "collective"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "rank0_audited.json").read_text()) == [0]
    assert json.loads((tmp_path / "rank1_audited.json").read_text()) == [0]
    raw = np.load(tmp_path / "tb" / "version_0" / "audits" / "epoch=0.npz")
    assert raw["maps_sas"].shape == (1, 16, 16) and np.isfinite(raw["maps_sas"]).all()
