"""What a command-line audit leaves behind: ``summary.json`` for machines, ``report.html`` for people.

``summary.json`` (schema version 3) holds the per-method means, the per-probe scores, the probe
manifest with content hashes, the skipped files, the versions and the command line; NaN is
written as ``null``. A probe's ``sha256`` is :func:`~lightning_sas.probes.content_hash` of the
tensor the model saw (as in the callback's manifest: it changes with ``--image-size`` and
``--mean``/``--std``); ``file_sha256`` is the hash of the file's bytes. With a previous summary
as baseline, the changes per method and per probe are added under ``"baseline"``.

The shortcut decision is ``"verdict"``: what :func:`lightning_sas.verdict.decide` concluded
from the per-probe scores, the intervention's flip rate and the sanity check under the alert
rule (``"rule"``), shared with the training callback: ``status`` (``"shortcut"``,
``"no shortcut"`` or ``"cannot tell"``), ``alert``, one ``reasons`` sentence per crossed
criterion, ``crossed`` as ``{"criterion", "method"}`` pairs (``method`` is ``null`` for the
flip rate), the criteria ``checked``, ``not_checkable`` (criterion -> why), ``excluded``
(method -> why it did not vote), the ``scores`` the rule read, ``input_independent`` (the model
gave every probe the same output), and per crossed method its ``top_probes``.

Besides ``roi_share``/``roi_mass``, each method has ``roi_enrichment`` (the rule's pooled
statistic, :func:`lightning_sas.metrics.roi_enrichment`), ``no_evidence`` (the probes whose map
was flat, left out of its scores) and ``roi_lift`` (``roi_share`` over its chance
level, the ROI's area share) per probe and as a mean; with faithfulness on (``"faithfulness"``
not ``null``), ``deletion_auc``/``insertion_auc`` per probe and as means (with
``insertion_minus_deletion``); with artifacts, ``"intervention"`` (flip rate, mean
probability change, per-probe flips); with the sanity check, ``"sanity"`` (similarity per
randomisation stage and the flagged methods).

Version 2 replaced version 1's ``threshold``, ``threshold_checked``, ``crossed`` and
``shortcuts`` by ``verdict``; version 3 added the verdict's ``status`` and the enrichment, and
replaced the rule's ``min_lift`` by ``min_enrichment``; :func:`load_summary` reads every
version as a baseline.

An audit can be incomplete: ``"errors"`` maps each method that failed (and ``faithfulness``
or ``sanity`` when that part failed) to its error (a failed method has no scores), and
``"nonfinite"`` maps a method to the files whose model output or map was NaN/inf; those
probes' scores are ``null`` (never a chance-level number) and are left out of the method's
mean. Each probe also records ``roi_area``, the share of the image its mask covers: the chance
level of its ``roi_share`` and ``roi_mass``.

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
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from lightning_sas.audit import AuditResult
from lightning_sas.probe_folder import SkippedFile
from lightning_sas.probes import Probes, class_label
from lightning_sas.render import overlay, to_display, to_uint8
from lightning_sas.verdict import AlertRule, Verdict

if TYPE_CHECKING:
    from lightning_sas.faithfulness import Faithfulness
    from lightning_sas.sanity import SanityResult

__all__ = [
    "AUDIT_PARTS",
    "SUMMARY_VERSION",
    "SkippedFile",
    "build_summary",
    "compare_with_baseline",
    "json_number",
    "load_summary",
    "method_errors",
    "probe_pictures",
    "put_in_place",
    "render_report",
    "report_title",
    "rule_record",
    "rule_text",
    "staging_folder",
    "verdict_text",
    "write_report",
    "write_summary",
]

#: Version of the ``summary.json`` layout; bumped when a field changes meaning.
SUMMARY_VERSION = 3
#: Summary versions :func:`load_summary` accepts as a baseline.
READABLE_VERSIONS = (1, 2, 3)
#: How many probes the shortcut message names per method.
TOP_PROBES = 3
#: Names in ``"errors"`` that are parts of the audit rather than methods.
AUDIT_PARTS = ("faithfulness", "sanity", "intervention")


def json_number(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` for NaN, infinity and ``None`` (JSON has no NaN)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def method_errors(summary: Mapping[str, Any]) -> dict[str, str]:
    """The ``"errors"`` of failed methods (without those of faithfulness or the sanity check)."""
    return {name: message for name, message in (summary.get("errors") or {}).items() if name not in AUDIT_PARTS}


def rule_record(rule: AlertRule) -> dict[str, Any]:
    """The alert rule as it goes into ``summary.json``.

    Example:
        >>> rule_record(AlertRule(min_enrichment=0.3))
        {'min_enrichment': 0.3, 'min_flip_rate': 0.1, 'max_roi_share': None, 'min_roi_pixels': 9, 'voters': None}
    """
    return {
        "min_enrichment": dict(rule.min_enrichment)
        if isinstance(rule.min_enrichment, Mapping)
        else rule.min_enrichment,
        "min_flip_rate": rule.min_flip_rate,
        "max_roi_share": rule.max_roi_share,
        "min_roi_pixels": rule.min_roi_pixels,
        "voters": None if rule.voters is None else list(rule.voters),
    }


def rule_text(rule: Mapping[str, float | None]) -> str:
    """The alert rule in words.

    Example:
        >>> rule_text({"min_enrichment": 0.3, "min_flip_rate": 0.25, "max_roi_share": None})
        "a voting method's ROI enrichment above 0.3, or the artifact's flip rate above 0.25"
    """
    parts = []
    thresholds = rule.get("min_enrichment")
    if isinstance(thresholds, Mapping):
        listed = ", ".join(
            f"{value:g} ({'other methods' if name == '*' else name})" for name, value in thresholds.items()
        )
        parts.append(f"a voting method's ROI enrichment above its threshold: {listed}")
    elif thresholds is not None:
        parts.append(f"a voting method's ROI enrichment above {thresholds:g}")
    if rule.get("max_roi_share") is not None:
        parts.append(f"a method's mean roi_share above {rule['max_roi_share']:g}")
    if rule.get("min_flip_rate") is not None:
        parts.append(f"the artifact's flip rate above {rule['min_flip_rate']:g}")
    if not parts:
        return "no criterion (every criterion is off)"
    return ", ".join(parts[:-1]) + (", or " if len(parts) > 1 else "") + parts[-1]


def verdict_text(summary: Mapping[str, Any]) -> str:
    """One line on the verdict for people (the top probes of each crossed method included)."""
    verdict = summary["verdict"]
    if not verdict["alert"]:
        return str(verdict["summary"])
    reasons = list(verdict["reasons"])
    for method, top in verdict["top_probes"].items():
        files = ", ".join(f"{item['file']} {item['roi_share']:.3f}" for item in top if item["roi_share"] is not None)
        if files:
            reasons.append(f"{method}'s highest roi_share: {files}")
    return "SHORTCUT: " + "; ".join(reasons)


def _top_probes(verdict: Verdict, probe_entries: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per method that crossed a criterion, the probes with the highest score of that criterion."""
    top: dict[str, list[dict[str, Any]]] = {}
    for criterion, method in verdict.crossed:
        if method is None or method in top or criterion not in ("roi_enrichment", "roi_share"):
            continue
        ranked = sorted(
            (entry for entry in probe_entries if entry["roi_share"].get(method) is not None),
            key=lambda entry: entry["roi_share"][method],
            reverse=True,
        )
        top[method] = [
            {"file": entry["file"], "roi_share": entry["roi_share"][method], "roi_lift": entry["roi_lift"][method]}
            for entry in ranked[:TOP_PROBES]
        ]
    return top


def _per_probe(values: torch.Tensor | None, position: int) -> float | None:
    return None if values is None else json_number(values[position])


def build_summary(
    result: AuditResult,
    probes: Probes,
    *,
    skipped: Sequence[SkippedFile],
    file_hashes: Sequence[str],
    verdict: Verdict,
    rule: AlertRule,
    class_names: Sequence[str] | None,
    run: Mapping[str, Any],
    faithfulness: Faithfulness | None = None,
    artifacts: Mapping[str, Any] | None = None,
    sanity: SanityResult | None = None,
    method_details: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` content of one audit (without the baseline comparison).

    Args:
        result: The audit's maps and scores (with its ``errors``, ``nonfinite`` probes,
            faithfulness curves and intervention).
        probes: The probes that were audited (``names`` are the file names).
        skipped: Files that were not audited, with the reason.
        file_hashes: SHA-256 of each probe's file bytes, in probe order.
        verdict: What :func:`~lightning_sas.verdict.decide` concluded for this audit.
        rule: The alert rule it applied.
        class_names: Names of the classes by index, or ``None``.
        run: What identifies the run: ``command``, ``checkpoint``, ``model``, ``model_class``,
            ``device``, ``image_size``, ``mean``, ``std``, ``target``, versions; copied to the
            top level.
        faithfulness: The faithfulness settings, when faithfulness was measured.
        artifacts: What describes the artifacts (folder, files, class, trials, seed), when the
            intervention was measured; completed with its results.
        sanity: The sanity check's result, when it ran.
        method_details: Per method, more entries for its ``"methods"`` record (e.g. Grad-CAM's
            ``{"layer": "features.2"}``, the layer it explained); methods without maps get none.

    Returns:
        A JSON-serialisable dict (NaN already replaced by ``None``).
    """
    has_roi = probes.has_roi.cpu()
    roi_area = probes.roi.flatten(1).float().mean(dim=1).cpu()
    chance = torch.where(has_roi, roi_area, torch.full_like(roi_area, float("nan")))
    means = result.mean_scores(rule.min_roi_pixels)
    faithfulness_means = result.faithfulness_means()
    method_means: dict[str, dict[str, Any]] = {}
    for name in result.maps:
        shares = result.roi_share[name].float().cpu()
        scores = means.get(name, {})
        method_means[name] = {
            # Means over the probes with a mask and a finite map (None when there are none).
            "roi_enrichment": json_number(scores.get("roi_enrichment")),
            "roi_share": json_number(scores.get("roi_share")),
            "roi_lift": json_number(scores.get("roi_lift")),
            "roi_mass": json_number(scores.get("roi_mass")),
            "probes_with_mask": int(has_roi.sum()),
            "probes_scored": int((has_roi & ~torch.isnan(shares)).sum()),
            # Flat (constant) maps: no evidence, left out of the scores and the rule.
            "no_evidence": [probes.names[position] for position in result.flat.get(name, [])],
            **dict((method_details or {}).get(name, {})),
        }
        if faithfulness is not None:
            for key in ("deletion_auc", "insertion_auc", "insertion_minus_deletion"):
                method_means[name][key] = json_number(faithfulness_means.get(name, {}).get(key))
    nonfinite_positions = {name: list(positions) for name, positions in result.nonfinite.items() if positions}
    manifest = probes.manifest()
    for entry in manifest:
        entry["label_name"] = class_label(entry["label"], class_names) if entry["label"] >= 0 else None
    labels = probes.labels.cpu().tolist()
    predictions = result.predictions.cpu().tolist()
    confidences = result.confidences.float().cpu().tolist()
    targets = result.targets.cpu().tolist()
    lifts = {name: result.roi_share[name].float().cpu() / chance for name in result.maps}
    curves = {name: result.faithfulness.get(name) for name in result.maps} if faithfulness is not None else {}
    deletion = {name: None if c is None else c.deletion_auc.float().cpu() for name, c in curves.items()}
    insertion = {name: None if c is None else c.insertion_auc.float().cpu() for name, c in curves.items()}
    intervention = result.intervention
    probe_entries = []
    for position, entry in enumerate(manifest):
        label = int(labels[position])
        confidence = json_number(confidences[position])
        # Non-finite logits have no predicted class: argmax over NaN picks an arbitrary index.
        prediction = int(predictions[position]) if confidence is not None else None
        probe: dict[str, Any] = {
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
            "roi_lift": {name: json_number(lifts[name][position]) for name in result.maps},
            "roi_mass": {name: json_number(result.roi_mass[name][position]) for name in result.maps},
        }
        if faithfulness is not None:
            probe["deletion_auc"] = {name: _per_probe(values, position) for name, values in deletion.items()}
            probe["insertion_auc"] = {name: _per_probe(values, position) for name, values in insertion.items()}
        if intervention is not None:
            flipped = intervention.flipped[position].cpu()
            eligible = bool(intervention.eligible[position])
            probe["intervention"] = {
                "eligible": eligible,
                # Pastes that moved the prediction to the artifact's class (only counted for eligible probes).
                "flipped": int(flipped.sum()) if eligible else None,
                "trials": int(flipped.numel()),
                "probability_change": json_number(intervention.probability_change[position].float().mean()),
            }
        if sanity is not None:
            probe["sanity_similarity"] = {
                name: [json_number(value) for value in values[:, position].tolist()]
                for name, values in sanity.per_probe.items()
            }
        probe_entries.append(probe)
    intervention_record = None
    if intervention is not None:
        target_class = int(intervention.target_class)
        intervention_record = {
            **dict(artifacts or {}),
            "target_class": target_class,
            "target_class_name": class_label(target_class, class_names),
            "flip_rate": json_number(intervention.flip_rate),
            "mean_probability_change": json_number(intervention.mean_probability_change),
            "eligible_probes": int(intervention.eligible.sum()),
            "probes_flipped": int((intervention.flipped & intervention.eligible[:, None]).any(dim=1).sum()),
        }
    sanity_record = None
    if sanity is not None:
        sanity_record = {
            "stages": [list(stage) for stage in sanity.stages],
            "threshold": float(sanity.threshold),
            "similarity": {
                name: [json_number(value) for value in values.tolist()] for name, values in sanity.similarity.items()
            },
            "flagged": list(sanity.flagged),
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
        "verdict": {
            "alert": bool(verdict.alert),
            "status": verdict.status,
            "summary": verdict.summary(),
            "reasons": list(verdict.reasons),
            "crossed": [{"criterion": criterion, "method": method} for criterion, method in verdict.crossed],
            "checked": list(verdict.checked),
            "not_checkable": dict(verdict.not_checkable),
            "excluded": dict(verdict.excluded),
            "scores": verdict.scores,
            "input_independent": result.input_independent(),
            "rule": rule_record(rule),
            "top_probes": _top_probes(verdict, probe_entries),
        },
        "faithfulness": (
            None if faithfulness is None else {"steps": faithfulness.steps, "baseline": _baseline_name(faithfulness)}
        ),
        "intervention": intervention_record,
        "sanity": sanity_record,
        "probes": probe_entries,
        "manifest": manifest,
        "skipped": [{"file": item.file, "reason": item.reason} for item in skipped],
        "baseline": None,
    }


def _baseline_name(faithfulness: Faithfulness) -> str | float:
    baseline = faithfulness.baseline
    return baseline if isinstance(baseline, str | int | float) else "tensor"


def load_summary(path: os.PathLike[str] | str) -> dict[str, Any]:
    """Read a previous ``summary.json``.

    Raises:
        ValueError: If the file is not JSON or not a summary of a readable version (1, 2 or 3; the
            message says which).
        OSError: If the file cannot be read.
    """
    with open(path, encoding="utf-8") as file:
        try:
            summary = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    if not isinstance(summary, dict) or summary.get("version") not in READABLE_VERSIONS:
        versions = " or ".join(map(str, READABLE_VERSIONS))
        raise ValueError(f"{path} is not a lightning-sas summary.json of version {versions}.")
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


def _failed(name: str, method_failed: str) -> str:
    """How the report says that the audit part or method ``name`` failed."""
    if name not in AUDIT_PARTS:
        return method_failed
    return "could not be measured" if name == "intervention" else "could not be scored"


def _status(summary: Mapping[str, Any]) -> str:
    """The verdict box at the top: alert, clean, or nothing to check; failures and sanity flags too."""
    verdict = summary["verdict"]
    errors = summary.get("errors") or {}
    parts = []
    if errors:
        failed = "; ".join(
            f"<b>{escape(name)}</b> {_failed(name, 'failed')} ({escape(message)})"
            for name, message in errors.items()
        )
        parts.append(f"<p>Audit incomplete: {failed}. Failed methods have no scores.</p>")
    rule = f"The alert rule: {escape(rule_text(verdict['rule']))}."
    if verdict["alert"]:
        lines = []
        for reason in verdict["reasons"]:
            lines.append(f"<li>{escape(reason)}</li>")
        for method, top in verdict["top_probes"].items():
            files = ", ".join(
                f"{escape(item['file'])} ({_format(item['roi_share'])}, lift {_format(item['roi_lift'], 1)})"
                for item in top
            )
            lines.append(f"<li><b>{escape(method)}</b>: highest roi_share: {files}</li>")
        parts.append(f"<p>Shortcut alert</p><ul>{''.join(lines)}</ul><p>{rule}</p>")
        css = "alert"
    elif verdict.get("not_checkable"):
        reasons = "".join(f"<li>{escape(reason)}</li>" for reason in verdict["not_checkable"].values())
        parts.append(f"<p>The audit cannot tell</p><ul>{reasons}</ul><p>{rule}</p>")
        css = "alert"
    elif not verdict["checked"]:
        parts.append(
            "<p>Nothing to check: no probe has a mask and no artifact was given (--masks, --artifacts).</p>"
            f"<p>{rule}</p>"
        )
        css = "neutral"
    else:
        parts.append(
            f"<p>No shortcut criterion crossed (checked: {escape(', '.join(verdict['checked']))}).</p><p>{rule}</p>"
        )
        css = "ok"
    sanity = summary.get("sanity")
    if sanity and sanity["flagged"]:
        parts.append(f"<p>Sanity check: {escape(_sanity_warning(sanity))}</p>")
    if errors:
        css = "alert"
    return f'<div class="status {css}" id="status">{"".join(parts)}</div>'


def _sanity_warning(sanity: Mapping[str, Any]) -> str:
    flagged = sanity["flagged"]
    finals = ", ".join(f"{name} {_format(sanity['similarity'][name][-1], 2)}" for name in flagged)
    return (
        f"the maps of {', '.join(flagged)} do not depend on the model's weights: with every parameter "
        f"randomised they keep a rank similarity above {sanity['threshold']:g} to the trained model's maps "
        f"({finals}); they explain the image, not the model. A warning, not an alert."
    )


def _problems_section(summary: Mapping[str, Any]) -> str:
    """Failed methods and probes with non-finite outputs or maps (empty when there are none)."""
    errors = summary.get("errors") or {}
    nonfinite = summary.get("nonfinite") or {}
    if not errors and not nonfinite:
        return ""
    items = [
        f'<li class="error" data-method="{escape(name)}"><b>{escape(name)}</b> '
        f"{_failed(name, 'failed and has no maps')}: "
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
        *((f"{name} layer", means["layer"]) for name, means in summary["methods"].items() if means.get("layer")),
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
    faithful = summary.get("faithfulness") is not None
    sanity = summary.get("sanity")
    crossed = {(item["method"], item["criterion"]) for item in summary["verdict"]["crossed"]}
    header = (
        "<th>method</th><th>roi_enrichment</th><th>mean roi_share</th><th>mean roi_lift</th><th>mean roi_mass</th>"
        "<th>probes with a mask</th>"
    )
    excluded = summary["verdict"].get("excluded") or {}
    if faithful:
        header += "<th>deletion AUC</th><th>insertion AUC</th><th>insertion − deletion</th>"
    if sanity:
        header += "<th>sanity similarity (last stage)</th>"
    header += "<th>status</th>"
    if baseline:
        header += "<th>roi_share change</th><th>roi_mass change</th>"
    rows = []
    for name, means in summary["methods"].items():
        criteria = [criterion for method, criterion in crossed if method == name]
        if criteria:
            status = f"crossed ({', '.join(sorted(criteria))})"
        elif name in excluded:
            status = f"does not vote: {escape(excluded[name])}"
        elif means["roi_share"] is not None:
            status = "ok"
        else:
            status = "no finite score" if means["probes_with_mask"] else "no mask"
        cells = (
            f"<td>{escape(name)}</td><td class='num'>{_format(means.get('roi_enrichment'))}</td>"
            f"<td class='num'>{_format(means['roi_share'])}</td>"
            f"<td class='num'>{_format(means.get('roi_lift'), 2)}</td>"
            f"<td class='num'>{_format(means['roi_mass'])}</td><td class='num'>{means['probes_with_mask']}</td>"
        )
        if faithful:
            cells += "".join(
                f"<td class='num'>{_format(means.get(key))}</td>"
                for key in ("deletion_auc", "insertion_auc", "insertion_minus_deletion")
            )
        if sanity:
            values = sanity["similarity"].get(name) or [None]
            flag = " crossed" if name in sanity["flagged"] else ""
            cells += f"<td class='num{flag}'>{_format(values[-1], 2)}</td>"
        cells += f"<td class='{'crossed' if criteria else ''}'>{status}</td>"
        row_class = ""
        if baseline:
            changes = baseline["methods"].get(name, {})
            share = changes.get("roi_share", {}).get("change")
            mass = changes.get("roi_mass", {}).get("change")
            cells += f"<td class='num'>{_format_signed(share)}</td><td class='num'>{_format_signed(mass)}</td>"
            if name in baseline["flagged_methods"]:
                row_class = " flag"
        rows.append(f'<tr class="method{row_class}" data-method="{escape(name)}">{cells}</tr>')
    for name in method_errors(summary):
        empty = 5 + (3 if faithful else 0) + (1 if sanity else 0)
        cells = f"<td>{escape(name)}</td>" + "<td class='num'>–</td>" * empty
        cells += "<td class='crossed'>failed</td>" + ("<td></td><td></td>" if baseline else "")
        rows.append(f'<tr class="method failed" data-method="{escape(name)}">{cells}</tr>')
    return f'<table id="summary"><tr>{header}</tr>{"".join(rows)}</table>'


def _faithfulness_section(summary: Mapping[str, Any]) -> str:
    settings = summary.get("faithfulness")
    if not settings:
        return ""
    return (
        '<h2>Faithfulness</h2><p id="faithfulness">Deletion and insertion curves (Petsiuk et al., 2018) in '
        f"{settings['steps']} steps towards a {escape(str(settings['baseline']))} baseline: the probability of "
        "the explained class while each map's top-ranked pixels are removed (deletion) or put back (insertion). "
        "A faithful map has a low deletion AUC and a high insertion AUC.</p>"
    )


def _intervention_section(summary: Mapping[str, Any]) -> str:
    record = summary.get("intervention")
    if not record:
        return ""
    flip_rate = record["flip_rate"]
    change = record["mean_probability_change"]
    files = record.get("files") or []
    placement = (
        "whole images, pasted where the artifact is"
        if record.get("full_size")
        else "patches pasted at seeded random positions"
    )
    items = [
        f"<li>artifacts: <code>{escape(str(record.get('folder')))}</code> ({len(files)} file(s): "
        f"{escape(', '.join(files))}; {placement})</li>",
        f"<li>suspected class: {escape(str(record['target_class_name']))}; {record.get('trials')} paste(s) per probe, "
        f"seed {record.get('seed')}</li>",
        f"<li>probes not already predicted as that class: {record['eligible_probes']}</li>",
        f'<li id="flip-rate">flip rate: <b>{_format(flip_rate)}</b> (share of their pastes that moved the '
        f"prediction to {escape(str(record['target_class_name']))}); mean change of its probability: "
        f"<b>{_format_signed(change)}</b></li>",
    ]
    if flip_rate is None:
        items.append("<li>no probe is eligible: the flip rate could not be measured</li>")
    return f'<h2>Intervention</h2><ul id="intervention">{"".join(items)}</ul>'


def _sanity_section(summary: Mapping[str, Any]) -> str:
    sanity = summary.get("sanity")
    if not sanity:
        return ""
    methods = list(sanity["similarity"])
    header = "<th>stage</th><th>modules randomised</th>" + "".join(f"<th>{escape(name)}</th>" for name in methods)
    rows = []
    for position, stage in enumerate(sanity["stages"]):
        shown = ", ".join(name or "(root)" for name in stage[:6]) + (f", … ({len(stage)})" if len(stage) > 6 else "")
        cells = f"<td class='num'>{position + 1}</td><td><code>{escape(shown)}</code></td>"
        for name in methods:
            values = sanity["similarity"][name]
            value = values[position] if position < len(values) else None
            flag = " crossed" if name in sanity["flagged"] and position == len(sanity["stages"]) - 1 else ""
            cells += f"<td class='num{flag}'>{_format(value, 2)}</td>"
        rows.append(f'<tr class="stage">{cells}</tr>')
    verdict = (
        f"<p class='flag'>{escape(_sanity_warning(sanity))}</p>"
        if sanity["flagged"]
        else f"<p>No method flagged: every method's maps change once the weights are random "
        f"(last-stage similarity at most {sanity['threshold']:g}).</p>"
    )
    return (
        "<h2>Sanity check: model-parameter randomisation</h2>"
        "<p>The parameters of a copy of the model are re-initialised in cumulative stages from the output end "
        "(Adebayo et al., 2018); each cell is the median over the probes of the Spearman rank correlation "
        "between the maps of the trained and the randomised model.</p>"
        f'<table id="sanity"><tr>{header}</tr>{"".join(rows)}</table>{verdict}'
    )


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
    faithful = summary.get("faithfulness") is not None
    intervention = summary.get("intervention")
    changes = {entry["file"]: entry for entry in baseline["probes"]} if baseline else {}
    class_names = summary.get("class_names")
    top_files = {(name, item["file"]) for name, top in summary["verdict"]["top_probes"].items() for item in top}
    header = "<th>file</th><th>image</th>"
    header += "".join(f"<th>{escape(name)}</th>" for name in methods)
    header += "<th>true class</th><th>predicted class</th><th>confidence</th><th>ROI area (chance)</th>"
    header += "".join(
        f"<th>{escape(name)} roi_share</th><th>{escape(name)} roi_lift</th><th>{escape(name)} roi_mass</th>"
        for name in methods
    )
    if faithful:
        header += "".join(
            f"<th>{escape(name)} deletion AUC</th><th>{escape(name)} insertion AUC</th>" for name in methods
        )
    if intervention:
        header += "<th>artifact flips</th><th>artifact Δp</th>"
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
            plain = f"num{' nonfinite' if name in nonfinite else ''}"
            cells += (
                f"<td class='num {' '.join(marks)}'{title}>{_format(entry['roi_share'][name])}"
                f"{_format_change(share_change)}</td>"
            )
            cells += f"<td class='{plain}'{title}>{_format((entry.get('roi_lift') or {}).get(name), 2)}</td>"
            cells += f"<td class='{plain}'{title}>{_format(entry['roi_mass'][name])}{_format_change(mass_change)}</td>"
        if faithful:
            for name in methods:
                cells += f"<td class='num'>{_format(entry['deletion_auc'].get(name))}</td>"
                cells += f"<td class='num'>{_format(entry['insertion_auc'].get(name))}</td>"
        if intervention:
            record = entry["intervention"]
            if record["eligible"]:
                mark = " crossed" if record["flipped"] else ""
                cells += f"<td class='num{mark}'>{record['flipped']}/{record['trials']}</td>"
            else:
                cells += "<td class='num chance' title='already predicted as the artifact&#39;s class'>–</td>"
            cells += f"<td class='num'>{_format_signed(record['probability_change'])}</td>"
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
        f"{len(summary['skipped'])} skipped. roi_share: share of the map's |mask| highest-ranked pixels inside "
        "the mask; roi_lift: roi_share over its chance level, the mask's area share"
        f"{chance}; roi_mass: share of the map's total mass inside the mask.</p>"
        f"{_summary_table(summary)}"
        f"{_faithfulness_section(summary)}"
        f"{_intervention_section(summary)}"
        f"{_sanity_section(summary)}"
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


# ----------------------------------------------------------------------------- the output folder


def staging_folder(out: os.PathLike[str] | str) -> Path:
    """A new, empty, hidden folder beside ``out`` to write an audit into before :func:`put_in_place`.

    Beside ``out`` (not in the system's temporary folder) so that it is on the same file system
    and can be renamed into place; beside the folder a symbolic link ``out`` points to.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def put_in_place(staged: Path, out: Path, previous: Sequence[Path]) -> None:
    """Make the files written in ``staged`` the audit in ``out``, replacing the ``previous`` audit's files.

    When ``out`` holds nothing but ``previous`` (or does not exist), the folders are swapped by
    two renames: the previous audit stays whole until the moment it is replaced. When ``out``
    holds other things too (they stay), or cannot be renamed (a mount point), each file is moved
    in with ``os.replace`` (atomic per file) and the previous files the new audit lacks are removed.

    A symbolic link ``out`` stays: the folder it points to is replaced.

    Raises:
        OSError: If a rename or removal fails (``out`` is restored when the swap fails half-way).
    """
    out = out.resolve()
    previous = [out / path.name for path in previous]
    if not out.exists():
        staged.rename(out)
        return
    kept = set(previous)
    if all(path in kept for path in out.iterdir()):
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        try:
            out.rename(trash / out.name)
        except OSError:
            trash.rmdir()  # ``out`` cannot move: replace its files one by one below
        else:
            try:
                staged.rename(out)
            except OSError:
                (trash / out.name).rename(out)  # back in place: the previous audit stays
                trash.rmdir()
                raise
            shutil.rmtree(trash, ignore_errors=True)
            return
    for path in previous:
        if not (staged / path.name).exists():
            path.unlink(missing_ok=True)
    for path in staged.iterdir():
        os.replace(path, out / path.name)
    staged.rmdir()
