"""The combined report of several checkpoints (lightning_sas.report.trends), on real single audits.

The single audits are real: ruler models after 0, 10 and 30 training steps, audited with SaS and
Grad-CAM (:mod:`real_audits`) and written as the command line writes them, each to
``checkpoints/<name>/`` of a combined run's folder. The untrained model does not alert; the
trained ones do.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from real_audits import ruler_model, ruler_probes, write_audit

from lightning_sas.report.plots import ALERT_COLOUR, line_figure
from lightning_sas.report.trends import (
    COMBINED_KIND,
    checkpoint_row,
    combined_summary,
    trend_figures,
    trend_panels,
    write_combined_report,
)

PNG = b"\x89PNG\r\n\x1a\n"
#: A checkpoint name that is markup: the combined report must show it as text, and link it.
HTML_NAME = '<i>best & "30" #1'
#: Training steps -> checkpoint name (the run's folder names).
NAMES = {0: "epoch=0-step=0", 10: "epoch=0-step=10", 30: HTML_NAME}
CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class Run:
    root: Path
    summaries: dict[int, dict]  # by step
    rows: list[dict]  # in the order the audits ran: 30, 0, 10


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Three audited checkpoints in ``checkpoints/<name>/`` of a run folder; their rows, not in step order."""
    root = tmp_path_factory.mktemp("combined")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: one thread is fastest
    try:
        summaries = {
            step: write_audit(
                ruler_model(step),
                ruler_probes(8, long_names=True),
                root / "checkpoints" / name,
                checkpoint=f"runs/{name}.ckpt",
            )
            for step, name in NAMES.items()
        }
    finally:
        torch.set_num_threads(threads)
    rows = [
        checkpoint_row(
            summaries[step],
            checkpoint=f"runs/{NAMES[step]}.ckpt",
            name=NAMES[step],
            step=step,
            epoch=0,
            folder=f"checkpoints/{NAMES[step]}",
            cached=step == 10,
            exit_status=1 if summaries[step]["verdict"]["alert"] else 0,
        )
        for step in (30, 0, 10)
    ]
    return Run(root, summaries, rows)


@pytest.fixture(scope="module")
def trust_summaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Audits without masks or faithfulness: ``"found"`` with the ruler pasted (intervention) and
    discovery on 16 probes; ``"skipped"`` with discovery asked for on too few probes."""
    root = tmp_path_factory.mktemp("trust")
    model = ruler_model(30)
    audit = {"checkpoint": "runs/last.ckpt", "faithfulness": None, "discovery": True}
    return {
        "found": write_audit(model, ruler_probes(16, masks=False), root / "found", artifacts=True, **audit),
        "skipped": write_audit(model, ruler_probes(8, masks=False), root / "skipped", **audit),
    }


def trust_row(summary: dict, name: str, step: int | None) -> dict:
    return checkpoint_row(
        summary, checkpoint=name, name=name, step=step, epoch=None, folder=name, cached=False, exit_status=0
    )


# ----------------------------------------------------------------------------- rows and the combined summary


def test_a_row_holds_the_verdict_scores_and_accuracy_of_its_audit(run: Run) -> None:
    rows = {row["step"]: row for row in run.rows}
    assert {step: row["alert"] for step, row in rows.items()} == {0: False, 10: True, 30: True}
    for step, row in rows.items():
        summary = run.summaries[step]
        assert row["status"] == summary["verdict"]["status"] and row["verdict"] == summary["verdict"]["summary"]
        assert row["crossed"] == summary["verdict"]["crossed"]
        assert (row["name"], row["folder"], row["epoch"], row["cached"]) == (
            NAMES[step],
            f"checkpoints/{NAMES[step]}",
            0,
            step == 10,
        )
        for method, means in summary["methods"].items():
            for key in ("roi_enrichment", "roi_share", "roi_lift", "deletion_auc", "insertion_auc"):
                assert row["methods"][method][key] == means[key], (method, key)
        right = [entry["prediction"] == entry["label"] for entry in summary["probes"]]
        assert row["accuracy"] == pytest.approx(sum(right) / len(right)) and row["labelled_probes"] == 8
        assert row["flip_rate"] is None and row["discovery"] is None and row["errors"] == {}
        json.dumps(row, allow_nan=False)
    # The untrained model guesses; the trained ones have learnt the ruler.
    assert rows[0]["accuracy"] < 1.0 and rows[30]["accuracy"] == 1.0


def test_a_row_sums_up_the_intervention_and_discovery(trust_summaries: dict[str, dict]) -> None:
    found = trust_summaries["found"]
    row = trust_row(found, "found", 1)
    assert row["flip_rate"] == found["intervention"]["flip_rate"] is not None
    candidates = found["discovery"]["candidates"]
    assert candidates, "discovery found no candidate: the digest is not tested"
    flips = [candidate["flip_rate"] for candidate in candidates if candidate["flip_rate"] is not None]
    confirmed = [candidate["flip_rate"] for candidate in candidates if candidate["confirmed"]]
    assert row["discovery"] == {
        "candidates": len(candidates),
        "confirmed": len(confirmed),
        "best_flip_rate": max(flips),
        "best_confirmed_flip_rate": max(confirmed) if confirmed else None,
    }
    assert all(scores["roi_share"] is None for scores in row["methods"].values())  # no masks
    skipped = trust_row(trust_summaries["skipped"], "skipped", 2)
    assert "16" in skipped["discovery"]["skipped"] and skipped["flip_rate"] is None


def test_the_combined_summary_orders_the_checkpoints_by_step_unknown_steps_last(run: Run) -> None:
    unknown = {**run.rows[1], "name": "a-copy-without-step", "step": None}
    combined = combined_summary([unknown, *run.rows], gate="any", exit_status=1, run={"command": ["lightning-sas"]})
    assert [row["name"] for row in combined["checkpoints"]] == [*NAMES.values(), "a-copy-without-step"]
    assert (combined["kind"], combined["version"], combined["gate"], combined["exit_status"]) == (
        COMBINED_KIND,
        1,
        "any",
        1,
    )
    assert combined["run"] == {"command": ["lightning-sas"]} and combined["created"].endswith("+00:00")
    json.dumps(combined, allow_nan=False)


# ----------------------------------------------------------------------------- trends


def test_trend_plots_exist_only_for_the_data_the_audits_have(run: Run, trust_summaries: dict[str, dict]) -> None:
    figures = trend_figures(run.rows)
    assert set(figures) == {"roi_enrichment", "roi_share", "faithfulness", "accuracy"}  # no artifacts, no discovery
    assert all(png.startswith(PNG) for png in figures.values())
    trust_rows = [trust_row(trust_summaries["found"], "found", 1), trust_row(trust_summaries["skipped"], "skip", 2)]
    panels = trend_panels(trust_rows)
    assert set(panels) == {"flip_rate", "accuracy"}  # no masks, no faithfulness
    (flips,) = panels["flip_rate"]
    assert set(flips.lines) >= {"intervention (--artifacts)", "discovery: best candidate"}
    assert flips.lines["intervention (--artifacts)"] == [trust_rows[0]["flip_rate"], None]


def test_trends_follow_the_steps_and_mark_the_alerts(run: Run) -> None:
    (enrichment,) = trend_panels(run.rows)["roi_enrichment"]
    assert list(enrichment.x) == [0.0, 10.0, 30.0] and enrichment.ticks is None
    assert list(enrichment.marked) == [10.0, 30.0]  # the trained checkpoints alerted
    by_step = {row["step"]: row for row in run.rows}
    assert enrichment.lines["gradcam"] == [by_step[step]["methods"]["gradcam"]["roi_enrichment"] for step in NAMES]
    # Without every step known: the checkpoints' order, named on the axis (a "$" in a name is no TeX).
    rows = [*run.rows, {**run.rows[0], "name": "odd$_{$name", "step": None}]
    (ordered,) = trend_panels(rows)["roi_enrichment"]
    assert list(ordered.x) == [0.0, 1.0, 2.0, 3.0] and list(ordered.ticks) == [*NAMES.values(), "odd$_{$name"]
    assert trend_figures(rows)["roi_enrichment"].startswith(PNG)


def test_the_alert_bands_are_drawn(run: Run) -> None:
    (panel,) = trend_panels(run.rows)["roi_enrichment"]
    quiet = trend_panels([{**row, "alert": False} for row in run.rows])["roi_enrichment"]
    assert not quiet[0].marked

    def band_pixels(png: bytes) -> int:
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        red = np.array([int(ALERT_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
        band = 255 + 0.25 * (red - 255)  # the band's colour: red at alpha 0.25 over white
        return int((np.abs(pixels - band).max(axis=-1) <= 3).sum())

    assert band_pixels(line_figure([panel])) > 500
    assert band_pixels(line_figure(quiet)) == 0


# ----------------------------------------------------------------------------- the combined page


class PageParser(HTMLParser):
    """Links, images by id, start tags, the checkpoint table's rows and the status box's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images: dict[str, str] = {}
        self.tags: list[str] = []
        self.rows: dict[str, str] = {}  # data-name -> the row's text
        self.wide_tables = 0
        self.status = ""
        self._row: str | None = None
        self._in_status = False
        self._divs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "a":
            self.links.append(attributes.get("href") or "")
        elif tag == "img":
            self.images[attributes.get("id") or ""] = attributes.get("src") or ""
        elif tag == "tr" and "data-name" in attributes:
            self._row = attributes["data-name"] or ""
            self.rows[self._row] = ""
        elif tag == "div":
            self._divs.append(attributes.get("class") or "")
            self._in_status = self._in_status or attributes.get("id") == "status"
        elif tag == "table":
            self.wide_tables += "wide" in self._divs[-1:]

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        elif tag == "div" and self._divs:
            self._divs.pop()
            self._in_status = False

    def handle_data(self, data: str) -> None:
        if self._row is not None:
            self.rows[self._row] += data
        if self._in_status:
            self.status += data


def parse(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser


def test_the_combined_report_links_every_checkpoint_and_escapes_names(run: Run) -> None:
    combined = combined_summary(run.rows, gate="any", exit_status=1, run={"command": ["lightning-sas", "audit"]})
    path = write_combined_report(combined, run.root / "report.html")
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert list(page.rows) == list(NAMES.values())  # by step, names as text
    assert "i" not in page.tags and "&lt;i&gt;best &amp; &#34;30&#34; #1" in text
    # Lightning's "=" stays as it is; markup, spaces, quotes and "#" are URL-escaped.
    hrefs = ["checkpoints/epoch=0-step=0/report.html", "checkpoints/epoch=0-step=10/report.html"]
    hrefs.append("checkpoints/%3Ci%3Ebest%20%26%20%2230%22%20%231/report.html")
    assert [link for link in page.links if link.endswith("report.html")] == hrefs
    for href in hrefs:
        assert (path.parent / urllib.parse.unquote(href)).is_file()  # the link reaches the checkpoint's report
    assert "(cached)" in page.rows[NAMES[10]] and "(cached)" not in page.rows[NAMES[0]]
    assert "shortcut" in page.rows[NAMES[30]] and "no shortcut" in page.rows[NAMES[0]]
    assert "Shortcut alert at 2 of 3 checkpoint(s)" in page.status and "exit status 1" in page.status
    trends = {key: src for key, src in page.images.items() if key.startswith("trend-")}
    assert set(trends) == {f"trend-{key}" for key in ("roi_enrichment", "roi_share", "faithfulness", "accuracy")}
    for src in trends.values():
        assert base64.b64decode(src.removeprefix("data:image/png;base64,")).startswith(PNG)
    assert page.wide_tables == 2  # the checkpoints and the run: both in scroll containers


def test_an_absolute_checkpoint_folder_is_linked_relative_to_the_report(run: Run) -> None:
    rows = [{**row, "folder": str(run.root / row["folder"])} for row in run.rows]
    combined = combined_summary(rows, gate="last", exit_status=1, run={})
    page = parse(write_combined_report(combined, run.root / "absolute.html").read_text(encoding="utf-8"))
    assert f"checkpoints/{NAMES[0]}/report.html" in page.links


# ----------------------------------------------------------------------------- the single report


def test_the_single_report_plots_the_mean_curves(run: Run, trust_summaries: dict[str, dict]) -> None:
    summary = run.summaries[30]
    steps = summary["faithfulness"]["steps"]
    for means in summary["methods"].values():
        deletion, insertion = means["deletion_curve"], means["insertion_curve"]
        assert len(deletion) == len(insertion) == steps + 1
        assert deletion[0] == pytest.approx(insertion[-1], abs=1e-5)  # both: the image itself
        # The trapezoid area under the mean curve is the mean of the probes' AUCs.
        assert np.trapezoid(deletion, dx=1 / steps) == pytest.approx(means["deletion_auc"], abs=1e-5)
    page = parse((run.root / "checkpoints" / NAMES[30] / "report.html").read_text(encoding="utf-8"))
    curves = page.images["faithfulness-curves"]
    assert base64.b64decode(curves.removeprefix("data:image/png;base64,")).startswith(PNG)
    assert page.wide_tables >= 4  # methods, run, probes, manifest
    # Without faithfulness: no curves, no plot.
    assert all("deletion_curve" not in means for means in trust_summaries["found"]["methods"].values())


def _screenshot_module():
    spec = importlib.util.spec_from_file_location(
        "screenshot_report", Path(__file__).parents[2] / "docs" / "screenshot_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Chromium (apt-get install -y chromium)")
def test_reports_stay_inside_a_1400_pixel_window(run: Run, tmp_path: Path) -> None:
    screenshot = _screenshot_module()
    single = run.root / "checkpoints" / NAMES[30] / "report.html"
    width, height = screenshot.page_size(single, chromium=CHROMIUM, width=1400, profile=tmp_path)
    assert width <= 1400 and height > 1400  # long file names and many columns: no sideways scroll
    combined = combined_summary(run.rows, gate="any", exit_status=1, run={})
    page = write_combined_report(combined, run.root / "screenshot.html")
    out = screenshot.screenshot(page, tmp_path / "combined.png", width=1400)
    with Image.open(out) as picture:
        assert picture.width == 1400 and picture.height > 1400  # the whole page, not one window
