"""``lightning-sas audit`` end to end: the real console script, a checkpoint trained in-test.

The audits run in subprocesses (the installed ``lightning-sas`` script and ``python -m
lightning_sas``) with ``tests/`` on ``PYTHONPATH`` so ``lit_classifier`` imports there. Input
errors that are cheap to reach are also checked through ``main()`` in-process.
"""

from __future__ import annotations

import argparse
import base64
import copy
import csv
import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path

import cv2
import lightning
import numpy as np
import pytest
import torch
from lit_classifier import IMAGE_SIZE, LitClassifier, Marker, ruler_images, ruler_mask
from lit_models import single_thread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util
from torch.utils.data import DataLoader, TensorDataset

from lightning_sas.audit.verdict import (
    DEFAULT_DISCOVERY,
    DEFAULT_DISCOVERY_WITH_OBJECTS,
    DEFAULT_MIN_ENRICHMENT,
    DEFAULT_MIN_FLIP_RATE,
)
from lightning_sas.cli.main import build_parser, main

TESTS_DIR = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).parent / "lightning-sas"
MODEL = "lit_classifier:LitClassifier"
CLASS_NAMES = ("benign", "<i>malignant</i>")
# No "/" in a file name, so the markup is an opening tag with an event handler.
HTML_NAME = "<img src=x onerror=alert(1)>&\"q'.png"
CORRUPT_NAME = "broken.png"
METHODS = ("sas", "gradcam")
FAST = ("--image-size", str(IMAGE_SIZE), "--sas-iterations", "3", "--device", "cpu")


@dataclass(frozen=True)
class Checkpoints:
    plain: Path
    needs_unpickling: Path


@dataclass(frozen=True)
class ProbeSet:
    images: Path
    masks: Path
    labels: Path
    names: list[str]
    with_mask: list[str]


@dataclass(frozen=True)
class Audit:
    out: Path
    process: subprocess.CompletedProcess[str]

    @property
    def summary(self) -> dict:
        return json.loads((self.out / "summary.json").read_text(encoding="utf-8"), parse_constant=_reject_constant)


def _reject_constant(name: str) -> float:
    raise AssertionError(f"summary.json holds {name}, which is not JSON")


def assert_only_estimate(stderr: str) -> None:
    """A clean audit's stderr: the one line estimating its time, nothing else (no bar: not a terminal)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-sas: estimated audit time "), stderr
    assert "model passes" in lines[0]


def error_lines(stderr: str) -> list[str]:
    """stderr without the estimate line."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("lightning-sas: estimated ")]


@pytest.fixture
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    """A LitClassifier trained to spot the ruler, saved by Lightning; and a copy needing unpickling."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    images, labels = ruler_images(512, seed=0)
    model = LitClassifier(lr=0.02)
    trainer = lightning.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with single_thread():
        trainer.fit(model, DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True))
    plain = folder / "plain.ckpt"
    trainer.save_checkpoint(plain)
    # What save_hyperparameters() stores for LitClassifier(extra=Marker()): a custom object that
    # only full unpickling can restore.
    checkpoint = torch.load(plain, weights_only=True)
    checkpoint["hyper_parameters"]["extra"] = Marker("saved by a trusted colleague")
    needs_unpickling = folder / "custom_hparams.ckpt"
    torch.save(checkpoint, needs_unpickling)
    return Checkpoints(plain, needs_unpickling)


@pytest.fixture(scope="session")
def probe_set(tmp_path_factory: pytest.TempPathFactory) -> ProbeSet:
    """Six probes (three with a ruler and its mask), a corrupt file, a file name with HTML in it."""
    root = tmp_path_factory.mktemp("probes")
    images_dir, masks_dir = root / "images", root / "masks"
    images_dir.mkdir()
    masks_dir.mkdir()
    images, labels = ruler_images(6, seed=1)
    names = [HTML_NAME if index == 2 else f"probe_{index}.png" for index in range(6)]
    with_mask = []
    rows = [("filename", "label")]
    for name, image, label in zip(names, images, labels.tolist(), strict=True):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert cv2.imwrite(str(images_dir / name), np.ascontiguousarray(pixels[..., ::-1]))
        if label == 1:
            assert cv2.imwrite(str(masks_dir / name), ruler_mask().numpy().astype(np.uint8) * 255)
            with_mask.append(name)
        rows.append((name, CLASS_NAMES[label] if name != "probe_1.png" else str(label)))
    (images_dir / CORRUPT_NAME).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (images_dir / "notes.txt").write_text("not a probe", encoding="utf-8")
    labels_csv = root / "labels.csv"
    with open(labels_csv, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows(rows)
    return ProbeSet(images_dir, masks_dir, labels_csv, sorted(names), with_mask)


def cli_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), environment.get("PYTHONPATH")]))
    environment["OMP_NUM_THREADS"] = "1"
    return environment


def start_cli(*arguments: str, console_script: bool = False) -> subprocess.Popen[str]:
    """Start ``lightning-sas ARGS`` through the installed script or ``python -m lightning_sas``."""
    program = [str(CONSOLE_SCRIPT)] if console_script else [sys.executable, "-m", "lightning_sas"]
    return subprocess.Popen(
        [*program, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_environment(),
    )


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_cli(*arguments: str, console_script: bool = False) -> subprocess.CompletedProcess[str]:
    """``lightning-sas ARGS``, waited for."""
    return finish(start_cli(*arguments, console_script=console_script))


def audit_arguments(checkpoint: Path, probes: ProbeSet, out: Path, *extra: str) -> list[str]:
    return [
        "audit",
        "--checkpoint", str(checkpoint),
        "--model", MODEL,
        "--probe", str(probes.images),
        "--masks", str(probes.masks),
        "--labels", str(probes.labels),
        "--class-names", ",".join(CLASS_NAMES),
        "--methods", ",".join(METHODS),
        *FAST,
        "--out", str(out),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def cli_runs(
    checkpoints: Checkpoints, probe_set: ProbeSet, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Audit]:
    """Two audits side by side (most of their time is importing torch and Lightning).

    ``nightly``: the installed console script, ``--shortcut-threshold 1.0`` (a mean roi_share cannot
    be above it), the default rule otherwise. The model learnt the ruler, which covers 14% of the
    image: a mean lift over chance could never have reached its old threshold of 8 (at most 7.1);
    the ROI enrichment can, and does.
    ``refused``: ``python -m lightning_sas`` on the checkpoint that needs unpickling.
    """
    root = tmp_path_factory.mktemp("audits")
    nightly_args = audit_arguments(
        checkpoints.plain, probe_set, root / "nightly", "--shortcut-threshold", "1.0", "--method-config", "sas.lr=0.02"
    )
    refused_args = audit_arguments(checkpoints.needs_unpickling, probe_set, root / "refused")
    started = {
        "nightly": start_cli(*nightly_args, console_script=True),
        "refused": start_cli(*refused_args),
    }
    return {name: Audit(root / name, finish(process)) for name, process in started.items()}


@pytest.fixture(scope="session")
def first_audit(cli_runs: dict[str, Audit]) -> Audit:
    return cli_runs["nightly"]


# ----------------------------------------------------------------------------- HTML parsing


class ReportParser(HTMLParser):
    """Tables by id as rows of cells (text and image sources), plus every start tag seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[dict]] = {}
        self.start_tags: list[str] = []
        self.status_text = ""
        self._table: str | None = None
        self._row: dict | None = None
        self._cell: dict | None = None
        self._in_status = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.start_tags.append(tag)
        if attributes.get("id") == "status" or self._in_status:
            self._in_status += 1
        if tag == "table":
            self._table = attributes.get("id") or f"table_{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": attributes, "cells": []}
            self.tables[self._table].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"text": "", "images": [], "class": attributes.get("class") or ""}
            self._row["cells"].append(self._cell)
        elif tag == "img" and self._cell is not None:
            self._cell["images"].append(attributes.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if self._in_status:
            self._in_status -= 1
        if tag in ("td", "th"):
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_status:
            self.status_text += data


def parse_report(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def probe_rows(report: ReportParser) -> dict[str, dict]:
    rows = [row for row in report.tables["probes"] if row["attrs"].get("class", "").startswith("probe")]
    return {row["attrs"]["data-file"]: row for row in rows}


# ----------------------------------------------------------------------------- tests


def test_help_explains_every_option_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--help"]) == 0
    text = capsys.readouterr().out
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    audit_parser = commands.choices["audit"]
    for action in audit_parser._actions:
        if action.option_strings == ["-h", "--help"]:
            continue
        assert action.option_strings[0] in text
        assert "e.g." in (action.help or ""), f"{action.option_strings[0]} has no example"
    assert "lightning-sas audit" in text and "exit status" in text
    for needle in (
        "--artifacts",
        "--artifact-class",
        "--min-enrichment",
        "--min-flip-rate",
        "--no-faithfulness",
        "--sanity",
    ):
        assert needle in text
    assert "artifacts folder" in text and "masks/<name>.png" in text and "export-probes" in text

    assert main(["export-probes", "--help"]) == 0
    text = capsys.readouterr().out
    for action in commands.choices["export-probes"]._actions:
        if action.option_strings == ["-h", "--help"]:
            continue
        assert action.option_strings[0] in text
        assert "e.g." in (action.help or ""), f"{action.option_strings[0]} has no example"
    assert "manifest.json" in text and "exit status" in text


def test_nightly_audit_flags_the_ruler_model_and_writes_summary(first_audit: Audit, probe_set: ProbeSet) -> None:
    assert first_audit.process.returncode == 1, first_audit.process.stderr
    assert "SHORTCUT" in first_audit.process.stdout and "roi_enrichment" in first_audit.process.stdout
    assert_only_estimate(first_audit.process.stderr)
    summary = first_audit.summary
    assert summary["version"] == 3
    for key, kind in {
        "created": str, "lightning_sas": str, "torch": str, "command": list, "checkpoint": str, "model": str,
        "methods": dict, "verdict": dict, "faithfulness": dict, "probes": list, "skipped": list,
    }.items():  # fmt: skip
        assert isinstance(summary[key], kind), key
    for old_key in ("threshold", "threshold_checked", "crossed", "shortcuts"):
        assert old_key not in summary
    assert summary["torch"] == torch.__version__
    assert summary["model"] == MODEL
    assert summary["command"][:2] == ["lightning-sas", "audit"] and "--shortcut-threshold" in summary["command"]
    verdict = summary["verdict"]
    assert verdict["alert"] is True and verdict["status"] == "shortcut"
    assert verdict["crossed"] and all(item["criterion"] == "roi_enrichment" for item in verdict["crossed"])
    assert verdict["rule"] == {
        "min_enrichment": dict(DEFAULT_MIN_ENRICHMENT), "min_flip_rate": DEFAULT_MIN_FLIP_RATE, "max_roi_share": 1.0,
        "min_roi_pixels": 9,
        "voters": None,
        "discovery": asdict(DEFAULT_DISCOVERY), "discovery_with_objects": asdict(DEFAULT_DISCOVERY_WITH_OBJECTS),
    }  # fmt: skip
    assert verdict["checked"] == ["roi_enrichment", "roi_share"]  # no artifacts: no flip rate
    assert verdict["not_checkable"] == {} and verdict["input_independent"] is False
    for method, scores in verdict["scores"].items():
        assert scores["roi_enrichment"] == pytest.approx(summary["methods"][method]["roi_enrichment"], abs=1e-6)
        assert scores["probes"] == len(probe_set.with_mask)
    assert summary["baseline"] is None and summary["intervention"] is None and summary["sanity"] is None
    assert set(summary["methods"]) == set(METHODS)
    # --sas-iterations and --method-config both reach the method, and the summary records them.
    assert "iterations=3" in summary["method_settings"]["sas"] and "lr=0.02" in summary["method_settings"]["sas"]
    # Faithfulness is on by default: finite AUCs per method and per probe.
    assert summary["faithfulness"] == {"steps": 20, "baseline": "blur"}
    for means in summary["methods"].values():
        for key in ("deletion_auc", "insertion_auc"):
            assert 0.0 <= means[key] <= 1.0, key
        assert means["insertion_minus_deletion"] == pytest.approx(
            means["insertion_auc"] - means["deletion_auc"], abs=1e-6
        )

    probes = summary["probes"]
    assert [entry["file"] for entry in probes] == probe_set.names
    assert summary["skipped"] == [{"file": CORRUPT_NAME, "reason": summary["skipped"][0]["reason"]}]
    assert "decodable" in summary["skipped"][0]["reason"]
    for entry in probes:
        assert set(entry) >= {"file", "sha256", "label", "prediction", "confidence", "roi_share", "roi_mass"}
        assert len(entry["sha256"]) == 64
        assert entry["file_sha256"] == hashlib.sha256((probe_set.images / entry["file"]).read_bytes()).hexdigest()
        assert 0.0 <= entry["confidence"] <= 1.0
        assert entry["label"] in (0, 1) and entry["prediction"] in (0, 1)
        has_mask = entry["file"] in probe_set.with_mask
        assert entry["has_mask"] is has_mask
        for method in METHODS:
            for score in ("roi_share", "roi_mass"):
                value = entry[score][method]
                assert (value is not None and 0.0 <= value <= 1.0) if has_mask else value is None
            lift = entry["roi_lift"][method]
            if has_mask:
                assert lift == pytest.approx(entry["roi_share"][method] / entry["roi_area"], rel=1e-5)
            else:
                assert lift is None
            assert math.isfinite(entry["deletion_auc"][method]) and math.isfinite(entry["insertion_auc"][method])
    for method, means in summary["methods"].items():
        shares = [entry["roi_share"][method] for entry in probes if entry["has_mask"]]
        lifts = [entry["roi_lift"][method] for entry in probes if entry["has_mask"]]
        deletions = [entry["deletion_auc"][method] for entry in probes]
        assert means["roi_share"] == pytest.approx(sum(shares) / len(shares), abs=1e-6)
        assert means["roi_lift"] == pytest.approx(sum(lifts) / len(lifts), rel=1e-5)
        assert means["deletion_auc"] == pytest.approx(sum(deletions) / len(deletions), abs=1e-6)
        assert means["probes_with_mask"] == len(probe_set.with_mask)
        assert (
            f"{method}: roi_enrichment {means['roi_enrichment']:.3f}, mean roi_share {means['roi_share']:.3f} "
            f"(lift {means['roi_lift']:.2f}x chance)"
        ) in first_audit.process.stdout
        assert f"deletion AUC {means['deletion_auc']:.3f}" in first_audit.process.stdout
    assert [item["name"] for item in summary["manifest"]] == probe_set.names
    assert [item["sha256"] for item in summary["manifest"]] == [entry["sha256"] for entry in probes]
    # The model learnt the ruler: it calls every ruler probe malignant.
    assert all(entry["prediction"] == 1 for entry in probes if entry["has_mask"])


def test_report_is_self_contained_and_escaped(first_audit: Audit, probe_set: ProbeSet) -> None:
    path = first_audit.out / "report.html"
    raw = path.read_text(encoding="utf-8")
    report = parse_report(path)
    summary = first_audit.summary

    # Nothing user-provided becomes markup: no <img onerror>, no <i> from the class name.
    assert HTML_NAME not in raw and CLASS_NAMES[1] not in raw
    assert "i" not in report.start_tags and "script" not in report.start_tags
    # A picture per probe and method, the probe itself, and the deletion / insertion curves.
    assert report.start_tags.count("img") == len(probe_set.names) * (1 + len(METHODS)) + 1

    summary_rows = {
        row["attrs"]["data-method"]: row for row in report.tables["summary"] if "data-method" in row["attrs"]
    }
    assert set(summary_rows) == set(METHODS)
    header = [cell["text"] for cell in report.tables["summary"][0]["cells"]]
    assert header[:5] == ["method", "roi_enrichment", "mean roi_share", "mean roi_lift", "mean roi_mass"]
    for method, row in summary_rows.items():
        means = summary["methods"][method]
        assert row["cells"][1]["text"] == f"{means['roi_enrichment']:.3f}"
        assert row["cells"][2]["text"] == f"{means['roi_share']:.3f}"
        assert row["cells"][3]["text"] == f"{means['roi_lift']:.2f}"
        assert row["cells"][4]["text"] == f"{means['roi_mass']:.3f}"
        for key, title in (("deletion_auc", "deletion AUC"), ("insertion_auc", "insertion AUC")):
            assert row["cells"][header.index(title)]["text"] == f"{means[key]:.3f}"

    rows = probe_rows(report)
    assert sorted(rows) == probe_set.names
    for entry in summary["probes"]:
        cells = rows[entry["file"]]["cells"]
        assert cells[0]["text"] == entry["file"]
        sources = [source for cell in cells for source in cell["images"]]
        assert len(sources) == 1 + len(METHODS)
        for source in sources:
            assert source.startswith("data:image/png;base64,")
            picture = cv2.imdecode(np.frombuffer(base64.b64decode(source.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
            assert picture.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        texts = [cell["text"] for cell in cells]
        assert CLASS_NAMES[entry["label"]] in texts and CLASS_NAMES[entry["prediction"]] in texts
        assert f"{entry['confidence']:.3f}" in texts
        for method in METHODS:
            expected = "–" if entry["roi_share"][method] is None else f"{entry['roi_share'][method]:.3f}"
            assert expected in texts
    assert rows[HTML_NAME]["cells"][0]["text"] == HTML_NAME

    skipped = [row["cells"] for row in report.tables["skipped"] if row["attrs"].get("class") == "skipped"]
    assert [cells[0]["text"] for cells in skipped] == [CORRUPT_NAME]
    assert "shortcut alert" in report.status_text.lower() and "roi_enrichment" in report.status_text
    assert f"ROI enrichment above its threshold: {DEFAULT_MIN_ENRICHMENT['sas']:g} (sas)" in report.status_text
    assert "roi_share above 1" in report.status_text
    assert 'id="faithfulness"' in raw and 'id="intervention"' not in raw and 'id="sanity"' not in raw
    probe_header = [cell["text"] for cell in report.tables["probes"][0]["cells"]]
    for entry in summary["probes"]:
        texts = [cell["text"] for cell in rows[entry["file"]]["cells"]]
        for method in METHODS:
            assert texts[probe_header.index(f"{method} deletion AUC")] == f"{entry['deletion_auc'][method]:.3f}"
            assert texts[probe_header.index(f"{method} insertion AUC")] == f"{entry['insertion_auc'][method]:.3f}"
    assert "http://" not in raw and "https://" not in raw and 'src="data:image/png' in raw


def test_tensorboard_events_use_the_callback_tags(first_audit: Audit, probe_set: ProbeSet) -> None:
    events = EventAccumulator(str(first_audit.out), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    expected_images = {f"audit/grid/{method}" for method in METHODS}
    expected_images |= {f"audit/probe_{position:02d}" for position in range(len(probe_set.names))}
    assert set(tags["images"]) == expected_images
    for tag in expected_images:
        assert [event.step for event in events.Images(tag)] == [0]
    summary = first_audit.summary
    for method in METHODS:
        for score in ("roi_share", "roi_mass"):
            (event,) = events.Scalars(f"audit/{method}/{score}")
            assert event.step == 0
            assert event.value == pytest.approx(summary["methods"][method][score], abs=1e-6)
    assert "audit/seconds" in tags["scalars"]
    for method in METHODS:
        for score in ("roi_lift", "deletion_auc", "insertion_auc"):
            (event,) = events.Scalars(f"audit/{method}/{score}")
            assert event.value == pytest.approx(summary["methods"][method][score], rel=1e-5)
    # The callback's text tags: the probe manifest, and the alert (the rule fired).
    assert "audit/manifest/text_summary" in tags["tensors"]
    # And its chart layout: one custom-scalars chart per score with every method on it.
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(tensor_util.make_ndarray(config.tensor_proto).item())
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["roi_share"] == [f"^audit/{method}/roi_share$" for method in METHODS]
    assert "audit/alert/text_summary" in tags["tensors"]


def test_crossed_threshold_exits_1_and_compares_with_baseline(
    first_audit: Audit, checkpoints: Checkpoints, probe_set: ProbeSet, tmp_path: Path
) -> None:
    first = first_audit.summary
    shares = {method: means["roi_share"] for method, means in first["methods"].items()}
    threshold = round(max(shares.values()) / 2, 4)
    assert threshold > 0, f"no method found anything in the ROI: {shares}"
    expected_crossed = [method for method, share in shares.items() if share > threshold]

    # A previous night in which one ruler probe looked much cleaner and another probe was gone.
    previous = copy.deepcopy(first)
    changed, dropped = probe_set.with_mask[0], probe_set.with_mask[1]
    top_method = expected_crossed[0]
    old_share = max(0.0, first_probe(first, changed)["roi_share"][top_method] - 0.5)
    first_probe(previous, changed)["roi_share"][top_method] = old_share
    previous["probes"] = [entry for entry in previous["probes"] if entry["file"] != dropped]
    baseline = tmp_path / "previous" / "summary.json"
    baseline.parent.mkdir()
    baseline.write_text(json.dumps(previous), encoding="utf-8")

    out = tmp_path / "tonight"
    process = run_cli(
        *audit_arguments(
            checkpoints.plain, probe_set, out, "--shortcut-threshold", str(threshold), "--baseline", str(baseline),
            "--no-faithfulness", "--min-enrichment", "off", "--method-config", "sas.lr=0.02",  # as the first audit
        )
    )  # fmt: skip
    assert process.returncode == 1, process.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"), parse_constant=_reject_constant)
    verdict = summary["verdict"]
    assert verdict["alert"] is True
    assert verdict["crossed"] == [{"criterion": "roi_share", "method": method} for method in expected_crossed]
    assert verdict["rule"]["max_roi_share"] == threshold
    assert summary["faithfulness"] is None
    for method in expected_crossed:
        assert f"{method} puts" in process.stdout and f"> {threshold:g})" in process.stdout
        top = verdict["top_probes"][method]
        ranked = sorted(
            (entry for entry in summary["probes"] if entry["has_mask"]),
            key=lambda entry: entry["roi_share"][method],
            reverse=True,
        )
        assert [item["roi_share"] for item in top] == [entry["roi_share"][method] for entry in ranked[: len(top)]]
        assert top[0]["file"] in process.stdout

    comparison = summary["baseline"]
    assert comparison["file"] == str(baseline)
    assert comparison["added"] == [dropped] and comparison["removed"] == []
    assert comparison["flagged_probes"] == [changed]
    (changed_entry,) = [entry for entry in comparison["probes"] if entry["file"] == changed]
    expected_change = first_probe(summary, changed)["roi_share"][top_method] - old_share
    assert changed_entry["roi_share"][top_method] == pytest.approx(expected_change, abs=1e-6)
    assert changed_entry["flagged"] == [top_method]
    for method, means in comparison["methods"].items():
        assert means["roi_share"]["previous"] == pytest.approx(first["methods"][method]["roi_share"])
        assert means["roi_share"]["current"] == summary["methods"][method]["roi_share"]

    events = EventAccumulator(str(out), size_guidance={"tensors": 0})
    events.Reload()
    (alert,) = events.Tensors("audit/alert/text_summary")
    assert expected_crossed[0] in alert.tensor_proto.string_val[0].decode()

    report = parse_report(out / "report.html")
    assert "Shortcut alert" in report.status_text
    for method in expected_crossed:
        assert method in report.status_text
        assert verdict["top_probes"][method][0]["file"] in report.status_text
    rows = probe_rows(report)
    assert "flag" in rows[changed]["attrs"]["class"].split()
    assert f"({expected_change:+.3f})" in "".join(cell["text"] for cell in rows[changed]["cells"])
    assert all("flag" not in row["attrs"]["class"].split() for name, row in rows.items() if name != changed)


def first_probe(summary: dict, file: str) -> dict:
    return next(entry for entry in summary["probes"] if entry["file"] == file)


def test_checkpoint_needing_unpickling_is_refused_with_exit_2(cli_runs: dict[str, Audit]) -> None:
    refused = cli_runs["refused"]
    assert refused.process.returncode == 2
    assert "Traceback" not in refused.process.stderr
    message = [line for line in refused.process.stderr.splitlines() if line.startswith("lightning-sas:")]
    assert len(message) == 1, refused.process.stderr
    assert message[0].startswith("lightning-sas: error: --checkpoint")
    assert "lit_classifier.Marker" in message[0] and "--trust-checkpoint" in message[0]
    assert not (refused.out / "summary.json").exists()


def test_trusted_checkpoint_without_masks_has_nothing_to_check(
    checkpoints: Checkpoints, probe_set: ProbeSet, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    out = tmp_path / "trusted"
    arguments = [
        "audit", "--checkpoint", str(checkpoints.needs_unpickling), "--trust-checkpoint", "--model", MODEL,
        "--probe", str(probe_set.images), "--labels", str(probe_set.labels), "--class-names", ",".join(CLASS_NAMES),
        "--methods", "gradcam", "--target", "label", *FAST, "--shortcut-threshold", "0", "--out", str(out),
        "--no-faithfulness", "--discovery", "never",  # 6 probes: too few for discovery (test_cli_discovery.py)
    ]  # fmt: skip
    assert main(arguments) == 0
    assert "nothing to check" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"), parse_constant=_reject_constant)
    assert summary["verdict"]["checked"] == [] and summary["verdict"]["crossed"] == []
    assert isinstance(summary["methods"]["gradcam"].pop("layer"), str)  # the layer Grad-CAM explained
    # --no-faithfulness: no AUCs anywhere.
    assert summary["methods"] == {
        "gradcam": {
            "roi_enrichment": None,
            "roi_share": None,
            "roi_lift": None,
            "roi_mass": None,
            "probes_with_mask": 0,
            "probes_scored": 0,
            "no_evidence": [],
        }  # fmt: skip
    }
    assert summary["faithfulness"] is None
    assert all("deletion_auc" not in entry and "insertion_auc" not in entry for entry in summary["probes"])
    assert [entry["target"] for entry in summary["probes"]] == [entry["label"] for entry in summary["probes"]]
    report = parse_report(out / "report.html")
    assert "nothing to check" in report.status_text.lower()
    raw = (out / "report.html").read_text(encoding="utf-8")
    assert "AUC" not in raw and 'id="faithfulness"' not in raw


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing checkpoint", "no such file"),
        ("empty probe folder", "no image files"),
        ("only corrupt images", "no readable image"),
        ("bad model path", "package.module:ClassName"),
        ("unknown module", "cannot import module"),
        ("not a LightningModule", "not a LightningModule subclass"),
        ("unknown method", "unknown method name"),
        ("garbage checkpoint", "is a text file (it starts with 'not a checkpoint at all'), not a PyTorch"),
        ("label target without labels", "needs a label for every probe"),
        ("wrong number of means", "--mean 0.5 0.5: `mean` must have 1 value (for every channel) or 3"),
        ("malformed method config", "--method-config 'gradcam:layer4': expected METHOD.KEY=VALUE"),
        ("method config for a method not run", "--method-config names 'sas', which is not in --methods gradcam"),
        ("unknown method option", "method 'gradcam' has no option 'layer'; its options: target_layer"),
        ("method option refused", "method 'gradcam': `target_layer` must be None, a module name or an nn.Module"),
    ],
)
def test_input_errors_exit_2_with_one_line(
    case: str,
    expected: str,
    checkpoints: Checkpoints,
    probe_set: ProbeSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"garbage")
    (corrupt / "b.jpg").write_bytes(b"")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    arguments = {
        "--checkpoint": str(checkpoints.plain),
        "--model": MODEL,
        "--probe": str(probe_set.images),
        "--methods": "gradcam",
        "--out": str(tmp_path / "out"),
    }
    extra: list[str] = []
    if case == "missing checkpoint":
        arguments["--checkpoint"] = str(tmp_path / "nope.ckpt")
    elif case == "empty probe folder":
        arguments["--probe"] = str(empty)
    elif case == "only corrupt images":
        arguments["--probe"] = str(corrupt)
    elif case == "bad model path":
        arguments["--model"] = "lit_classifier.LitClassifier"
    elif case == "unknown module":
        arguments["--model"] = "no_such_package_here.models:Net"
    elif case == "not a LightningModule":
        arguments["--model"] = "lit_classifier:Marker"
    elif case == "unknown method":
        arguments["--methods"] = "gradcam,magic"
    elif case == "garbage checkpoint":
        arguments["--checkpoint"] = str(garbage)
    elif case == "label target without labels":
        extra = ["--target", "label"]
    elif case == "wrong number of means":
        extra = ["--mean", "0.5", "0.5"]
    elif case == "malformed method config":
        extra = ["--method-config", "gradcam:layer4"]
    elif case == "method config for a method not run":
        extra = ["--method-config", "sas.iterations=3"]
    elif case == "unknown method option":
        extra = ["--method-config", "gradcam.layer=layer4"]
    elif case == "method option refused":
        extra = ["--method-config", "gradcam.target_layer=7"]
    argv = ["audit", *[part for pair in arguments.items() for part in pair], *FAST, *extra]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-sas: error: "), captured.err
    assert expected in lines[0]
    assert not (tmp_path / "out" / "summary.json").exists()


def test_argparse_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--checkpoint", "x.ckpt"]) == 2
    assert "required" in capsys.readouterr().err
    assert main([]) == 2


def test_nan_free_numbers() -> None:
    from lightning_sas.report.summary import json_number

    assert json_number(float("nan")) is None and json_number(math.inf) is None and json_number(0.25) == 0.25


def test_report_names_model_and_checkpoint_and_shows_chance_and_class_names(
    first_audit: Audit, checkpoints: Checkpoints
) -> None:
    raw = (first_audit.out / "report.html").read_text(encoding="utf-8")
    report = parse_report(first_audit.out / "report.html")
    summary = first_audit.summary
    title = f"lightning-sas audit: LitClassifier from {checkpoints.plain}"
    assert f"<title>{title}</title>" in raw and f"<h1>{title}</h1>" in raw
    assert summary["model_class"] == "LitClassifier"

    # Each probe row: the ROI's area share (the chance level) beside the scores.
    header = [cell["text"] for cell in report.tables["probes"][0]["cells"]]
    chance_column = header.index("ROI area (chance)")
    assert header[chance_column + 1] == f"{METHODS[0]} roi_share"
    rows = probe_rows(report)
    ruler_area = ruler_mask().float().mean().item()
    for entry in summary["probes"]:
        cell = rows[entry["file"]]["cells"][chance_column]["text"]
        if entry["has_mask"]:
            assert entry["roi_area"] == pytest.approx(ruler_area) and cell == f"{ruler_area:.3f}"
        else:
            assert entry["roi_area"] is None and cell == "–"

    # The manifest shows class names, not indices (in the report and in TensorBoard).
    manifest = [row for row in report.tables["manifest"] if row["attrs"].get("class") == "manifest"]
    assert [row["cells"][0]["text"] for row in manifest] == [entry["file"] for entry in summary["probes"]]
    for row, entry in zip(manifest, summary["probes"], strict=True):
        assert row["cells"][1]["text"] == CLASS_NAMES[entry["label"]]
        assert entry["sha256"].startswith(row["cells"][2]["text"])
    assert [item["label_name"] for item in summary["manifest"]] == [CLASS_NAMES[e["label"]] for e in summary["probes"]]
    events = EventAccumulator(str(first_audit.out), size_guidance={"tensors": 0})
    events.Reload()
    (text,) = events.Tensors("audit/manifest/text_summary")
    rows_markdown = text.tensor_proto.string_val[0].decode().splitlines()[2:]
    assert [row.split("|")[3].strip() for row in rows_markdown] == [CLASS_NAMES[e["label"]] for e in summary["probes"]]


def test_corrupt_png_leaves_no_opencv_warning_on_stderr(first_audit: Audit) -> None:
    # The probe folder holds a corrupt PNG; OpenCV would print "[ WARN:0@0.03] global grfmt_png.cpp ...".
    assert first_audit.summary["skipped"][0]["file"] == CORRUPT_NAME
    assert "[ WARN" not in first_audit.process.stderr and "[ERROR" not in first_audit.process.stderr
    assert "grfmt" not in first_audit.process.stderr


def test_probe_folder_and_checkpoint_errors_are_value_errors_outside_the_cli(tmp_path: Path) -> None:
    from lightning_sas.cli.checkpoint import ModelLoadError, check_checkpoint_file, import_model_class
    from lightning_sas.probes.errors import ProbeFolderError
    from lightning_sas.probes.folder import read_probe_folder
    from lightning_sas.probes.labels import read_labels

    labels = tmp_path / "labels.csv"
    labels.write_text("a.png,Benign\n", encoding="utf-8")
    with pytest.raises(ProbeFolderError, match="did you mean 'benign'"):
        read_labels(labels, ["benign", "malignant"])
    with pytest.raises(ValueError, match="no image files"):
        read_probe_folder(tmp_path, None, {}, size=8, channels=3)
    with pytest.raises(ModelLoadError, match="is a folder"):
        check_checkpoint_file(tmp_path)
    with pytest.raises(ValueError, match="did you mean 'LitClassifier'"):
        import_model_class("lit_classifier:LitClasifier")
