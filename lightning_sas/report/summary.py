"""What a command-line audit leaves behind: ``summary.json`` for machines, ``report.html`` for people.

``summary.json`` (schema version 3) holds the per-method means, the per-probe scores, the probe
manifest with content hashes, the skipped files, the versions and the command line; NaN is
written as ``null``. A probe's ``sha256`` is :func:`~lightning_sas.probes.probe_set.content_hash` of the
tensor the model saw (as in the callback's manifest: it changes with ``--image-size`` and
``--mean``/``--std``); ``file_sha256`` is the hash of the file's bytes. With a previous summary
as baseline, the changes per method and per probe are added under ``"baseline"``.

The shortcut decision is ``"verdict"``: what :func:`lightning_sas.audit.verdict.decide` concluded
from the per-probe scores, the intervention's flip rate and the sanity check under the alert
rule (``"rule"``), shared with the training callback: ``status`` (``"shortcut"``,
``"no shortcut"`` or ``"cannot tell"``), ``alert``, one ``reasons`` sentence per crossed
criterion, ``crossed`` as ``{"criterion", "method"}`` pairs (``method`` is ``null`` for the
flip rate), the criteria ``checked``, ``not_checkable`` (criterion -> why), ``excluded``
(method -> why it did not vote), the ``scores`` the rule read, ``input_independent`` (the model
gave every probe the same output), and per crossed method its ``top_probes``.

Besides ``roi_share``/``roi_mass``, each method has ``roi_enrichment`` (the rule's pooled
statistic, :func:`lightning_sas.scores.metrics.roi_enrichment`), ``no_evidence`` (the probes whose map
was flat, left out of its scores) and ``roi_lift`` (``roi_share`` over its chance
level, the ROI's area share) per probe and as a mean; with faithfulness on (``"faithfulness"``
not ``null``), ``deletion_auc``/``insertion_auc`` per probe and as means (with
``insertion_minus_deletion``) and the mean curves ``deletion_curve``/``insertion_curve``
(``steps + 1`` points each, :mod:`~lightning_sas.report.curves`); with artifacts,
``"intervention"`` (flip rate, mean probability change, per-probe flips); with the sanity
check, ``"sanity"`` (similarity per randomisation stage and the flagged methods).

Version 2 replaced version 1's ``threshold``, ``threshold_checked``, ``crossed`` and
``shortcuts`` by ``verdict``; version 3 added the verdict's ``status`` and the enrichment, and
replaced the rule's ``min_lift`` by ``min_enrichment``; :func:`~lightning_sas.report.baseline.load_summary` reads every
version as a baseline.

An audit can be incomplete: ``"errors"`` maps each method that failed (and ``faithfulness``
or ``sanity`` when that part failed) to its error (a failed method has no scores), and
``"nonfinite"`` maps a method to the files whose model output or map was NaN/inf; those
probes' scores are ``null`` (never a chance-level number) and are left out of the method's
mean. Each probe also records ``roi_area``, the share of the image its mask covers: the chance
level of its ``roi_share`` and ``roi_mass``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_sas.audit.run import AuditResult
from lightning_sas.audit.verdict import AlertRule, Verdict
from lightning_sas.probes.folder import SkippedFile
from lightning_sas.probes.probe_set import Probes, class_label
from lightning_sas.report.curves import CURVE_KEYS, mean_curves
from lightning_sas.report.verdict import verdict_record

if TYPE_CHECKING:
    from lightning_sas.scores.faithfulness import Faithfulness
    from lightning_sas.trust.intervention import InterventionResult
    from lightning_sas.trust.sanity import SanityResult

__all__ = [
    "AUDIT_PARTS",
    "SUMMARY_VERSION",
    "build_summary",
    "json_number",
    "method_errors",
    "write_summary",
]

#: Version of the ``summary.json`` layout; bumped when a field changes meaning.
SUMMARY_VERSION = 3
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
        verdict: What :func:`~lightning_sas.audit.verdict.decide` concluded for this audit.
        rule: The alert rule it applied.
        class_names: Names of the classes by index, or ``None``.
        run: What identifies the run (``command``, ``checkpoint``, ``model``, ``device``,
            ``image_size``, ``mean``, ``std``, ``target``, versions...); copied to the top level.
        faithfulness: The faithfulness settings, when faithfulness was measured.
        artifacts: What describes the artifacts (folder, files, class, trials, seed), when the
            intervention was measured; completed with its results.
        sanity: The sanity check's result, when it ran.
        method_details: Per method, more entries for its ``"methods"`` record (e.g. Grad-CAM's
            ``{"layer": "features.2"}``); methods without maps get none.

    Returns:
        A JSON-serialisable dict (NaN already replaced by ``None``).
    """
    methods = _method_means(result, probes, rule, faithfulness, method_details)
    manifest = _manifest(probes, class_names)
    entries = _probe_entries(result, probes, manifest, file_hashes, class_names, faithfulness is not None, sanity)
    return {
        "version": SUMMARY_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **dict(run),
        "class_names": list(class_names) if class_names is not None else None,
        "seconds": json_number(result.seconds),
        "methods": methods,
        "errors": dict(result.errors),
        "nonfinite": _nonfinite_files(result, probes.names),
        "verdict": verdict_record(verdict, rule, result, entries),
        "faithfulness": _faithfulness_record(faithfulness),
        "intervention": _intervention_record(result.intervention, artifacts, class_names),
        "sanity": _sanity_record(sanity),
        "discovery": discovery_record(result, rule, class_names),
        "probes": entries,
        "manifest": manifest,
        "skipped": [{"file": item.file, "reason": item.reason} for item in skipped],
        "baseline": None,
    }


def _nonfinite(result: AuditResult) -> dict[str, list[int]]:
    """Per method with non-finite outputs or maps, the positions of those probes."""
    return {name: list(positions) for name, positions in result.nonfinite.items() if positions}


def _nonfinite_files(result: AuditResult, names: Sequence[str]) -> dict[str, list[str]]:
    """The ``"nonfinite"`` of ``summary.json``: per method, the files whose output or map was not finite."""
    return {name: [names[position] for position in positions] for name, positions in _nonfinite(result).items()}


def _method_means(
    result: AuditResult,
    probes: Probes,
    rule: AlertRule,
    faithfulness: Faithfulness | None,
    method_details: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    """The ``"methods"`` records: per method with maps, its mean scores and how many probes they cover."""
    has_roi = probes.has_roi.cpu()
    means = result.mean_scores(rule.min_roi_pixels)
    faithfulness_means = result.faithfulness_means()
    curves = mean_curves(result.faithfulness)
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
            # The mean curves, for the report's plot and the combined report (None when not measured).
            method_means[name].update(curves.get(name, dict.fromkeys(CURVE_KEYS.values())))
    return method_means


def _manifest(probes: Probes, class_names: Sequence[str] | None) -> list[dict[str, Any]]:
    """The probe manifest (:meth:`~lightning_sas.probes.probe_set.Probes.manifest`) with the class names."""
    manifest = probes.manifest()
    for entry in manifest:
        entry["label_name"] = class_label(entry["label"], class_names) if entry["label"] >= 0 else None
    return manifest


def _probe_entries(
    result: AuditResult,
    probes: Probes,
    manifest: Sequence[Mapping[str, Any]],
    file_hashes: Sequence[str],
    class_names: Sequence[str] | None,
    faithful: bool,
    sanity: SanityResult | None,
) -> list[dict[str, Any]]:
    """The ``"probes"`` records, in probe order: identity, prediction and scores of each probe."""
    has_roi = probes.has_roi.cpu()
    roi_area = probes.roi.flatten(1).float().mean(dim=1).cpu()
    chance = torch.where(has_roi, roi_area, torch.full_like(roi_area, float("nan")))
    lifts = {name: result.roi_share[name].float().cpu() / chance for name in result.maps}
    labels = probes.labels.cpu().tolist()
    predictions = result.predictions.cpu().tolist()
    confidences = result.confidences.float().cpu().tolist()
    targets = result.targets.cpu().tolist()
    nonfinite_positions = _nonfinite(result)
    entries = []
    for position, entry in enumerate(manifest):
        label = int(labels[position])
        confidence = json_number(confidences[position])
        # Non-finite logits have no predicted class: argmax over NaN picks an arbitrary index.
        prediction = int(predictions[position]) if confidence is not None else None
        entries.append(
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
                "roi_lift": {name: json_number(lifts[name][position]) for name in result.maps},
                "roi_mass": {name: json_number(result.roi_mass[name][position]) for name in result.maps},
            }
        )
    if faithful:
        _add_faithfulness(entries, result)
    if result.intervention is not None:
        _add_intervention(entries, result.intervention)
    if sanity is not None:
        _add_sanity(entries, sanity)
    return entries


def _add_faithfulness(entries: Sequence[dict[str, Any]], result: AuditResult) -> None:
    """Add each probe's ``deletion_auc`` and ``insertion_auc`` per method (``None`` where not measured)."""
    curves = {name: result.faithfulness.get(name) for name in result.maps}
    deletion = {name: None if c is None else c.deletion_auc.float().cpu() for name, c in curves.items()}
    insertion = {name: None if c is None else c.insertion_auc.float().cpu() for name, c in curves.items()}
    for position, probe in enumerate(entries):
        probe["deletion_auc"] = {name: _per_probe(values, position) for name, values in deletion.items()}
        probe["insertion_auc"] = {name: _per_probe(values, position) for name, values in insertion.items()}


def _add_intervention(entries: Sequence[dict[str, Any]], intervention: InterventionResult) -> None:
    """Add each probe's ``"intervention"``: whether it was eligible, its flips and probability change."""
    for position, probe in enumerate(entries):
        flipped = intervention.flipped[position].cpu()
        eligible = bool(intervention.eligible[position])
        probe["intervention"] = {
            "eligible": eligible,
            # Pastes that moved the prediction to the artifact's class (only counted for eligible probes).
            "flipped": int(flipped.sum()) if eligible else None,
            "trials": int(flipped.numel()),
            "probability_change": json_number(intervention.probability_change[position].float().mean()),
        }


def _add_sanity(entries: Sequence[dict[str, Any]], sanity: SanityResult) -> None:
    """Add each probe's ``sanity_similarity``: per method, its similarity at every randomisation stage."""
    for position, probe in enumerate(entries):
        probe["sanity_similarity"] = {
            name: [json_number(value) for value in values[:, position].tolist()]
            for name, values in sanity.per_probe.items()
        }


def _faithfulness_record(faithfulness: Faithfulness | None) -> dict[str, Any] | None:
    """The faithfulness settings (``steps`` and the ``baseline``'s name), or ``None`` when not measured."""
    if faithfulness is None:
        return None
    baseline = faithfulness.baseline
    return {"steps": faithfulness.steps, "baseline": baseline if isinstance(baseline, str | int | float) else "tensor"}


def _intervention_record(
    intervention: InterventionResult | None, artifacts: Mapping[str, Any] | None, class_names: Sequence[str] | None
) -> dict[str, Any] | None:
    """The ``"intervention"`` of ``summary.json``: the artifacts and the flip rate, or ``None`` when not measured."""
    if intervention is None:
        return None
    target_class = int(intervention.target_class)
    return {
        **dict(artifacts or {}),
        "target_class": target_class,
        "target_class_name": class_label(target_class, class_names),
        "flip_rate": json_number(intervention.flip_rate),
        "mean_probability_change": json_number(intervention.mean_probability_change),
        "eligible_probes": int(intervention.eligible.sum()),
        "probes_flipped": int((intervention.flipped & intervention.eligible[:, None]).any(dim=1).sum()),
    }


def discovery_record(result: AuditResult, rule: AlertRule, class_names: Sequence[str] | None) -> dict[str, Any] | None:
    """The ``"discovery"`` of ``summary.json``: every candidate with its fields, whether the rule
    confirms it (``finding``: ``"confirmed"``, ``"unresolved"`` or ``None``, see
    :func:`~lightning_sas.audit.criteria.candidate_finding`), and the folder it is exported to
    (``candidates/<k>``, in the ``--artifacts`` format);
    ``{"skipped": why}`` when it could not run; ``None`` when it was not asked for."""
    from lightning_sas.audit.criteria import candidate_finding

    found = result.discovery
    if found is None:
        skipped = result.discovery_skipped or result.errors.get("discovery")
        return None if skipped is None else {"skipped": skipped}
    record = found.to_dict()
    object_masks = found.outside_share is not None
    for number, candidate in enumerate(record["candidates"], start=1):
        candidate["class_name"] = class_label(candidate["class_index"], class_names)
        candidate["finding"] = candidate_finding(candidate, rule, object_masks)
        candidate["confirmed"] = candidate["finding"] == "confirmed"
        candidate["exported"] = f"candidates/{number}" if candidate["confirmed"] else None
    record["method"] = found.settings.get("method")
    record["object_masks"] = object_masks
    return record


def _sanity_record(sanity: SanityResult | None) -> dict[str, Any] | None:
    """The ``"sanity"`` of ``summary.json``: the stages, the similarity per method and stage, the flagged methods."""
    if sanity is None:
        return None
    return {
        "stages": [list(stage) for stage in sanity.stages],
        "threshold": float(sanity.threshold),
        "similarity": {
            name: [json_number(value) for value in values.tolist()] for name, values in sanity.similarity.items()
        },
        "flagged": list(sanity.flagged),
    }


def write_summary(summary: Mapping[str, Any], path: os.PathLike[str] | str) -> Path:
    """Write ``summary`` as indented JSON (strict: a NaN that slipped through raises ``ValueError``)."""
    destination = Path(path)
    destination.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return destination
