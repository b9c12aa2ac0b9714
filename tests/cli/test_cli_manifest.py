"""``lightning-sas audit --probes-from-checkpoint``: audit exactly the probes a training run recorded.

A real fit with ``SASAuditCallback(probe=ProbeFolderDataset(...), probe_count=4)`` records four of
the folder's six probes in its checkpoint; the command line must audit those four files (and no
other), in the manifest's order, and refuse a folder or settings that do not hold them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest
import torch
from lit_classifier import IMAGE_SIZE, LitClassifier, save_checkpoint
from probe_folders import MEAN, STD, Fit, ProbeFolder, fit_with, run_audit, write_probe_folder

from lightning_sas import ProbeFolderDataset, SASAuditCallback

OPTION = "--probes-from-checkpoint"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> ProbeFolder:
    return write_probe_folder(tmp_path_factory.mktemp("probes"), count=6)


@pytest.fixture(scope="module")
def trained(folder: ProbeFolder, tmp_path_factory: pytest.TempPathFactory) -> Fit:
    probes = ProbeFolderDataset(folder.images, **folder.dataset_arguments())
    callback = SASAuditCallback(
        probe=probes, probe_count=4, methods=["gradcam"], sanity=False, faithfulness=False, cost_warning_share=None
    )
    return fit_with(callback, tmp_path_factory.mktemp("fit"))


def audit_options(checkpoint: Path, images: Path, out: Path, folder: ProbeFolder, *extra: str) -> list[str]:
    """The folder's reading options, without --labels: the labels come from the manifest."""
    return [
        "--checkpoint", str(checkpoint),
        "--model", "lit_classifier:LitClassifier",
        "--probe", str(images),
        "--masks", str(folder.masks),
        "--image-size", str(IMAGE_SIZE),
        "--mean", *map(str, MEAN),
        "--std", *map(str, STD),
        "--methods", "gradcam",
        "--no-faithfulness",
        "--device", "cpu",
        "--out", str(out),
        *extra,
    ]  # fmt: skip


def copy_images(folder: ProbeFolder, to: Path, leave_out: str | None = None) -> Path:
    shutil.copytree(folder.images, to, ignore=(lambda _, names: [leave_out] if leave_out in names else []))
    return to


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a refused audit."""
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("lightning-sas: ")]
    assert len(lines) == 1 and lines[0].startswith("lightning-sas: error: "), lines
    return lines[0]


def with_second_callback(trained: Fit, path: Path, keep: int, only_second: bool = False) -> Path:
    """The trained checkpoint plus an audit callback named 'second' that recorded the first ``keep`` probes."""
    checkpoint = torch.load(trained.checkpoint, weights_only=True)
    (key, state), *_ = checkpoint["callbacks"].items()
    second = {**state, "manifest": state["manifest"][:keep]}
    if only_second:
        checkpoint["callbacks"] = {}
    checkpoint["callbacks"]["SASAuditCallback{'probes': 'dataset:ProbeFolderDataset', 'name': 'second'}"] = second
    torch.save(checkpoint, path)
    return path


def test_audits_exactly_the_recorded_probes_in_their_order(
    folder: ProbeFolder, trained: Fit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = trained.callback.manifest
    assert len(manifest) == 4 and len(folder.names) == 6
    images = copy_images(folder, tmp_path / "images")
    shutil.copy(images / manifest[0]["name"], images / "a_copy.png")  # one more file, a copy of a probe
    # --target label without --labels: each probe keeps the label training recorded.
    options = audit_options(trained.checkpoint, images, tmp_path / "out", folder, OPTION, "--target", "label")
    status, summary = run_audit(*options)
    assert status in (0, 1) and summary is not None
    assert [probe["file"] for probe in summary["probes"]] == [entry["name"] for entry in manifest]
    assert [entry["sha256"] for entry in summary["manifest"]] == [entry["sha256"] for entry in manifest]
    assert [probe["label"] for probe in summary["probes"]] == [entry["label"] for entry in manifest]
    assert "3 other file(s) in --probe are left out" in capsys.readouterr().err


def test_a_recorded_probe_missing_from_the_folder_exits_2(
    folder: ProbeFolder, trained: Fit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = trained.callback.manifest[2]["name"]
    images = copy_images(folder, tmp_path / "images", leave_out=missing)
    status, summary = run_audit(*audit_options(trained.checkpoint, images, tmp_path / "out", folder, OPTION))
    assert status == 2 and summary is None
    line = error_line(capsys)
    assert f"{OPTION}: {missing}, a probe of {trained.checkpoint} (callback 'audit'), is not in the folder" in line


def test_a_changed_probe_exits_2(
    folder: ProbeFolder, trained: Fit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = trained.callback.manifest[1]["name"]
    images = copy_images(folder, tmp_path / "images")
    pixels = cv2.imread(str(images / changed))
    pixels[-1, -1] = 255 - pixels[-1, -1]  # one pixel
    assert cv2.imwrite(str(images / changed), pixels)
    status, _ = run_audit(*audit_options(trained.checkpoint, images, tmp_path / "out", folder, OPTION))
    assert status == 2
    line = error_line(capsys)
    assert f"{changed}: its content differs from the probe of that name" in line
    assert "1 of its 4 probes differ" in line and "the file changed since training" in line


def test_other_preprocessing_than_in_training_exits_2(
    folder: ProbeFolder, trained: Fit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = audit_options(trained.checkpoint, folder.images, tmp_path / "out", folder, OPTION)
    options[options.index("--mean") + 1 : options.index("--std")] = ["0.5"]
    status, _ = run_audit(*options)
    assert status == 2
    line = error_line(capsys)
    first = trained.callback.manifest[0]["name"]
    assert f"{first}: its content differs" in line and "none of its 4 probes hashes as in training" in line
    assert "--image-size, --channels, --mean and --std" in line


def test_a_checkpoint_without_the_callbacks_state_exits_2(
    folder: ProbeFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = save_checkpoint(LitClassifier(), tmp_path / "plain.ckpt")
    status, _ = run_audit(*audit_options(plain, folder.images, tmp_path / "out", folder, OPTION))
    assert status == 2
    assert f"{OPTION}: {plain} holds no SASAuditCallback state" in error_line(capsys)


def test_several_callbacks_are_told_apart_by_name(
    folder: ProbeFolder, trained: Fit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = with_second_callback(trained, tmp_path / "two.ckpt", keep=2)
    status, _ = run_audit(*audit_options(two, folder.images, tmp_path / "bare", folder, OPTION))
    assert status == 2
    assert "holds the states of 2 audit callbacks ('audit', 'second')" in error_line(capsys)
    status, _ = run_audit(*audit_options(two, folder.images, tmp_path / "third", folder, OPTION, "third"))
    assert status == 2
    assert "no audit callback named 'third'" in error_line(capsys)
    status, summary = run_audit(*audit_options(two, folder.images, tmp_path / "second", folder, OPTION, "second"))
    assert status in (0, 1) and summary is not None
    assert [probe["file"] for probe in summary["probes"]] == [e["name"] for e in trained.callback.manifest[:2]]


def test_checkpoints_that_recorded_other_probes_exit_2(
    folder: ProbeFolder, trained: Fit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = with_second_callback(trained, tmp_path / "other.ckpt", keep=3, only_second=True)
    options = audit_options(
        trained.checkpoint, folder.images, tmp_path / "out", folder, OPTION, "--checkpoint", str(other)
    )
    status, _ = run_audit(*options)
    assert status == 2
    assert "recorded other probes than" in error_line(capsys)


def test_a_config_file_switches_it_on_with_true(
    folder: ProbeFolder, trained: Fit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = trained.callback.manifest[0]["name"]
    images = copy_images(folder, tmp_path / "images", leave_out=missing)
    job = tmp_path / "job.yaml"
    job.write_text("audit:\n  probes-from-checkpoint: true\n", encoding="utf-8")
    status, _ = run_audit(*audit_options(trained.checkpoint, images, tmp_path / "out", folder, "--config", str(job)))
    assert status == 2
    assert f"{OPTION}: {missing}, a probe of" in error_line(capsys)  # true: the bare option, no callback 'true'


def test_a_label_other_than_in_training_exits_2(
    folder: ProbeFolder, trained: Fit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = trained.callback.manifest[1]
    labels = tmp_path / "labels.csv"
    labels.write_text(f"filename,label\n{entry['name']},{1 - entry['label']}\n", encoding="utf-8")
    options = audit_options(
        trained.checkpoint, folder.images, tmp_path / "out", folder, OPTION, "--labels", str(labels)
    )
    status, _ = run_audit(*options)
    assert status == 2
    assert f"{entry['name']}: its label is {1 - entry['label']} here and {entry['label']} in" in error_line(capsys)


def test_the_manifest_is_read_as_the_callback_saved_it(trained: Fit) -> None:
    from lightning_sas.probes.checkpoint_manifest import read_checkpoint_manifest

    recorded = read_checkpoint_manifest(trained.checkpoint)
    assert recorded.callback == "audit" and recorded.entries == trained.callback.manifest
