"""``lightning-sas audit`` with neither ``--masks`` nor ``--artifacts``: discovery decides the exit status.

A LitClassifier trained on images whose class is a ruler in the corner; 24 probe files, no masks.
In-process through ``main()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lit_classifier import IMAGE_SIZE, LitClassifier, save_checkpoint, train_quickly, write_probes
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import single_thread

from lightning_sas.cli.main import main
from lightning_sas.probes.artifact_folder import read_artifact_folder


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(checkpoint, probe images, ruler masks)``."""
    root = tmp_path_factory.mktemp("discovery")
    torch.manual_seed(0)
    with single_thread():
        checkpoint = save_checkpoint(train_quickly(LitClassifier(lr=0.02), seed=0), root / "ruler.ckpt")
    images, masks, _ = write_probes(root / "probes", 24)
    return checkpoint, images, masks


def audit(checkpoint: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [
        "audit", "--checkpoint", str(checkpoint), "--model", "lit_classifier:LitClassifier",
        "--probe", str(images), "--image-size", str(IMAGE_SIZE), "--device", "cpu", "--methods", "occlusion",
        "--no-faithfulness", "--class-names", "clean,ruler", "--out", str(out), *extra,
    ]  # fmt: skip


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_the_ruler_nobody_named_exits_1_and_is_exported_as_an_artifact(
    project: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, images, _ = project
    with single_thread():
        # The top 5% of the maps cover part of the 6x6 ruler; this model needs all of it to flip: without
        # object masks, completing regions to the thing they sit on is asked for (it is off by default there).
        assert main(audit(checkpoint, images, tmp_path / "partial")) == 0
        assert main(audit(checkpoint, images, tmp_path / "found", "--discovery-config", "completion=True")) == 1
    capsys.readouterr()
    summary = summary_of(tmp_path / "found")
    record = summary["discovery"]
    assert record["method"] == "occlusion" and not record["object_masks"]
    confirmed = [candidate for candidate in record["candidates"] if candidate["confirmed"]]
    assert confirmed and confirmed[0]["class_name"] == "ruler"
    assert summary["verdict"]["status"] == "shortcut" and "discovery" in summary["verdict"]["checked"]
    # The confirmed candidate is an --artifacts folder a reviewer can promote to a known artifact.
    folder = read_artifact_folder(tmp_path / "found" / confirmed[0]["exported"], size=IMAGE_SIZE, channels=3)
    assert len(folder.names) == len(confirmed[0]["sources"])
    with single_thread():
        promoted = audit(checkpoint, images, tmp_path / "promoted", "--artifacts")
        promoted += [str(tmp_path / "found" / confirmed[0]["exported"]), "--artifact-class", "ruler"]
        assert main(promoted) == 1
    capsys.readouterr()
    assert summary_of(tmp_path / "promoted")["intervention"]["flip_rate"] > 0.5
    # Everywhere the audit writes: the report and TensorBoard.
    report = (tmp_path / "found" / "report.html").read_text(encoding="utf-8")
    assert 'id="candidates"' in report and 'alt="audit/discovery/candidates"' in report
    events = EventAccumulator(str(tmp_path / "found"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert "audit/discovery/candidates" in events.Tags()["images"]
    assert "audit/discovery/text_summary" in events.Tags()["tensors"]


def test_object_masks_make_the_same_region_legitimate_evidence(
    project: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, images, masks = project
    # Told that the ruler's square is where the legitimate evidence is, discovery looks off it.
    with single_thread():
        status = main(audit(checkpoint, images, tmp_path / "object", "--object-masks", str(masks)))
    capsys.readouterr()
    record = summary_of(tmp_path / "object")["discovery"]
    assert record["object_masks"]
    assert not any(candidate["confirmed"] for candidate in record["candidates"])
    assert status == 0


def test_too_few_probes_and_a_bad_discovery_method_are_reported(
    project: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, _, _ = project
    few, _, _ = write_probes(tmp_path / "few", 6)
    assert main(audit(checkpoint, few, tmp_path / "few_out")) == 2  # cannot tell
    capsys.readouterr()
    assert "discovery needs at least 16" in summary_of(tmp_path / "few_out")["discovery"]["skipped"]
    assert main(audit(checkpoint, few, tmp_path / "bad", "--discovery-method", "sas")) == 2
    assert "--discovery-method sas is not one of --methods (occlusion)" in capsys.readouterr().err
    assert main(audit(checkpoint, few, tmp_path / "bad2", "--discovery-config", "top_fractoin=0.1")) == 2
    assert "unknown setting(s) ['top_fractoin']" in capsys.readouterr().err
