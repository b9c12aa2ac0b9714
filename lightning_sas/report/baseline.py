"""An audit against a previous one: read the previous ``summary.json`` and record what changed.

:func:`compare_with_baseline` matches methods by name and probes by file name, and flags the
``roi_share`` changes larger than a tolerance; its result is the summary's ``"baseline"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from lightning_sas.report.summary import json_number

__all__ = ["READABLE_VERSIONS", "compare_with_baseline", "load_summary"]

#: Summary versions :func:`load_summary` accepts as a baseline.
READABLE_VERSIONS = (1, 2, 3)


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
        summary: This audit's summary (from :func:`~lightning_sas.report.summary.build_summary`).
        baseline: The previous summary (from :func:`load_summary`).
        baseline_path: Where the previous summary was read from (recorded).
        tolerance: Smallest absolute ``roi_share`` change that is flagged.

    Returns:
        The ``"baseline"`` entry of ``summary.json``.
    """
    methods = _method_changes(summary, baseline)
    previous_probes = {
        entry["file"]: entry for entry in baseline.get("probes", []) if isinstance(entry, dict) and "file" in entry
    }
    probes = [
        _probe_changes(entry, previous_probes[entry["file"]], tolerance)
        for entry in summary["probes"]
        if entry["file"] in previous_probes
    ]
    current_files = {entry["file"] for entry in summary["probes"]}
    flagged_methods = [name for name, scores in methods.items() if _beyond(scores["roi_share"]["change"], tolerance)]
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


def _beyond(change: float | None, tolerance: float) -> bool:
    """Whether ``change`` is known and larger than ``tolerance`` either way."""
    return change is not None and abs(change) > tolerance


def _method_changes(summary: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Per method of this audit: its previous and current mean ``roi_share`` and ``roi_mass``, and the change."""
    previous_methods = baseline.get("methods", {})
    methods: dict[str, Any] = {}
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
    return methods


def _probe_changes(entry: Mapping[str, Any], previous: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
    """How one probe changed since its ``previous`` record: content, prediction, scores, flagged methods."""
    previous_shares = previous.get("roi_share") if isinstance(previous.get("roi_share"), dict) else {}
    previous_masses = previous.get("roi_mass") if isinstance(previous.get("roi_mass"), dict) else {}
    share_changes = {name: _change(value, previous_shares.get(name)) for name, value in entry["roi_share"].items()}
    return {
        "file": entry["file"],
        "content_changed": previous.get("sha256") != entry["sha256"],
        "prediction_changed": previous.get("prediction") != entry["prediction"],
        "previous_prediction": previous.get("prediction"),
        "roi_share": share_changes,
        "roi_mass": {name: _change(value, previous_masses.get(name)) for name, value in entry["roi_mass"].items()},
        "flagged": [name for name, change in share_changes.items() if _beyond(change, tolerance)],
    }
