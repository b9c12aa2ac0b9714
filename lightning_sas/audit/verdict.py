"""The alert rule: one pure function, shared by the training callback and the command line.

:func:`decide` reads an audit's :class:`Evidence` (plain data: per-probe scores, the
intervention's flip rate, the sanity check's flags) and an :class:`AlertRule`, and returns a
:class:`Verdict`. It is the only place an alert is decided: which methods vote, which probes
count, what cannot be checked. The callback and ``lightning-sas audit`` both call it, so a
checkpoint that alerts during training alerts in the nightly audit too.

A verdict is one of three:

* ``"shortcut"``: a criterion was crossed (the alert);
* ``"no shortcut"``: every criterion the inputs allow was checked and none was crossed;
* ``"cannot tell"``: something the reviewer gave could not be checked — every ROI too small,
  every voting map flat (no evidence) or flagged by the sanity check, every probe already
  predicted as the artifact's class, shortcut discovery that could not run or found a region
  the probes cannot tell from the object, or a model whose output does not depend on its input.
  Never reported as a pass.

The criteria, each off when set to ``None``:

* **Intervention** (needs artifact examples): the share of other-class probes whose
  prediction moves to the artifact's class when the artifact is pasted on.
* **ROI enrichment** (needs probes with an ROI mask): per method,
  :func:`~lightning_sas.scores.metrics.roi_enrichment` — how far its top-ranked pixels are enriched
  on the ROIs over chance, pooled over the probes whose ROI has at least ``min_roi_pixels``
  pixels and whose map is not flat, normalised so 0 is chance and 1 is every top pixel on the
  ROI. It can fire at any ROI size, and one probe with a tiny ROI cannot decide it alone.
  Methods that failed the sanity check do not vote.
* ``max_roi_share``: an absolute mean ``roi_share`` threshold (off by default).

The defaults were chosen on half of the runs of ``benchmarks/alert_study.py`` and are
reported on the other half (README, "Alert study").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

#: Per method, the ROI enrichment above which it alerts, chosen on the selection half of the alert
#: study (80 runs; README, "Alert study"): the lowest threshold, in steps of 0.02 and at least 0.1,
#: that none of the selection half's 40 clean runs crossed. Methods score differently at chance
#: (Grad-CAM's coarse cells, IG's path), so each has its own. SaS's is for its default, the
#: paper's objective (the scale-free objective measured 0.42). ``"*"``: any other method (a
#: custom one): 0.42, the strictest threshold the study measured.
DEFAULT_MIN_ENRICHMENT: Mapping[str, float] = MappingProxyType(
    {
        "sas": 0.30,
        "gradcam": 0.22,
        "saliency": 0.10,
        "smoothgrad": 0.10,
        "ig": 0.26,
        "gradientshap": 0.14,
        "occlusion": 0.12,
        "lime": 0.34,
        "*": 0.42,
    }
)
#: An intervention flip rate above this alerts: the lowest multiple of 0.05 that none of the alert
#: study's 40 clean selection runs crossed.
DEFAULT_MIN_FLIP_RATE = 0.1
#: Probes whose ROI has fewer pixels are not scored: their roi_share swings on a few pixels.
DEFAULT_MIN_ROI_PIXELS = 9


@dataclass(frozen=True)
class DiscoveryThresholds:
    """When a candidate found by shortcut discovery is a confirmed shortcut.

    Always: its pastes onto the other classes' probes flip more than ``min_flip_rate`` of them, it
    recurs in at least ``min_recurrence`` of its class's probes and, if set, its content contrast
    (``Candidate.contrast``) exceeds ``min_contrast``. Then one of two tests:

    * **labels** (``max_source_accuracy`` set and at least ``min_labelled_sources`` of the
      candidate's sources have labels): it is confirmed when the probes where it appears are
      labelled as its class in at most ``max_source_accuracy`` of cases (it goes with the model's
      errors) and its pastes flip at least ``min_flip_over_control`` more than its control pastes
      (at the default 0, at least as many: a non-local cue moves both alike). Labelled as its class
      more often, but passing the control test below, it is *unresolved*: the verdict cannot tell
      it from the object;
    * **no labels**: it is confirmed when its control pastes (a same-shaped window from elsewhere
      in its sources) flip at most ``max_control_flip_rate``.

    With some labelled sources but fewer than ``min_labelled_sources`` the labels are too few to
    back a confirmation (below four, one label moves the share by 25 points or more; a guard, not
    tuned): a candidate that passes the control test is unresolved. With none, the control test
    decides.

    Raises:
        ValueError: If a threshold is out of range (the message names it and its value).
    """

    min_flip_rate: float
    max_control_flip_rate: float = 1.0
    min_recurrence: float = 0.0
    min_contrast: float | None = None
    max_source_accuracy: float | None = None
    min_flip_over_control: float = 0.0
    min_labelled_sources: int = 4

    def __post_init__(self) -> None:
        for name in ("min_flip_rate", "max_control_flip_rate", "min_recurrence", "max_source_accuracy"):
            value = getattr(self, name)
            if name == "max_source_accuracy" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
        labelled = self.min_labelled_sources
        if isinstance(labelled, bool) or not isinstance(labelled, int) or labelled < 1:
            raise ValueError(f"`min_labelled_sources` must be an int of at least 1, got {labelled!r}.")
        margin = self.min_flip_over_control
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not -1.0 <= margin <= 1.0:
            raise ValueError(f"`min_flip_over_control` must be a number in [-1, 1], got {margin!r}.")
        contrast = self.min_contrast
        if contrast is not None and (isinstance(contrast, bool) or not isinstance(contrast, int | float)):
            raise ValueError(f"`min_contrast` must be a number or None, got {contrast!r}.")


#: Discovery's rule without object masks, and with them: chosen on the selection half of the discovery
#: study (SaS maps) and reported on the other half (README, "Discovery study").
DEFAULT_DISCOVERY = DiscoveryThresholds(
    min_flip_rate=0.1, max_control_flip_rate=0.15, min_recurrence=0.1, max_source_accuracy=0.7
)
DEFAULT_DISCOVERY_WITH_OBJECTS = DiscoveryThresholds(min_flip_rate=0.1, min_recurrence=0.2)

Status = Literal["shortcut", "no shortcut", "cannot tell"]


@dataclass(frozen=True)
class AlertRule:
    """When an audit raises a shortcut alert; each criterion set to ``None`` is off.

    Args:
        min_enrichment: Alert when a voting method's ROI enrichment (0 = chance, 1 = every
            top-ranked pixel on the ROI) exceeds it: one number for every method, or a mapping
            from method name to its threshold, with ``"*"`` for the methods it does not name
            (default: :data:`DEFAULT_MIN_ENRICHMENT`, measured per method).
        min_flip_rate: Alert when the intervention's flip rate exceeds it.
        max_roi_share: Alert when a voting method's mean ``roi_share`` exceeds it (absolute;
            off by default).
        min_roi_pixels: Probes whose ROI has fewer pixels are left out of the ROI criteria.
        voters: The methods whose maps vote (names); ``None``: every method of the audit.
            Methods flagged by the sanity check never vote.
        discovery: When a candidate of shortcut discovery without object masks is a shortcut
            (:class:`DiscoveryThresholds`); ``None``: that criterion is off.
        discovery_with_objects: The same with object masks; ``None``: off.

    Raises:
        ValueError: If a threshold is out of range (the message names it and its value).

    Example:
        >>> AlertRule(min_enrichment=0.3, max_roi_share=0.5).max_roi_share
        0.5
        >>> AlertRule(min_enrichment={"sas": 0.4, "*": 0.6}).enrichment_threshold("gradcam")
        0.6
    """

    min_enrichment: float | Mapping[str, float] | None = field(default_factory=lambda: DEFAULT_MIN_ENRICHMENT)
    min_flip_rate: float | None = DEFAULT_MIN_FLIP_RATE
    max_roi_share: float | None = None
    min_roi_pixels: int = DEFAULT_MIN_ROI_PIXELS
    voters: tuple[str, ...] | None = None
    discovery: DiscoveryThresholds | None = DEFAULT_DISCOVERY
    discovery_with_objects: DiscoveryThresholds | None = DEFAULT_DISCOVERY_WITH_OBJECTS

    def __post_init__(self) -> None:
        thresholds = self.min_enrichment
        if isinstance(thresholds, Mapping):
            if "*" not in thresholds:
                raise ValueError(
                    f"`min_enrichment` as a mapping needs a '*' entry for other methods, got {thresholds!r}."
                )
            checks = [(f"min_enrichment[{method!r}]", value) for method, value in thresholds.items()]
            object.__setattr__(self, "min_enrichment", MappingProxyType(dict(thresholds)))
        else:
            checks = [("min_enrichment", thresholds)]
        checks += [("min_flip_rate", self.min_flip_rate), ("max_roi_share", self.max_roi_share)]
        for name in ("discovery", "discovery_with_objects"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, DiscoveryThresholds):
                raise ValueError(f"`{name}` must be a DiscoveryThresholds or None, got {value!r}.")
        for name, value in checks:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a number in [0, 1] or None, got {value!r}.")
        pixels = self.min_roi_pixels
        if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
            raise ValueError(f"`min_roi_pixels` must be an integer >= 1, got {pixels!r}.")
        if self.voters is not None:
            if isinstance(self.voters, str) or not all(isinstance(name, str) for name in self.voters):
                raise ValueError(f"`voters` must be a sequence of method names or None, got {self.voters!r}.")
            object.__setattr__(self, "voters", tuple(self.voters))

    def enrichment_threshold(self, method: str) -> float | None:
        """The ROI enrichment above which ``method`` alerts (``None``: the criterion is off)."""
        thresholds = self.min_enrichment
        if isinstance(thresholds, Mapping):
            return float(thresholds.get(method, thresholds["*"]))
        return thresholds


@dataclass(frozen=True)
class DiscoveryEvidence:
    """What shortcut discovery found, as plain data (:meth:`lightning_sas.trust.discovery.Candidate.to_dict`).

    Attributes:
        candidates: The candidates, most suspicious first, each a dict of its fields.
        object_masks: Whether the probes carried object masks.
        outside_enrichment: Pooled enrichment of the maps' top pixels off the objects (NaN without).
        method: Whose maps were read.
        skipped: Why discovery was asked for and did not run (``None``: it ran).
    """

    candidates: Sequence[Mapping[str, Any]]
    object_masks: bool = False
    outside_enrichment: float = float("nan")
    method: str = ""
    skipped: str | None = None


@dataclass(frozen=True)
class Evidence:
    """What :func:`decide` reads: one audit's results as plain data.

    Built from an audit by :meth:`lightning_sas.audit.run.AuditResult.evidence`.

    Attributes:
        image_pixels: Pixels per probe image.
        roi_pixels: Per probe, its ROI's pixel count (0: no ROI).
        roi_share: Per method, per probe, its ``roi_share`` (NaN: no ROI, or a map that is not
            finite or flat).
        flat: Per method, per probe, whether its map was flat (constant: no evidence).
        flip_rate: The intervention's flip rate; ``None`` without artifacts, NaN when no
            probe was eligible.
        eligible_probes: Probes the intervention could count (not already predicted as the
            artifact's class); ``None`` without artifacts.
        artifact_class: The artifact's class (with artifacts).
        sanity_flagged: Methods whose maps the sanity check found independent of the weights.
        input_independent: Whether the model gave every probe the same output.
        discovery: What shortcut discovery found (``None``: it did not run).
    """

    image_pixels: int
    roi_pixels: Sequence[int]
    roi_share: Mapping[str, Sequence[float]]
    flat: Mapping[str, Sequence[bool]] = field(default_factory=dict)
    flip_rate: float | None = None
    eligible_probes: int | None = None
    artifact_class: int | None = None
    sanity_flagged: Sequence[str] = ()
    input_independent: bool = False
    discovery: DiscoveryEvidence | None = None


@dataclass
class Verdict:
    """What :func:`decide` concluded.

    Attributes:
        status: ``"shortcut"``, ``"no shortcut"`` or ``"cannot tell"``.
        reasons: One sentence per crossed criterion (method, score, threshold).
        crossed: ``(criterion, method)`` pairs that were crossed; method ``None`` for the
            intervention.
        checked: Criteria that were checked.
        not_checkable: Per criterion that the inputs asked for but could not be checked, why.
        excluded: Per method that did not vote, why (sanity check, flat maps, not a voter).
        scores: Per voting method, the statistics the rule read (``roi_enrichment``,
            ``roi_share``, ``probes``: how many probes counted).
    """

    status: Status
    reasons: list[str] = field(default_factory=list)
    crossed: list[tuple[str, str | None]] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    not_checkable: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def alert(self) -> bool:
        """Whether a criterion was crossed."""
        return self.status == "shortcut"

    def __bool__(self) -> bool:
        return self.alert

    def summary(self) -> str:
        """One line for people: what crossed, what could not be checked, or what passed."""
        if self.alert:
            return "SHORTCUT: " + "; ".join(self.reasons)
        if self.status == "cannot tell":
            if not self.not_checkable:
                return "nothing to check: no probe has an ROI, no artifact was given and discovery did not run"
            return "cannot tell: " + "; ".join(self.not_checkable.values())
        return f"no shortcut criterion crossed (checked: {', '.join(self.checked)})"


def decide(evidence: Evidence, rule: AlertRule) -> Verdict:
    """Apply ``rule`` to an audit's ``evidence``.

    Args:
        evidence: The audit's scores as plain data.
        rule: The alert rule.

    Returns:
        The :class:`Verdict`.

    Example:
        >>> evidence = Evidence(image_pixels=100, roi_pixels=[10, 10], roi_share={"sas": [0.9, 0.7]})
        >>> verdict = decide(evidence, AlertRule())
        >>> verdict.status, verdict.crossed, round(verdict.scores["sas"]["roi_enrichment"], 3)
        ('shortcut', [('roi_enrichment', 'sas')], 0.778)
    """
    verdict = Verdict(status="no shortcut")
    if evidence.input_independent:
        verdict.status = "cannot tell"
        verdict.not_checkable["model"] = (
            "the model gives every probe the same output, so nothing in an image changes its prediction: "
            "its maps and flips carry no evidence (a collapsed or untrained model?)"
        )
        return verdict
    from lightning_sas.audit.criteria import check_discovery, check_intervention, check_roi

    check_roi(evidence, rule, verdict)
    check_intervention(evidence, rule, verdict)
    check_discovery(evidence, rule, verdict)
    if verdict.crossed:
        verdict.status = "shortcut"
    elif verdict.not_checkable or not verdict.checked:
        verdict.status = "cannot tell"
    return verdict
