"""One probe set for training and the command line: ``SASAuditCallback(probe=ProbeFolderDataset(...))``.

A real fit audits a probe folder (ROI masks on half the probes, object masks, labels, an artifact
patch); the command line audits the checkpoint on the same folder with the same settings. The
two audits must be one: the same file names and content hashes in the manifests, the same
per-probe scores, the same intervention and discovery numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lit_classifier import DATASET_MEAN, DATASET_STD, IMAGE_SIZE, RulerDataset
from probe_folders import (
    CLASS_NAMES,
    MEAN,
    STD,
    Fit,
    ProbeFolder,
    assert_same_scores,
    close,
    fit_with,
    run_audit,
    write_probe_folder,
)

from lightning_sas import Artifacts, ProbeFolderDataset, SASAuditCallback
from lightning_sas.probes.artifact_folder import read_artifact_folder
from lightning_sas.probes.export import export_probes
from lightning_sas.probes.folder import read_probe_folder, to_probes
from lightning_sas.probes.labels import read_labels
from lightning_sas.trust.intervention import to_artifacts

METHODS = ("gradcam", "saliency")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> ProbeFolder:
    return write_probe_folder(tmp_path_factory.mktemp("probe_folder"))


@pytest.fixture(scope="module")
def trained(folder: ProbeFolder, tmp_path_factory: pytest.TempPathFactory) -> Fit:
    """One epoch with the callback on the folder: ROI masks, object masks, the ruler patch, discovery."""
    probes = ProbeFolderDataset(folder.images, **folder.dataset_arguments())
    callback = SASAuditCallback(
        probe=probes,
        methods=list(METHODS),
        artifacts=Artifacts.from_folder(folder.artifacts, "malignant", probes, trials=2),
        class_names=CLASS_NAMES,
        mean=MEAN,
        std=STD,
        sanity=False,
        discovery="always",
        cost_warning_share=None,
    )
    return fit_with(callback, tmp_path_factory.mktemp("fit"))


@pytest.fixture(scope="module")
def cli_summary(folder: ProbeFolder, trained: Fit, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``lightning-sas audit`` of the trained checkpoint on the same folder, with the same settings."""
    out = tmp_path_factory.mktemp("cli") / "audit"
    status, summary = run_audit(
        "--checkpoint", str(trained.checkpoint),
        "--model", "lit_classifier:LitClassifier",
        *folder.cli_options(),
        "--methods", ",".join(METHODS),
        "--artifacts", str(folder.artifacts), "--artifact-class", "malignant", "--artifact-trials", "2",
        "--discovery", "always",
        "--device", "cpu",
        "--out", str(out),
    )  # fmt: skip
    assert status in (0, 1), status
    assert summary is not None
    return summary


def test_items_are_the_command_lines_probes(folder: ProbeFolder) -> None:
    probes = ProbeFolderDataset(folder.images, **folder.dataset_arguments())
    labels = read_labels(folder.labels, CLASS_NAMES)
    read = read_probe_folder(
        folder.images, folder.masks, labels, size=IMAGE_SIZE, channels=3, object_masks_dir=folder.object_masks
    )
    expected = to_probes(read, MEAN, STD)
    assert len(probes) == len(folder.names) and probes.names == folder.names
    for position, name in enumerate(folder.names):
        item = probes[position]
        assert set(item) == {"image", "label", "mask", "object_mask", "name"}
        assert item["name"] == name == probes.probe_name(position)
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert torch.equal(item["image"], expected.images[position])  # bit for bit: the same content hash
        assert item["label"] == folder.label_of[name]
        assert item["mask"].dtype == torch.bool and bool(item["mask"].any()) == (name in folder.with_mask)
        assert bool(item["object_mask"].any()) == (name in folder.with_object)
    assert probes[-1]["name"] == folder.names[-1]
    with pytest.raises(IndexError, match="out of range"):
        probes[len(folder.names)]
    plain = ProbeFolderDataset(folder.images, image_size=IMAGE_SIZE)
    assert "object_mask" not in plain[0] and not bool(plain[1]["mask"].any()) and plain[0]["label"] == -1


def test_arguments_are_checked_with_their_names(folder: ProbeFolder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`images` must be an existing folder"):
        ProbeFolderDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"`channels` must be 3 \(RGB\) or 1 \(grey\), got 2"):
        ProbeFolderDataset(folder.images, channels=2)
    with pytest.raises(ValueError, match="`image_size` must be N or"):
        ProbeFolderDataset(folder.images, image_size=(0, 16))
    with pytest.raises(ValueError, match="`mean`"):
        ProbeFolderDataset(folder.images, image_size=IMAGE_SIZE, mean=[0.1, 0.2])
    with pytest.raises(ValueError, match="`labels`"):
        ProbeFolderDataset(folder.images, image_size=IMAGE_SIZE, labels=42)  # type: ignore[arg-type]
    first = folder.names[0]
    with pytest.raises(ValueError, match=rf"`labels`\['{first}'\]: 'melanoma' is neither a class index"):
        ProbeFolderDataset(folder.images, image_size=IMAGE_SIZE, labels={first: "melanoma"}, class_names=CLASS_NAMES)
    named = ProbeFolderDataset(
        folder.images, image_size=IMAGE_SIZE, labels={first: "malignant"}, class_names=CLASS_NAMES
    )
    assert named[0]["label"] == 1 and named[1]["label"] == -1
    with pytest.raises(ValueError, match="`images`.*no image files"):
        ProbeFolderDataset(tmp_path, image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="no export-probes folder"):
        ProbeFolderDataset.from_export(folder.root)


def test_from_export_reads_what_export_probes_wrote(tmp_path: Path) -> None:
    dataset = RulerDataset(count=6)
    written = {"mean": DATASET_MEAN, "std": DATASET_STD, "class_names": CLASS_NAMES, "item_keys": {"mask": 2}}
    out = export_probes(dataset, tmp_path / "export", **written)
    probes = ProbeFolderDataset.from_export(out)
    assert probes.image_size == (IMAGE_SIZE, IMAGE_SIZE) and probes.class_names == list(CLASS_NAMES)
    assert probes.mean == list(DATASET_MEAN) and probes.std == list(DATASET_STD)
    assert probes.names == [f"probe_{index:05d}.png" for index in range(6)]
    for position in range(6):
        image, label, roi = dataset[position]
        item = probes[position]
        # The export writes 8-bit PNGs: the data set's images to within one step, normalised again.
        step = torch.tensor(DATASET_STD).view(-1, 1, 1)
        assert bool(((item["image"] - image).abs() <= 0.51 / 255 / step).all())
        assert item["label"] == label and torch.equal(item["mask"], roi)
    resized = ProbeFolderDataset.from_export(out, image_size=8, mean=None, std=None)
    assert resized.image_size == (8, 8) and resized.mean == [0.0] * 3


def test_artifacts_from_folder_are_the_command_lines(folder: ProbeFolder) -> None:
    probes = ProbeFolderDataset(folder.images, **folder.dataset_arguments())
    artifacts = Artifacts.from_folder(folder.artifacts, "malignant", probes, trials=3, seed=5)
    read = read_artifact_folder(
        folder.artifacts, size=IMAGE_SIZE, channels=3, probe_file_sizes=probes.folder.file_sizes
    )
    expected = to_artifacts(read, MEAN, STD, target_class=1, trials=3, seed=5)
    assert artifacts.target_class == 1 and artifacts.trials == 3 and artifacts.seed == 5
    assert torch.equal(artifacts.patches, expected.patches) and torch.equal(artifacts.masks, expected.masks)
    with pytest.raises(ValueError, match="`target_class`.*melanoma"):
        Artifacts.from_folder(folder.artifacts, "melanoma", probes)


def test_the_manifest_names_the_files(folder: ProbeFolder, trained: Fit, cli_summary: dict) -> None:
    manifest = trained.callback.manifest
    assert [entry["name"] for entry in manifest] == folder.names
    assert [entry["label"] for entry in manifest] == [folder.label_of[name] for name in folder.names]
    # One probe set: the command line hashes the same tensors.
    assert [entry["sha256"] for entry in manifest] == [entry["sha256"] for entry in cli_summary["manifest"]]
    assert [entry["name"] for entry in cli_summary["manifest"]] == folder.names


def test_masks_reach_the_roi_scores(folder: ProbeFolder, trained: Fit) -> None:
    with_mask = torch.tensor([name in folder.with_mask for name in folder.names])
    assert torch.equal(trained.callback.probes.has_roi.cpu(), with_mask)
    result = trained.results[-1]
    for method in METHODS:
        share = result.roi_share[method].cpu()
        assert bool(torch.isfinite(share[with_mask]).all()) and bool(torch.isnan(share[~with_mask]).all()), method
        assert math.isfinite(trained.callback.history[-1][f"audit/{method}/roi_share"])


def test_object_masks_reach_discovery(folder: ProbeFolder, trained: Fit, cli_summary: dict) -> None:
    objects = trained.callback.probes.object_mask
    assert objects is not None
    assert [bool(mask.any()) for mask in objects] == [name in folder.with_object for name in folder.names]
    found = trained.results[-1].discovery
    assert found is not None and found.outside_share is not None  # discovery read the object masks
    outside = trained.callback.history[-1]["audit/discovery/outside_enrichment"]
    assert cli_summary["discovery"]["object_masks"] and close(cli_summary["discovery"]["outside_enrichment"], outside)


def test_the_callbacks_audit_is_the_command_lines(trained: Fit, cli_summary: dict) -> None:
    result = trained.results[-1]
    assert_same_scores(result, cli_summary, METHODS)
    for method in METHODS:
        means = cli_summary["methods"][method]
        assert close(means["roi_share"], trained.callback.history[-1][f"audit/{method}/roi_share"])
    flip_rate = trained.callback.history[-1]["audit/intervention/flip_rate"]
    assert close(cli_summary["intervention"]["flip_rate"], flip_rate)
    assert np.isfinite(flip_rate)
