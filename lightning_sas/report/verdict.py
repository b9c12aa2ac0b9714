"""The verdict in ``summary.json`` and in words: the decision, the rule it applied, the probes that crossed it.

The ``"verdict"`` record (:func:`verdict_record`) holds what
:func:`lightning_sas.audit.verdict.decide` concluded and the alert rule as applied
(:func:`rule_record`); :func:`rule_text` and :func:`verdict_text` say the same for people.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from lightning_sas.audit.run import AuditResult
from lightning_sas.audit.verdict import AlertRule, Verdict

__all__ = ["TOP_PROBES", "rule_record", "rule_text", "verdict_record", "verdict_text"]

#: How many probes the shortcut message names per method.
TOP_PROBES = 3


def rule_record(rule: AlertRule) -> dict[str, Any]:
    """The alert rule as it goes into ``summary.json``.

    Example:
        >>> record = rule_record(AlertRule(min_enrichment=0.3))
        >>> {key: record[key] for key in ("min_enrichment", "min_flip_rate", "max_roi_share", "voters")}
        {'min_enrichment': 0.3, 'min_flip_rate': 0.1, 'max_roi_share': None, 'voters': None}
        >>> record["discovery"]["max_source_accuracy"], record["discovery_with_objects"]["min_recurrence"]
        (0.7, 0.2)
    """
    return {
        "min_enrichment": dict(rule.min_enrichment)
        if isinstance(rule.min_enrichment, Mapping)
        else rule.min_enrichment,
        "min_flip_rate": rule.min_flip_rate,
        "max_roi_share": rule.max_roi_share,
        "min_roi_pixels": rule.min_roi_pixels,
        "voters": None if rule.voters is None else list(rule.voters),
        "discovery": None if rule.discovery is None else asdict(rule.discovery),
        "discovery_with_objects": None if rule.discovery_with_objects is None else asdict(rule.discovery_with_objects),
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


def verdict_record(
    verdict: Verdict, rule: AlertRule, result: AuditResult, entries: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The ``"verdict"`` of ``summary.json``: the decision, what it read, and the top probes of each crossed method."""
    return {
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
        "top_probes": _top_probes(verdict, entries),
    }
