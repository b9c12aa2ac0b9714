"""Probe folders without writing code: :func:`lightning_sas.probes.export.export_probes` and the
``lightning-sas export-probes`` subcommand, round-tripped through ``lightning-sas audit``."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from lit_classifier import (
    DATASET_MEAN,
    DATASET_STD,
    IMAGE_SIZE,
    RULER_SIDE,
    LitClassifier,
    RulerDataset,
    save_checkpoint,
)
from test_cli import _reject_constant, error_lines, single_thread

from lightning_sas.cli.main import main
from lightning_sas.probes.export import export_probes
from lightning_sas.probes.export_artifacts import export_artifacts
from lightning_sas.probes.export_folder import ExportError, ExportFolderError
from lightning_sas.probes.folder import read_probe_folder, to_probes
from lightning_sas.probes.labels import read_labels
from lightning_sas.probes.probe_set import content_hash, stratified_indices

CLASS_NAMES = ("clean", "ruler")


def numbers(values: tuple[float, ...]) -> list[str]:
    return [str(value) for value in values]


def test_export_round_trip_through_the_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = RulerDataset(count=10, seed=3)
    out = export_probes(
        dataset,
        tmp_path / "probes",
        count=6,
        seed=1,
        mean=DATASET_MEAN,
        std=DATASET_STD,
        class_names=CLASS_NAMES,
        item_keys={"mask": 2},  # (image, label, roi) items: a tuple's ROI is read only when told
    )
    chosen = stratified_indices([int(label) for label in dataset.labels], 6, 1)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["selection"] == {"kind": "stratified", "count": 6, "seed": 1}
    assert [entry["index"] for entry in manifest["probes"]] == chosen
    assert manifest["mean"] == list(DATASET_MEAN) and manifest["class_names"] == list(CLASS_NAMES)
    for entry in manifest["probes"]:
        assert entry["sha256"] == hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest()
        assert entry["label"] == int(dataset.labels[entry["index"]]) and entry["clipped"] == 0.0
        if entry["label"] == 1:
            assert entry["mask"] == f"masks/{entry['file']}"
            assert entry["mask_sha256"] == hashlib.sha256((out / entry["mask"]).read_bytes()).hexdigest()
        else:
            assert entry["mask"] is None and not (out / "masks" / entry["file"]).exists()
    assert manifest["files"]["labels.csv"] == hashlib.sha256((out / "labels.csv").read_bytes()).hexdigest()
    with open(out / "labels.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["filename", "label"]
    assert rows[1:] == [[entry["file"], CLASS_NAMES[entry["label"]]] for entry in manifest["probes"]]

    # What the audit reads from the folder is the data set's images, to one 8-bit step.
    by_file = {entry["file"]: entry["index"] for entry in manifest["probes"]}
    labels = read_labels(out / "labels.csv", CLASS_NAMES)
    folder = read_probe_folder(out, out / "masks", labels, size=IMAGE_SIZE, channels=3)
    probes = to_probes(folder, list(DATASET_MEAN), list(DATASET_STD))
    assert folder.names == sorted(by_file) and folder.skipped == []
    expected = torch.stack([dataset[by_file[name]][0] for name in folder.names])
    step = (0.5 / 255) / torch.tensor(DATASET_STD).view(1, -1, 1, 1) + 1e-6
    assert bool(((probes.images - expected).abs() <= step).all())
    assert probes.labels.tolist() == [int(dataset.labels[by_file[name]]) for name in folder.names]
    assert torch.equal(probes.roi, torch.stack([dataset[by_file[name]][2] for name in folder.names]))

    # ... and the audit of the folder runs on exactly those tensors, masks and labels.
    checkpoint = save_checkpoint(LitClassifier(), tmp_path / "model.ckpt")
    audit = tmp_path / "audit"
    argv = [
        "audit", "--checkpoint", str(checkpoint), "--model", "lit_classifier:LitClassifier",
        "--probe", str(out), "--masks", str(out / "masks"), "--labels", str(out / "labels.csv"),
        "--class-names", ",".join(CLASS_NAMES), "--mean", *numbers(DATASET_MEAN), "--std", *numbers(DATASET_STD),
        "--image-size", str(IMAGE_SIZE), "--methods", "gradcam", "--no-faithfulness", "--device", "cpu",
        "--out", str(audit),
    ]  # fmt: skip
    with single_thread():
        assert main(argv) == 0
    capsys.readouterr()
    summary = json.loads((audit / "summary.json").read_text(encoding="utf-8"), parse_constant=_reject_constant)
    assert [entry["file"] for entry in summary["probes"]] == folder.names
    for entry, image in zip(summary["probes"], probes.images, strict=True):
        label = int(dataset.labels[by_file[entry["file"]]])
        assert entry["sha256"] == content_hash(image)
        assert entry["label_name"] == CLASS_NAMES[label] and entry["has_mask"] is (label == 1)
        if label == 1:
            assert entry["roi_area"] == pytest.approx(RULER_SIDE**2 / IMAGE_SIZE**2)


def test_grey_mapping_items_by_index(tmp_path: Path) -> None:
    grey = RulerDataset(count=4, seed=5, grey=True)
    items = [{"pixels": image, "y": label, "ruler": roi} for image, label, roi in (grey[i] for i in range(len(grey)))]
    out = export_probes(
        items,
        tmp_path / "grey",
        indices=[3, 0],
        mean=DATASET_MEAN[:1],
        std=DATASET_STD[:1],
        item_keys={"image": "pixels", "label": "y", "roi": "ruler"},
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["selection"] == {"kind": "indices"}
    assert [(entry["file"], entry["index"], entry["label"]) for entry in manifest["probes"]] == [
        ("probe_00003.png", 3, 1),
        ("probe_00000.png", 0, 0),
    ]
    pixels = cv2.imread(str(out / "probe_00003.png"), cv2.IMREAD_UNCHANGED)
    assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE)  # one channel: grey
    expected = (grey[3][0][0] * DATASET_STD[0] + DATASET_MEAN[0]).clamp(0, 1).numpy()
    assert np.abs(pixels / 255.0 - expected).max() <= 0.5 / 255 + 1e-6
    assert (out / "masks" / "probe_00003.png").exists() and not (out / "masks" / "probe_00000.png").exists()
    assert (out / "labels.csv").read_text(encoding="utf-8").splitlines() == [
        "filename,label",
        "probe_00003.png,1",
        "probe_00000.png,0",
    ]


def test_export_artifacts_writes_what_the_audit_reads(tmp_path: Path) -> None:
    from lightning_sas.probes.artifact_folder import read_artifact_folder

    patches = torch.rand(2, 3, 4, 5)
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, :, :1] = True
    out = export_artifacts(patches, masks, tmp_path / "artifacts", names=["ruler", "ink"])
    folder = read_artifact_folder(out, size=16, channels=3)
    assert folder.names == ["ink.png", "ruler.png"] and folder.mask_sources == ["masks/ink.png", "masks/ruler.png"]
    assert np.array_equal(folder.masks[1], masks[0].numpy()) and np.array_equal(folder.masks[0], masks[1].numpy())
    assert np.abs(folder.patches[1] - patches[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda out: export_probes(RulerDataset(4), out, count=2, indices=[0]), "not both"),
        (lambda out: export_probes(RulerDataset(4), out, count=9), "1..4"),
        (lambda out: export_probes(RulerDataset(4), out, indices=[7]), "out of range"),
        (lambda out: export_probes(42, out), "not a map-style Dataset"),
        (lambda out: export_probes(["a", "b"], out), "dataset item 0"),
        (lambda out: export_probes([torch.rand(4, 8, 8)], out), "1 (grey) or 3 (RGB) channels"),
        (lambda out: export_probes(RulerDataset(4), out, mean=[0.5, 0.5]), "`mean`"),
        (lambda out: export_artifacts(torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 4), out), "mark no pixel"),
    ],
)
def test_export_errors(call: object, expected: str, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        call(tmp_path / "out")  # type: ignore[operator]


def test_export_replaces_a_previous_export_and_refuses_other_files(tmp_path: Path) -> None:
    out = tmp_path / "probes"
    export_probes(RulerDataset(4), out, indices=[0, 1, 3])
    export_artifacts(torch.rand(1, 3, 4, 4), torch.ones(1, 4, 4), out / "artifacts")
    (out / "notes.txt").write_text("kept", encoding="utf-8")
    # Again into the same folder (a nightly job): the previous export's files are replaced,
    # other things (the artifacts, notes) stay.
    export_probes(RulerDataset(4), out, indices=[2])
    export_artifacts(torch.rand(2, 3, 4, 4), torch.ones(2, 4, 4), out / "artifacts")
    assert sorted(path.name for path in out.glob("*.png")) == ["probe_00002.png"]
    assert not (out / "masks").exists()  # item 2 has no ruler: no masks left over
    assert sorted(path.name for path in (out / "artifacts").glob("*.png")) == ["artifact_000.png", "artifact_001.png"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "kept"
    assert [entry["file"] for entry in json.loads((out / "manifest.json").read_text(encoding="utf-8"))["probes"]] == [
        "probe_00002.png"
    ]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "old.png").write_bytes(b"")
    with pytest.raises(ExportFolderError, match="not a previous probes export"):
        export_probes(RulerDataset(4), foreign)
    # An image the previous export did not write is never overwritten or mixed in.
    (out / "stray.png").write_bytes(b"")
    with pytest.raises(ExportFolderError, match=r"did not write \(e\.g\. stray\.png\)"):
        export_probes(RulerDataset(4), out)
    with pytest.raises(ExportFolderError, match="not a previous artifacts export"):
        export_artifacts(torch.rand(1, 3, 4, 4), torch.ones(1, 4, 4), out)


# ----------------------------------------------------------------------------- the subcommand


def test_export_probes_subcommand_writes_an_auditable_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "probes"
    argv = [
        "export-probes", "--dataset", "lit_classifier:ruler_dataset", "--count", "4", "--seed", "2",
        "--mean", *numbers(DATASET_MEAN), "--std", *numbers(DATASET_STD), "--class-names", "clean,ruler",
        "--mask-key", "2", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["selection"] == {"kind": "stratified", "count": 4, "seed": 2}
    assert len(manifest["probes"]) == 4 and sum(entry["label"] for entry in manifest["probes"]) == 2
    assert f"exported 4 probe(s) (2 with a mask) to {out}" in captured.out
    assert f"--masks {out / 'masks'}" in captured.out and "--class-names clean,ruler" in captured.out

    # Without --mean/--std the normalised images fall outside [0, 1]: exported, with a warning.
    assert main(["export-probes", "--dataset", "lit_classifier:ruler_dataset", "--out", str(tmp_path / "raw")]) == 0
    captured = capsys.readouterr()
    (warning,) = captured.err.strip().splitlines()
    assert warning.startswith("lightning-sas: warning:") and "clipped" in warning and "--mean/--std" in warning


@pytest.mark.parametrize(
    ("case", "arguments", "expected"),
    [
        ("malformed spec", ("--dataset", "lit_classifier.ruler_dataset"), "'package.module:callable'"),
        ("unknown module", ("--dataset", "no_such_module_xyz:data"), "cannot import module"),
        ("misspelled callable", ("--dataset", "lit_classifier:ruler_datset"), "did you mean 'ruler_dataset'?"),
        ("not callable", ("--dataset", "lit_classifier:IMAGE_SIZE"), "is a int, not a callable"),
        ("not a data set", ("--dataset", "lit_classifier:not_a_dataset"), "is a int, not a map-style Dataset"),
        ("items are not images", ("--dataset", "lit_classifier:dataset_of_strings"), "dataset item 0"),
        ("count too large", ("--count", "99"), "1..10"),
        ("count and indices", ("--count", "2", "--indices", "1,2"), "not both"),
        ("bad indices", ("--indices", "1,x"), "--indices takes data set indices"),
        ("std of zero", ("--std", "0"), "--std values must be positive"),
        ("out holds files", ("--out", "{full}"), "holds files that are not a previous probes export"),
        ("callable raises", ("--dataset", "lit_classifier:dataset_raises"), "calling --dataset"),
    ],
)
def test_export_probes_errors_exit_2_with_one_line(
    case: str, arguments: tuple[str, ...], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "probe_00000.png").write_bytes(b"")
    options = {"--dataset": "lit_classifier:ruler_dataset", "--out": str(tmp_path / "out")}
    extra: list[str] = []
    values = [argument.format(full=full) for argument in arguments]
    for option, value in zip(values[::2], values[1::2], strict=True):
        if option in options:
            options[option] = value
        else:
            extra += [option, value]
    argv = ["export-probes", *[part for pair in options.items() for part in pair], *extra]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("lightning-sas: error: "), captured.err
    assert expected in lines[0]
    log = Path(options["--out"]) / "error.log"
    if case == "callable raises":
        assert "RuntimeError: cannot reach the data server" in lines[0] and str(log) in lines[0]
        assert "Traceback (most recent call last)" in log.read_text(encoding="utf-8")
        # A second attempt into the same folder is not refused because of the error log.
        options["--dataset"] = "lit_classifier:ruler_dataset"
        assert main(["export-probes", *[part for pair in options.items() for part in pair]]) == 0
        assert not log.exists()
        capsys.readouterr()
    else:
        assert not log.exists()
