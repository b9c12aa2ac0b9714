"""``lightning-sas audit`` on models of other shapes and on audits that go partly wrong.

Through the subprocess entry point (``python -m lightning_sas``): a single-logit binary
classifier, dict and tuple outputs picked with ``--output``, a grey model on non-square
images. In-process (``main()``, cheaper): a model whose output is NaN for some probes, a method
that fails, and re-using an ``--out`` folder with ``--overwrite``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from lit_classifier import (
    BinaryClassifier,
    LitClassifier,
    save_checkpoint,
    train_quickly,
    write_probes,
)
from test_cli import _reject_constant, assert_only_estimate, error_lines, parse_report, probe_rows, single_thread

from lightning_sas.cli.main import main

TESTS_DIR = Path(__file__).resolve().parents[1]
GREY_SIZE = (16, 24)


@dataclass(frozen=True)
class Setup:
    root: Path
    rgb: Path
    binary: Path
    grey: Path
    images: Path
    masks: Path
    grey_images: Path
    grey_masks: Path
    nan_images: Path
    nan_masks: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """Three small models trained for a few steps to spot the ruler, and three probe folders."""
    root = tmp_path_factory.mktemp("models")
    with single_thread():
        rgb = save_checkpoint(train_quickly(LitClassifier(lr=0.02), seed=0), root / "rgb.ckpt")
        binary = save_checkpoint(train_quickly(BinaryClassifier(), seed=1), root / "binary.ckpt")
        grey = save_checkpoint(train_quickly(LitClassifier(channels=1, lr=0.02), seed=2), root / "grey.ckpt")
    images, masks, _ = write_probes(root / "rgb", 6)
    grey_images, grey_masks, _ = write_probes(root / "grey", 6, size=GREY_SIZE, grey=True)
    # probe_3 has a ruler and a mask, and is bright enough for NaNClassifier's NaN.
    nan_images, nan_masks, _ = write_probes(root / "nan", 6, brighten=(3,))
    return Setup(root, rgb, binary, grey, images, masks, grey_images, grey_masks, nan_images, nan_masks)


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"), parse_constant=_reject_constant)


# ----------------------------------------------------------------------------- subprocess runs


def subprocess_cases(setup: Setup) -> dict[str, list[str]]:
    common = ["--device", "cpu", "--masks", str(setup.masks), "--probe", str(setup.images)]
    return {
        # One logit [B]: no --output; a threshold of 0 is crossed by any ROI attention.
        "binary": [
            "--checkpoint", str(setup.binary), "--model", "lit_classifier:BinaryClassifier",
            "--methods", "sas,gradcam", "--sas-iterations", "2", "--shortcut-threshold", "0", "--image-size", "16",
            "--class-names", "clean,ruler", *common,
        ],
        # A dict output, its key; one --mean/--std value for the three channels.
        "dict": [
            "--checkpoint", str(setup.rgb), "--model", "lit_classifier:DictClassifier", "--output", "logits",
            "--methods", "gradcam", "--shortcut-threshold", "1", "--min-enrichment", "off", "--image-size", "16",
            "--mean", "0", "--std", "1", *common,
        ],
        # A tuple output, picked by an importable function.
        "tuple": [
            "--checkpoint", str(setup.rgb), "--model", "lit_classifier:TupleClassifier",
            "--output", "lit_classifier:pick_logits", "--methods", "gradcam", "--shortcut-threshold", "1",
            "--min-enrichment", "off", "--image-size", "16", *common,
        ],
        # A grey model on non-square 16 x 24 images.
        "grey": [
            "--checkpoint", str(setup.grey), "--model", "lit_classifier:LitClassifier", "--channels", "1",
            "--image-size", "16x24", "--methods", "sas,gradcam", "--sas-iterations", "2",
            "--shortcut-threshold", "1", "--min-enrichment", "off", "--device", "cpu",
            "--probe", str(setup.grey_images), "--masks", str(setup.grey_masks),
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def runs(setup: Setup) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), environment.get("PYTHONPATH")]))
    environment["OMP_NUM_THREADS"] = "1"

    def run(item: tuple[str, list[str]]) -> tuple[subprocess.CompletedProcess[str], Path]:
        name, arguments = item
        out = setup.root / "out" / name
        command = [sys.executable, "-m", "lightning_sas", "audit", *arguments, "--out", str(out)]
        process = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300, check=False)
        return process, out

    cases = subprocess_cases(setup)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(run, cases.items()), strict=True))


def test_single_logit_binary_classifier_needs_no_output_option(
    runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    process, out = runs["binary"]
    assert process.returncode == 1, process.stderr
    assert_only_estimate(process.stderr)
    summary = summary_of(out)
    assert {item["method"] for item in summary["verdict"]["crossed"]} == {"sas", "gradcam"}
    assert "roi_share" in {item["criterion"] for item in summary["verdict"]["crossed"]}
    assert summary["errors"] == {} and summary["nonfinite"] == {}
    for entry in summary["probes"]:
        # The ruler probes (odd positions, with a mask) are class 1, as the model learnt.
        assert entry["prediction"] == int(entry["has_mask"])
        assert entry["prediction_name"] == ("ruler" if entry["has_mask"] else "clean")
        assert 0.5 <= entry["confidence"] <= 1.0
    assert "lightning-sas: SHORTCUT: " in process.stdout


@pytest.mark.parametrize("name", ["dict", "tuple"])
def test_output_option_picks_the_logits(
    name: str, runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]]
) -> None:
    process, out = runs[name]
    assert process.returncode == 0, process.stderr
    assert_only_estimate(process.stderr)
    summary = summary_of(out)
    assert summary["output"] == ("logits" if name == "dict" else "lit_classifier:pick_logits")
    assert summary["model_class"] == ("DictClassifier" if name == "dict" else "TupleClassifier")
    assert summary["errors"] == {} and summary["verdict"]["alert"] is False
    assert all(entry["prediction"] == int(entry["has_mask"]) for entry in summary["probes"])
    assert summary["methods"]["gradcam"]["probes_scored"] == 3
    if name == "dict":
        assert summary["mean"] == [0.0, 0.0, 0.0] and summary["std"] == [1.0, 1.0, 1.0]


def test_grey_model_on_non_square_images(runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]]) -> None:
    process, out = runs["grey"]
    assert process.returncode == 0, process.stderr
    summary = summary_of(out)
    assert summary["image_size"] == list(GREY_SIZE) and summary["channels"] == 1
    assert summary["mean"] == [0.0] and summary["std"] == [1.0]
    assert set(summary["methods"]) == {"sas", "gradcam"}
    height, width = GREY_SIZE
    for entry in summary["probes"]:
        if entry["has_mask"]:
            assert entry["roi_area"] == pytest.approx(6 * 9 / (height * width))  # the ruler, scaled to 16 x 24
            assert all(0.0 <= value <= 1.0 for value in entry["roi_share"].values())
    report = parse_report(out / "report.html")
    for row in probe_rows(report).values():
        source = next(cell["images"][0] for cell in row["cells"] if cell["images"])
        picture = cv2.imdecode(np.frombuffer(_base64(source), np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (height, width, 3)


def _base64(source: str) -> bytes:
    import base64

    return base64.b64decode(source.split(",", 1)[1])


# ----------------------------------------------------------------------------- in-process runs


def audit_arguments(
    setup: Setup, out: Path, *extra: str, images: Path | None = None, masks: Path | None = None
) -> list:
    return [
        "audit", "--checkpoint", str(setup.rgb), "--model", "lit_classifier:LitClassifier",
        "--probe", str(images or setup.images), "--masks", str(masks or setup.masks),
        "--image-size", "16", "--device", "cpu", "--methods", "gradcam", "--out", str(out), *extra,
    ]  # fmt: skip


def test_nonfinite_probes_are_listed_and_never_scored(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nan"
    arguments = audit_arguments(
        setup, out, "--shortcut-threshold", "1", "--min-enrichment", "off", "--class-names", "clean,ruler",
        images=setup.nan_images, masks=setup.nan_masks,
    )  # fmt: skip
    arguments[arguments.index("lit_classifier:LitClassifier")] = "lit_classifier:NaNClassifier"
    with single_thread():
        assert main(arguments) == 0
    captured = capsys.readouterr()
    assert_only_estimate(captured.err)
    problem = [line for line in captured.out.splitlines() if "not finite" in line]
    assert len(problem) == 1 and "probe_3.png" in problem[0] and "gradcam" in problem[0]

    summary = summary_of(out)
    assert summary["nonfinite"] == {"gradcam": ["probe_3.png"]} and summary["errors"] == {}
    entries = {entry["file"]: entry for entry in summary["probes"]}
    broken = entries["probe_3.png"]
    assert broken["has_mask"] and broken["nonfinite"] == ["gradcam"]
    assert broken["roi_share"] == {"gradcam": None} and broken["roi_mass"] == {"gradcam": None}
    assert broken["confidence"] is None and broken["prediction"] is None
    scored = [entries[name]["roi_share"]["gradcam"] for name in ("probe_1.png", "probe_5.png")]
    means = summary["methods"]["gradcam"]
    assert means["probes_with_mask"] == 3 and means["probes_scored"] == 2
    assert means["roi_share"] == pytest.approx(sum(scored) / 2, abs=1e-6)
    assert not math.isclose(means["roi_share"], broken["roi_area"])

    report = parse_report(out / "report.html")
    cells = probe_rows(report)["probe_3.png"]["cells"]
    texts = [cell["text"] for cell in cells]
    assert texts.count("–") >= 3  # confidence, roi_share, roi_mass
    assert [cell for cell in cells if "nonfinite" in cell["class"].split()]
    assert f"{broken['roi_area']:.3f}" in texts  # the chance level is shown beside, not as the score
    raw = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="problems"' in raw and "probe_3.png" in raw.split('id="problems"')[1].split("</ul>")[0]


def test_failed_method_makes_the_audit_incomplete(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "failed"
    # The head's output [B, 2] is no spatial map: Grad-CAM fails while explaining (a typo in the
    # name fails before the audit, see test_cli_projects.py).
    arguments = audit_arguments(
        setup, out, "--gradcam-layer", "head", "--shortcut-threshold", "1", "--min-enrichment", "off"
    )
    arguments[arguments.index("gradcam")] = "sas,gradcam"
    with single_thread():
        assert main([*arguments, "--sas-iterations", "2"]) == 2
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("lightning-sas: error: the audit is incomplete: gradcam failed")
    assert "'head'" in lines[0] and str(out / "summary.json") in lines[0]
    assert "gradcam failed" in captured.out

    summary = summary_of(out)
    assert set(summary["errors"]) == {"gradcam"} and "'head'" in summary["errors"]["gradcam"]
    assert set(summary["methods"]) == {"sas"}
    assert not (out / "error.log").exists()
    report = parse_report(out / "report.html")
    assert "Audit incomplete" in report.status_text and "gradcam" in report.status_text
    rows = {row["attrs"]["data-method"]: row for row in report.tables["summary"] if "data-method" in row["attrs"]}
    header = [cell["text"] for cell in report.tables["summary"][0]["cells"]]
    assert rows["gradcam"]["cells"][header.index("status")]["text"] == "failed"
    assert (
        rows["sas"]["cells"][header.index("deletion AUC")]["text"] == f"{summary['methods']['sas']['deletion_auc']:.3f}"
    )


def test_binary_classifier_with_one_logit_column(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``[B, 1]`` output (``keep_dim``) reads as the same binary classifier as ``[B]``."""
    checkpoint = torch.load(setup.binary, weights_only=True)
    checkpoint["hyper_parameters"]["keep_dim"] = True
    keep_dim = tmp_path / "keep_dim.ckpt"
    torch.save(checkpoint, keep_dim)
    out = tmp_path / "keep_dim"
    arguments = audit_arguments(setup, out, "--shortcut-threshold", "0")
    arguments[arguments.index(str(setup.rgb))] = str(keep_dim)
    arguments[arguments.index("lit_classifier:LitClassifier")] = "lit_classifier:BinaryClassifier"
    with single_thread():
        assert main(arguments) == 1
    capsys.readouterr()
    summary = summary_of(out)
    assert {"criterion": "roi_share", "method": "gradcam"} in summary["verdict"]["crossed"]
    assert all(entry["prediction"] == int(entry["has_mask"]) for entry in summary["probes"])


def test_overwrite_replaces_the_previous_audit(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "latest"
    arguments = audit_arguments(setup, out, "--shortcut-threshold", "1", "--min-enrichment", "off")
    with single_thread():
        assert main(arguments) == 0
        first = summary_of(out)
        (out / "error.log").write_text("from an older failed run", encoding="utf-8")
        capsys.readouterr()
        assert main(arguments) == 2
        refused = capsys.readouterr().err.strip().splitlines()
        assert len(refused) == 1 and "already holds an audit" in refused[0] and "--overwrite" in refused[0]
        assert summary_of(out) == first
        assert main([*arguments, "--overwrite", "--class-names", "clean,ruler"]) == 0
    events = sorted(path.name for path in out.iterdir() if path.name.startswith("events.out.tfevents."))
    assert len(events) == 1, events
    assert not (out / "error.log").exists()
    second = summary_of(out)
    assert second["class_names"] == ["clean", "ruler"] and first["class_names"] is None
    assert "--overwrite" in second["command"]
