"""What a command-line audit leaves behind: ``summary.json`` for machines, ``report.html`` for people.

``summary.json`` (schema version 1) holds the per-method means, the per-probe scores, the probe
manifest with content hashes, the skipped files, the versions and the command line; NaN is
written as ``null``. A probe's ``sha256`` is :func:`~lightning_sas.probes.content_hash` of the
tensor the model saw (as in the callback's manifest: it changes with ``--image-size`` and
``--mean``/``--std``); ``file_sha256`` is the hash of the file's bytes. With a previous summary
as baseline, the changes per method and per probe are added under ``"baseline"``.

An audit can be incomplete: ``"errors"`` maps each method that failed to its error (such a
method has no scores), and ``"nonfinite"`` maps a method to the files whose model output or
map was NaN/inf; those probes' scores are ``null`` (never a chance-level number) and are left
out of the method's mean. Each probe also records ``roi_area``, the share of the image its mask
covers: the chance level of its ``roi_share`` and ``roi_mass``.

``report.html`` is one self-contained file: every picture is embedded as a base64 PNG, the CSS
is inline, and every piece of text that comes from the user (file names, labels, class names,
paths, the command line) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lightning_sas.audit import AuditResult
from lightning_sas.probe_folder import SkippedFile
from lightning_sas.probes import Probes, class_label
from lightning_sas.render import overlay, to_display, to_uint8

__all__ = [
    "SUMMARY_VERSION",
    "SkippedFile",
    "build_summary",
    "compare_with_baseline",
    "crossed_methods",
    "json_number",
    "load_summary",
    "probe_pictures",
    "render_report",
    "report_title",
    "write_report",
    "write_summary",
]

#: Version of the ``summary.json`` layout; bumped when a field changes meaning.
SUMMARY_VERSION = 1
#: How many probes the shortcut message names per method.
TOP_PROBES = 3


def json_number(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` for NaN, infinity and ``None`` (JSON has no NaN)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def crossed_methods(method_means: Mapping[str, Mapping[str, float | None]], threshold: float) -> list[str]:
    """Methods whose mean ``roi_share`` is above ``threshold`` (methods without a mean never cross)."""
    return [
        name
        for name, means in method_means.items()
        if means.get("roi_share") is not None and float(means["roi_share"]) > threshold
    ]


def build_summary(
    result: AuditResult,
    probes: Probes,
    *,
    skipped: Sequence[SkippedFile],
    file_hashes: Sequence[str],
    threshold: float,
    class_names: Sequence[str] | None,
    run: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``summary.json`` content of one audit (without the baseline comparison).

    Args:
        result: The audit's maps and scores (with its ``errors`` and ``nonfinite`` probes).
        probes: The probes that were audited (``names`` are the file names).
        skipped: Files that were not audited, with the reason.
        file_hashes: SHA-256 of each probe's file bytes, in probe order.
        threshold: The shortcut threshold on the mean ``roi_share``.
        class_names: Names of the classes by index, or ``None``.
        run: What identifies the run: ``command``, ``checkpoint``, ``model``, ``model_class``,
            ``device``, ``image_size``, ``mean``, ``std``, ``target``, versions; copied to the
            top level.

    Returns:
        A JSON-serialisable dict (NaN already replaced by ``None``).
    """
    has_roi = probes.has_roi.cpu()
    roi_area = probes.roi.flatten(1).float().mean(dim=1).cpu()
    method_means: dict[str, dict[str, Any]] = {}
    for name in result.maps:
        shares = result.roi_share[name].float().cpu()
        masses = result.roi_mass[name].float().cpu()
        method_means[name] = {
            # nanmean: probes without a mask and probes with a non-finite map are left out.
            "roi_share": json_number(shares.nanmean()) if bool(has_roi.any()) else None,
            "roi_mass": json_number(masses.nanmean()) if bool(has_roi.any()) else None,
            "probes_with_mask": int(has_roi.sum()),
            "probes_scored": int((has_roi & ~torch.isnan(shares)).sum()),
        }
    nonfinite_positions = {name: list(positions) for name, positions in result.nonfinite.items() if positions}
    manifest = probes.manifest()
    for entry in manifest:
        entry["label_name"] = class_label(entry["label"], class_names) if entry["label"] >= 0 else None
    labels = probes.labels.cpu().tolist()
    predictions = result.predictions.cpu().tolist()
    confidences = result.confidences.float().cpu().tolist()
    targets = result.targets.cpu().tolist()
    probe_entries = []
    for position, entry in enumerate(manifest):
        label = int(labels[position])
        confidence = json_number(confidences[position])
        # Non-finite logits have no predicted class: argmax over NaN picks an arbitrary index.
        prediction = int(predictions[position]) if confidence is not None else None
        probe_entries.append(
            {
                "file": entry["name"],
                "sha256": entry["sha256"],
                "file_sha256": file_hashes[position],
                "label": label if label >= 0 else None,
                "label_name": class_label(label, class_names) if label >= 0 else None,
                "prediction": prediction,
                "prediction_name": class_label(prediction, class_names) if prediction is not None else None,
                "confidence": confidence,
                "target": int(targets[position]),
                "has_mask": bool(has_roi[position]),
                "roi_area": json_number(roi_area[position]) if bool(has_roi[position]) else None,
                "nonfinite": [name for name, positions in nonfinite_positions.items() if position in positions],
                "roi_share": {name: json_number(result.roi_share[name][position]) for name in result.maps},
                "roi_mass": {name: json_number(result.roi_mass[name][position]) for name in result.maps},
            }
        )
    crossed = crossed_methods(method_means, threshold)
    shortcuts = {}
    for name in crossed:
        ranked = sorted(
            (entry for entry in probe_entries if entry["roi_share"][name] is not None),
            key=lambda entry: entry["roi_share"][name],
            reverse=True,
        )
        shortcuts[name] = {
            "roi_share": method_means[name]["roi_share"],
            "top_probes": [
                {"file": entry["file"], "roi_share": entry["roi_share"][name]} for entry in ranked[:TOP_PROBES]
            ],
        }
    return {
        "version": SUMMARY_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **dict(run),
        "class_names": list(class_names) if class_names is not None else None,
        "seconds": json_number(result.seconds),
        "methods": method_means,
        "errors": dict(result.errors),
        "nonfinite": {
            name: [probes.names[position] for position in positions] for name, positions in nonfinite_positions.items()
        },
        "threshold": float(threshold),
        "threshold_checked": bool(has_roi.any()),
        "crossed": crossed,
        "shortcuts": shortcuts,
        "probes": probe_entries,
        "manifest": manifest,
        "skipped": [{"file": item.file, "reason": item.reason} for item in skipped],
        "baseline": None,
    }


def load_summary(path: os.PathLike[str] | str) -> dict[str, Any]:
    """Read a previous ``summary.json``.

    Raises:
        ValueError: If the file is not JSON or not a version-1 summary (the message says which).
        OSError: If the file cannot be read.
    """
    with open(path, encoding="utf-8") as file:
        try:
            summary = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    if not isinstance(summary, dict) or summary.get("version") != SUMMARY_VERSION:
        raise ValueError(f"{path} is not a lightning-sas summary.json of version {SUMMARY_VERSION}.")
    if not isinstance(summary.get("methods"), dict) or not isinstance(summary.get("probes"), list):
        raise ValueError(f"{path} lacks the 'methods' or 'probes' of a lightning-sas summary.")
    return summary


def _change(current: float | None, previous: Any) -> float | None:
    if current is None or not isinstance(previous, int | float) or isinstance(previous, bool):
        return None
    return json_number(current - float(previous))


def compare_with_baseline(
    summary: Mapping[str, Any], baseline: Mapping[str, Any], *, baseline_path: str, tolerance: float
) -> dict[str, Any]:
    """Changes of this audit against a previous one, matched by method name and probe file name.

    A probe is flagged for a method when its ``roi_share`` changed by more than ``tolerance``
    (either way); a method when its mean did. Predictions that changed and probes whose
    content changed (same file name, other content hash) are marked too.

    Args:
        summary: This audit's summary (from :func:`build_summary`).
        baseline: The previous summary (from :func:`load_summary`).
        baseline_path: Where the previous summary was read from (recorded).
        tolerance: Smallest absolute ``roi_share`` change that is flagged.

    Returns:
        The ``"baseline"`` entry of ``summary.json``.
    """
    previous_methods = baseline.get("methods", {})
    methods: dict[str, Any] = {}
    flagged_methods = []
    for name, means in summary["methods"].items():
        previous = previous_methods.get(name) if isinstance(previous_methods.get(name), dict) else {}
        methods[name] = {
            score: {
                "previous": json_number(previous.get(score)) if isinstance(previous.get(score), int | float) else None,
                "current": means[score],
                "change": _change(means[score], previous.get(score)),
            }
            for score in ("roi_share", "roi_mass")
        }
        share_change = methods[name]["roi_share"]["change"]
        if share_change is not None and abs(share_change) > tolerance:
            flagged_methods.append(name)
    previous_probes = {
        entry["file"]: entry for entry in baseline.get("probes", []) if isinstance(entry, dict) and "file" in entry
    }
    probes = []
    for entry in summary["probes"]:
        previous = previous_probes.get(entry["file"])
        if previous is None:
            continue
        previous_shares = previous.get("roi_share") if isinstance(previous.get("roi_share"), dict) else {}
        previous_masses = previous.get("roi_mass") if isinstance(previous.get("roi_mass"), dict) else {}
        share_changes = {name: _change(value, previous_shares.get(name)) for name, value in entry["roi_share"].items()}
        probes.append(
            {
                "file": entry["file"],
                "content_changed": previous.get("sha256") != entry["sha256"],
                "prediction_changed": previous.get("prediction") != entry["prediction"],
                "previous_prediction": previous.get("prediction"),
                "roi_share": share_changes,
                "roi_mass": {
                    name: _change(value, previous_masses.get(name)) for name, value in entry["roi_mass"].items()
                },
                "flagged": [
                    name for name, change in share_changes.items() if change is not None and abs(change) > tolerance
                ],
            }
        )
    current_files = {entry["file"] for entry in summary["probes"]}
    return {
        "file": baseline_path,
        "created": baseline.get("created"),
        "checkpoint": baseline.get("checkpoint"),
        "tolerance": float(tolerance),
        "methods": methods,
        "flagged_methods": flagged_methods,
        "probes": probes,
        "flagged_probes": [entry["file"] for entry in probes if entry["flagged"] or entry["prediction_changed"]],
        "added": sorted(current_files - set(previous_probes)),
        "removed": sorted(set(previous_probes) - current_files),
    }


def write_summary(summary: Mapping[str, Any], path: os.PathLike[str] | str) -> Path:
    """Write ``summary`` as indented JSON (strict: a NaN that slipped through raises ``ValueError``)."""
    destination = Path(path)
    destination.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return destination


# ----------------------------------------------------------------------------- HTML report


def png_data_uri(picture: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of an RGB uint8 ``[H, W, 3]`` array."""
    buffer = io.BytesIO()
    Image.fromarray(picture, mode="RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def probe_pictures(
    result: AuditResult,
    probes: Probes,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> list[dict[str, np.ndarray]]:
    """Per probe: ``"image"`` and one heatmap overlay per method, as RGB uint8 arrays."""
    display = to_display(probes.images, mean, std)
    layers = {"image": display}
    for name, maps in result.maps.items():
        layers[name] = overlay(display, maps.to(display.device))
    as_uint8 = {name: to_uint8(pictures) for name, pictures in layers.items()}
    return [{name: pictures[position] for name, pictures in as_uint8.items()} for position in range(len(probes))]


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: middle; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.thumb { width: 128px; height: auto; image-rendering: pixelated; display: block; }
.status { padding: 0.7em 1em; border-radius: 4px; font-weight: 600; }
.ok { background: #e6f4ea; color: #1e5631; } .alert { background: #fde7e9; color: #8a1020; }
.neutral { background: #eef1f5; color: #333; }
.flag { background: #fff3cd; } .crossed { color: #8a1020; font-weight: 600; }
td.nonfinite { background: #f3e8fd; color: #5b2a86; } td.chance { color: #666; }
.meta td:first-child { font-weight: 600; } code { font-size: 0.9em; word-break: break-all; }
"""


def _format(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _format_signed(change: float | None) -> str:
    return "–" if change is None else f"{change:+.3f}"


def _format_change(change: float | None) -> str:
    return "" if change is None else f" ({change:+.3f})"


def _status(summary: Mapping[str, Any]) -> str:
    threshold = summary["threshold"]
    errors = summary.get("errors") or {}
    parts = []
    if errors:
        failed = "; ".join(f"<b>{escape(name)}</b> failed ({escape(message)})" for name, message in errors.items())
        parts.append(f"<p>Audit incomplete: {failed}. Failed methods have no scores.</p>")
    if not summary["threshold_checked"]:
        parts.append(
            f"<p>No probe has a mask: there is nothing to check against the shortcut threshold {threshold:g}.</p>"
        )
        css = "neutral"
    elif not summary["crossed"]:
        parts.append(f"<p>No shortcut threshold crossed: every method's mean roi_share is at most {threshold:g}.</p>")
        css = "ok"
    else:
        lines = []
        for name, shortcut in summary["shortcuts"].items():
            top = ", ".join(f"{escape(item['file'])} ({item['roi_share']:.3f})" for item in shortcut["top_probes"])
            lines.append(
                f"<li><b>{escape(name)}</b>: mean roi_share {shortcut['roi_share']:.3f} &gt; {threshold:g}; "
                f"highest: {top}</li>"
            )
        parts.append(f"Shortcut threshold crossed<ul>{''.join(lines)}</ul>")
        css = "alert"
    if errors:
        css = "alert"
    return f'<div class="status {css}" id="status">{"".join(parts)}</div>'


def _problems_section(summary: Mapping[str, Any]) -> str:
    """Failed methods and probes with non-finite outputs or maps (empty when there are none)."""
    errors = summary.get("errors") or {}
    nonfinite = summary.get("nonfinite") or {}
    if not errors and not nonfinite:
        return ""
    items = [
        f'<li class="error" data-method="{escape(name)}"><b>{escape(name)}</b> failed and has no maps: '
        f"<code>{escape(message)}</code></li>"
        for name, message in errors.items()
    ]
    items += [
        f'<li class="nonfinite" data-method="{escape(name)}"><b>{escape(name)}</b>: the model\'s output or the '
        f"map is not finite (NaN/inf) for {len(files)} probe(s), whose scores are left empty (–) and out "
        f"of the mean: {escape(', '.join(files))}</li>"
        for name, files in nonfinite.items()
    ]
    return f'<h2>Problems</h2><ul id="problems">{"".join(items)}</ul>'


def _meta_table(summary: Mapping[str, Any]) -> str:
    size = summary.get("image_size")
    rows = [
        ("checkpoint", summary.get("checkpoint")),
        ("model", summary.get("model")),
        ("output", summary.get("output") if summary.get("output") is not None else "the model's output"),
        ("created", summary.get("created")),
        ("device", summary.get("device")),
        ("image size", " x ".join(map(str, size)) if isinstance(size, list) else size),
        ("channels / mean / std", f"{summary.get('channels')} / {summary.get('mean')} / {summary.get('std')}"),
        ("explained class", summary.get("target")),
        (
            "lightning_sas / torch / lightning",
            f"{summary.get('lightning_sas')} / {summary.get('torch')} / {summary.get('lightning')}",
        ),
        ("command", " ".join(str(part) for part in summary.get("command", []))),
    ]
    cells = "".join(f"<tr><td>{escape(key)}</td><td><code>{escape(str(value))}</code></td></tr>" for key, value in rows)
    return f'<table class="meta" id="meta">{cells}</table>'


def _summary_table(summary: Mapping[str, Any]) -> str:
    baseline = summary.get("baseline")
    header = "<th>method</th><th>mean roi_share</th><th>mean roi_mass</th><th>probes with a mask</th><th>status</th>"
    if baseline:
        header += "<th>roi_share change</th><th>roi_mass change</th>"
    rows = []
    for name, means in summary["methods"].items():
        crossed = name in summary["crossed"]
        if crossed:
            status = "crossed"
        elif means["roi_share"] is not None:
            status = "ok"
        else:
            status = "no finite score" if means["probes_with_mask"] else "no mask"
        cells = (
            f"<td>{escape(name)}</td><td class='num'>{_format(means['roi_share'])}</td>"
            f"<td class='num'>{_format(means['roi_mass'])}</td><td class='num'>{means['probes_with_mask']}</td>"
            f"<td class='{'crossed' if crossed else ''}'>{status}</td>"
        )
        row_class = ""
        if baseline:
            changes = baseline["methods"].get(name, {})
            share = changes.get("roi_share", {}).get("change")
            mass = changes.get("roi_mass", {}).get("change")
            cells += f"<td class='num'>{_format_signed(share)}</td><td class='num'>{_format_signed(mass)}</td>"
            if name in baseline["flagged_methods"]:
                row_class = " flag"
        rows.append(f'<tr class="method{row_class}" data-method="{escape(name)}">{cells}</tr>')
    for name in summary.get("errors") or {}:
        cells = f"<td>{escape(name)}</td><td class='num'>–</td><td class='num'>–</td><td class='num'>–</td>"
        cells += "<td class='crossed'>failed</td>" + ("<td></td><td></td>" if baseline else "")
        rows.append(f'<tr class="method failed" data-method="{escape(name)}">{cells}</tr>')
    return f'<table id="summary"><tr>{header}</tr>{"".join(rows)}</table>'


def _baseline_section(summary: Mapping[str, Any]) -> str:
    baseline = summary.get("baseline")
    if not baseline:
        return ""
    items = [
        f"<li>previous summary: <code>{escape(str(baseline['file']))}</code> "
        f"(created {escape(str(baseline.get('created')))}, checkpoint "
        f"<code>{escape(str(baseline.get('checkpoint')))}</code>)</li>",
        f"<li>changes in roi_share larger than {baseline['tolerance']:g} are flagged "
        f"(highlighted); flagged probes: {len(baseline['flagged_probes'])}</li>",
    ]
    if baseline["added"]:
        items.append(f"<li>new probes: {escape(', '.join(baseline['added']))}</li>")
    if baseline["removed"]:
        items.append(f"<li>probes no longer present: {escape(', '.join(baseline['removed']))}</li>")
    changed = [entry["file"] for entry in baseline["probes"] if entry["content_changed"]]
    if changed:
        items.append(f"<li>probes whose content changed: {escape(', '.join(changed))}</li>")
    return f'<h2>Against the baseline</h2><ul id="baseline">{"".join(items)}</ul>'


def _skipped_section(summary: Mapping[str, Any]) -> str:
    if not summary["skipped"]:
        return ""
    rows = "".join(
        f'<tr class="skipped"><td>{escape(item["file"])}</td><td>{escape(item["reason"])}</td></tr>'
        for item in summary["skipped"]
    )
    return (
        f"<h2>Skipped files ({len(summary['skipped'])})</h2>"
        f'<table id="skipped"><tr><th>file</th><th>reason</th></tr>{rows}</table>'
    )


def _probe_table(summary: Mapping[str, Any], pictures: Sequence[Mapping[str, np.ndarray]]) -> str:
    methods = list(summary["methods"])
    baseline = summary.get("baseline")
    changes = {entry["file"]: entry for entry in baseline["probes"]} if baseline else {}
    class_names = summary.get("class_names")
    top_files = {
        (name, item["file"]) for name, shortcut in summary["shortcuts"].items() for item in shortcut["top_probes"]
    }
    header = "<th>file</th><th>image</th>"
    header += "".join(f"<th>{escape(name)}</th>" for name in methods)
    header += "<th>true class</th><th>predicted class</th><th>confidence</th><th>ROI area (chance)</th>"
    header += "".join(f"<th>{escape(name)} roi_share</th><th>{escape(name)} roi_mass</th>" for name in methods)
    rows = []
    for entry, picture in zip(summary["probes"], pictures, strict=True):
        change = changes.get(entry["file"], {})
        flagged = set(change.get("flagged", []))
        nonfinite = set(entry.get("nonfinite") or [])
        cells = f"<td>{escape(entry['file'])}</td>"
        cells += f'<td><img class="thumb" alt="image" src="{png_data_uri(picture["image"])}"></td>'
        cells += "".join(
            f'<td><img class="thumb" alt="{escape(name)}" src="{png_data_uri(picture[name])}"></td>' for name in methods
        )
        label = "?" if entry["label_name"] is None else entry["label_name"]
        predicted = "–" if entry["prediction_name"] is None else entry["prediction_name"]
        if change.get("prediction_changed"):
            previous = change.get("previous_prediction")
            was = class_label(previous, class_names) if isinstance(previous, int) else "?"
            predicted += f" (was {was})"
        cells += f"<td>{escape(label)}</td>"
        cells += f"<td{' class=flag' if change.get('prediction_changed') else ''}>{escape(predicted)}</td>"
        cells += f"<td class='num'>{_format(entry['confidence'])}</td>"
        cells += f"<td class='num chance'>{_format(entry.get('roi_area'))}</td>"
        for name in methods:
            marks = []
            if name in flagged:
                marks.append("flag")
            if (name, entry["file"]) in top_files:
                marks.append("crossed")
            title = ""
            if name in nonfinite:
                # Never a number for a NaN map: an empty cell, marked, instead of a chance-level score.
                marks.append("nonfinite")
                title = " title='the model output or the map is not finite (NaN/inf)'"
            share_change = change.get("roi_share", {}).get(name)
            mass_change = change.get("roi_mass", {}).get(name)
            cells += (
                f"<td class='num {' '.join(marks)}'{title}>{_format(entry['roi_share'][name])}"
                f"{_format_change(share_change)}</td>"
            )
            cells += (
                f"<td class='num{' nonfinite' if name in nonfinite else ''}'{title}>"
                f"{_format(entry['roi_mass'][name])}{_format_change(mass_change)}</td>"
            )
        row_class = "probe flag" if flagged or change.get("prediction_changed") else "probe"
        if nonfinite:
            row_class += " nonfinite"
        rows.append(f'<tr class="{row_class}" data-file="{escape(entry["file"])}">{cells}</tr>')
    return f'<table id="probes"><tr>{header}</tr>{"".join(rows)}</table>'


def _manifest_table(summary: Mapping[str, Any]) -> str:
    """The probe manifest: what identifies the probe set, with class names rather than indices."""
    class_names = summary.get("class_names")
    file_hashes = {entry["file"]: entry.get("file_sha256") or "" for entry in summary["probes"]}
    rows = "".join(
        f'<tr class="manifest" data-file="{escape(str(item["name"]))}"><td>{escape(str(item["name"]))}</td>'
        f"<td>{escape(class_label(item['label'], class_names))}</td>"
        f"<td><code>{escape(item['sha256'][:16])}</code></td>"
        f"<td><code>{escape(file_hashes.get(item['name'], '')[:16])}</code></td></tr>"
        for item in summary["manifest"]
    )
    return (
        "<h2>Probe manifest</h2>"
        '<table id="manifest"><tr><th>probe</th><th>true class</th><th>sha256 of the input (prefix)</th>'
        f"<th>sha256 of the file (prefix)</th></tr>{rows}</table>"
    )


def report_title(summary: Mapping[str, Any]) -> str:
    """``lightning-sas audit: <model class> from <checkpoint path>``.

    Example:
        >>> report_title({"model_class": "LitClassifier", "checkpoint": "runs/last.ckpt"})
        'lightning-sas audit: LitClassifier from runs/last.ckpt'
    """
    model = summary.get("model_class") or str(summary.get("model", "")).rpartition(":")[2] or "model"
    return f"lightning-sas audit: {model} from {summary.get('checkpoint')}"


def render_report(summary: Mapping[str, Any], pictures: Sequence[Mapping[str, np.ndarray]]) -> str:
    """The HTML report of one audit.

    Args:
        summary: The audit's summary (with its baseline comparison, if any).
        pictures: Per probe (same order as ``summary["probes"]``): ``"image"`` and one overlay
            per method (from :func:`probe_pictures`).

    Returns:
        One self-contained HTML document.
    """
    title = report_title(summary)
    probes_with_mask = sum(entry["has_mask"] for entry in summary["probes"])
    areas = [entry["roi_area"] for entry in summary["probes"] if entry.get("roi_area") is not None]
    chance = f" (here {sum(areas) / len(areas):.3f} on average)" if areas else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"{_status(summary)}"
        f"{_problems_section(summary)}"
        f"<h2>Summary</h2>"
        f"<p>{len(summary['probes'])} probes audited ({probes_with_mask} with a mask), "
        f"{len(summary['skipped'])} skipped; shortcut threshold on the mean roi_share: {summary['threshold']:g}. "
        "roi_share: share of the map's |mask| highest-ranked pixels inside the mask; roi_mass: share of "
        f"the map's total mass inside the mask; chance level is the mask's area share{chance}.</p>"
        f"{_summary_table(summary)}"
        f"{_meta_table(summary)}"
        f"{_baseline_section(summary)}"
        f"{_skipped_section(summary)}"
        f"<h2>Probes</h2>{_probe_table(summary, pictures)}"
        f"{_manifest_table(summary)}"
        "</body></html>\n"
    )


def write_report(
    summary: Mapping[str, Any], pictures: Sequence[Mapping[str, np.ndarray]], path: os.PathLike[str] | str
) -> Path:
    """Write :func:`render_report`'s document to ``path``."""
    destination = Path(path)
    destination.write_text(render_report(summary, pictures), encoding="utf-8")
    return destination
