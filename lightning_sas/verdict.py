"""The alert rule: one pure function, shared by the training callback and the command line.

:func:`decide` reads an audit's scores (plain data) and an :class:`AlertRule` and returns a
:class:`Verdict`. The callback and ``lightning-sas audit`` both call it, so a checkpoint that
alerts during training alerts in the nightly audit too.

The default rule was chosen from measured error rates, not from one demo
(``benchmarks/alert_study.py``; the README's "Alert study" has the tables): 48 seeded runs, 24
biased and 24 clean, on two shortcut kinds (rulers, 6-8% of the image; coloured corner
patches, 2-6%). It alerts when either criterion is crossed:

* **Intervention** (needs artifact examples): the share of probes whose prediction moves to
  the artifact's class when the artifact is pasted on, above :data:`DEFAULT_MIN_FLIP_RATE`.
  In the study it caught 23 of 23 runs that used the shortcut with 0 of 24 false alarms; no
  map-based score came close.
* **Lift over chance** (needs probes with an ROI): a method's mean ``roi_lift`` — the share
  of its top-|R| pixels on the ROI divided by the ROI's area share — above
  :data:`DEFAULT_MIN_LIFT`. Relative to chance, so one threshold serves a thin ruler and a
  small patch alike. Maps alone are weaker evidence: clean models look at a salient artifact
  too (clean runs reached lifts up to 9), so the threshold is set for few false alarms
  (1 of 24 in the study) at the cost of recall (17 of 23 without artifacts). Give artifacts
  when you can.

An absolute ``roi_share`` threshold (the ``shortcut_threshold`` of earlier versions) can be
added; it is off by default because it punishes small artifacts and low-resolution methods.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

#: A method's mean roi_lift above this alerts (see the module docstring for where it comes from).
DEFAULT_MIN_LIFT = 8.0
#: An intervention flip rate above this alerts.
DEFAULT_MIN_FLIP_RATE = 0.25


@dataclass(frozen=True)
class AlertRule:
    """When an audit raises a shortcut alert; each criterion set to ``None`` is off.

    Args:
        min_lift: Alert when a method's mean ``roi_lift`` (``roi_share`` / chance) exceeds it.
        min_flip_rate: Alert when the intervention's flip rate exceeds it.
        max_roi_share: Alert when a method's mean ``roi_share`` exceeds it (absolute; off by
            default).

    Raises:
        ValueError: If a threshold is out of range (lift > 1, rates in [0, 1]).

    Example:
        >>> AlertRule(min_lift=4.0, max_roi_share=0.5)
        AlertRule(min_lift=4.0, min_flip_rate=0.25, max_roi_share=0.5)
    """

    min_lift: float | None = DEFAULT_MIN_LIFT
    min_flip_rate: float | None = DEFAULT_MIN_FLIP_RATE
    max_roi_share: float | None = None

    def __post_init__(self) -> None:
        checks = (("min_lift", self.min_lift, 1.0, math.inf), ("min_flip_rate", self.min_flip_rate, 0.0, 1.0))
        for name, value, low, high in (*checks, ("max_roi_share", self.max_roi_share, 0.0, 1.0)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ValueError(f"`{name}` must be a number in [{low}, {high}] or None, got {value!r}.")


@dataclass
class Verdict:
    """What :func:`decide` concluded.

    Attributes:
        alert: Whether a criterion was crossed.
        reasons: One sentence per crossed criterion (method, score, threshold).
        crossed: ``(criterion, method)`` pairs that were crossed; method ``None`` for the
            intervention.
        checked: Criteria that had data to check (e.g. no probe with an ROI: no lift check).
    """

    alert: bool
    reasons: list[str] = field(default_factory=list)
    crossed: list[tuple[str, str | None]] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.alert

    def summary(self) -> str:
        """One line for people: what crossed, or what was checked and passed."""
        if self.alert:
            return "SHORTCUT: " + "; ".join(self.reasons)
        if not self.checked:
            return "nothing to check: no probe has an ROI and no artifact was given"
        return f"no shortcut criterion crossed (checked: {', '.join(self.checked)})"


def decide(
    method_means: Mapping[str, Mapping[str, float]],
    rule: AlertRule,
    flip_rate: float | None = None,
) -> Verdict:
    """Apply ``rule`` to an audit's scores.

    Args:
        method_means: Per method, its mean scores over the probes with an ROI: ``roi_share``,
            ``roi_lift`` (as from :meth:`~lightning_sas.audit.AuditResult.mean_scores`).
            NaN or missing scores are not checked.
        rule: The alert rule.
        flip_rate: The intervention's flip rate, or ``None`` without artifacts.

    Returns:
        The :class:`Verdict`.

    Example:
        >>> decide({"sas": {"roi_share": 0.3, "roi_lift": 9.0}}, AlertRule()).reasons
        ['sas puts 9.0x chance of its top-ranked pixels on the ROI (roi_lift 9.0 > 8)']
    """
    verdict = Verdict(alert=False)
    criteria = (
        ("roi_lift", rule.min_lift, "x chance of its top-ranked pixels on the ROI (roi_lift {value:.1f} > {limit:g})"),
        ("roi_share", rule.max_roi_share, " of its top-ranked pixels on the ROI (roi_share {value:.2f} > {limit:g})"),
    )
    for score, limit, text in criteria:
        if limit is None:
            continue
        values = {
            method: float(means[score])
            for method, means in method_means.items()
            if score in means and means[score] is not None and math.isfinite(float(means[score]))
        }
        if values:
            verdict.checked.append(score)
        for method, value in values.items():
            if value > limit:
                shown = f"{value:.1f}" if score == "roi_lift" else f"{value:.2f}"
                verdict.reasons.append(f"{method} puts {shown}" + text.format(value=value, limit=limit))
                verdict.crossed.append((score, method))
    if rule.min_flip_rate is not None and flip_rate is not None and math.isfinite(flip_rate):
        verdict.checked.append("flip_rate")
        if flip_rate > rule.min_flip_rate:
            verdict.reasons.append(
                f"pasting the artifact moves {flip_rate:.0%} of the other classes' probes to its class "
                f"(flip_rate {flip_rate:.2f} > {rule.min_flip_rate:g})"
            )
            verdict.crossed.append(("flip_rate", None))
    verdict.alert = bool(verdict.crossed)
    return verdict
