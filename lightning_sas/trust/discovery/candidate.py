"""A discovered region suspected of being a shortcut: where it sits, what it shows, what pasting it does.

:class:`Candidate` holds what :func:`~lightning_sas.trust.discovery.candidate_regions.propose_candidates`
measured about a recurring attributed region and what
:func:`~lightning_sas.trust.discovery.transplant.transplant` found when pasting it; :attr:`Candidate.suspicion`
orders candidates for reports (the alert rule reads the fields themselves). See
:mod:`lightning_sas.trust.discovery` for how the signals tell a shortcut from the object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from torch import Tensor

__all__ = ["Candidate", "json_float", "suspicion_order"]

NAN = float("nan")


@dataclass
class Candidate:
    """One recurring attributed region, suspected of being a shortcut.

    Attributes:
        class_index: The class the region pushes (the predicted class of its source probes).
        sources: Probe positions where the region was found (ascending).
        masks: ``[len(sources), H, W]`` bool: the region in each source probe (CPU), completed to
            the thing it sits on where :mod:`~lightning_sas.trust.discovery.region_completion` ran.
        box: Where it sits: the mean ``(y0, x0, y1, x1)`` of the sources' bounding boxes at its
            most frequent place (see ``places``), as fractions of the image side (``y1``, ``x1``
            exclusive).
        area: Mean area share of the region in its sources.
        recurrence: Share of the probes predicted as ``class_index`` (with a map that ranks
            pixels) in which the region was found.
        consistency: How alike the region's content is across its sources: 1 minus half the
            mean squared difference of their crops (resized to 8x8, best of 8 rotations/flips,
            over the pixels both masks cover), in units of the probe set's per-channel variance.
            1 identical copies, 0 as different as two random pixels of the probe set. NaN for
            one source.
        outside_object: Mean share of the region's pixels outside the (undilated) object mask;
            NaN without object masks.
        flip_rate: Share of the pastes onto probes predicted as another class whose prediction
            moved to ``class_index`` (NaN before :func:`~lightning_sas.trust.discovery.transplant.transplant` or
            without recipients).
        probability_change: Mean change of ``class_index``'s softmax probability over those pastes.
        control_flip_rate: The same for the control pastes: a same-shaped window from elsewhere
            in the source image, pasted at the same place onto the same recipients.
        trials: Pastes measured (each with its control).
        exclude: ``[len(sources), H, W]`` bool: pixels of each source the control window must
            avoid (its top-attributed pixels and the dilated object); ``None``: the region only.
        attribution_share: Mean share of the source maps' mass (after shifting each map's
            minimum to 0) inside the region.
        spread: Mean distance of the sources' region centroids from their mean, as a fraction of
            the image side (0: always at one place).
        centre_distance: Mean distance of the region centroids from the image centre, as a
            fraction of the side (0 centred, about 0.7 in a corner).
        other_class_similarity: The ``consistency`` measure between the sources' regions and the
            pixels under the same masks in probes predicted as another class (the content the
            recipients already show there); NaN without such probes.
        control_probability_change: ``probability_change`` of the control pastes.
        recipients: Distinct recipient probes of the pastes.
        places: Where it was seen: per place (sources whose regions overlap), its mean box and
            number of sources, the most frequent first. A ruler along two edges has two places.
        source_accuracy: Share of the labelled sources whose label is ``class_index``: the
            model's accuracy where the region appears. A shortcut carries the model's errors
            wherever the probes break its link with the label; NaN without labels
            (:func:`~lightning_sas.trust.discovery.candidate_measures.source_accuracy`).
        labelled_sources: Sources with a known label.
    """

    class_index: int
    sources: list[int]
    masks: Tensor
    box: tuple[float, float, float, float]
    area: float
    recurrence: float
    consistency: float
    outside_object: float
    flip_rate: float = NAN
    probability_change: float = NAN
    control_flip_rate: float = NAN
    trials: int = 0
    exclude: Tensor | None = field(default=None, repr=False)
    attribution_share: float = NAN
    spread: float = NAN
    centre_distance: float = NAN
    other_class_similarity: float = NAN
    control_probability_change: float = NAN
    recipients: int = 0
    places: list[tuple[tuple[float, float, float, float], int]] = field(default_factory=list)
    source_accuracy: float = NAN
    labelled_sources: int = 0

    @property
    def distinctness(self) -> float:
        """``1 - other_class_similarity``: how unlike the region is to what the other classes show at
        its place (0 alike, 1 as different as two random pixels, above 1 more different still)."""
        return 1.0 - self.other_class_similarity

    @property
    def contrast(self) -> float:
        """``consistency - other_class_similarity``: how much more alike the sources are to each
        other than to what the other classes show at the same place (NaN if either is)."""
        return self.consistency - self.other_class_similarity

    @property
    def suspicion(self) -> float:
        """An ordering score in ``[0, 1]``: high for a recurring, causal region that the other
        classes do not show, off the object.

        ``recurrence × causal × distinct × off_object``:

        * ``causal = clip(flip_rate - control_flip_rate, 0, 1)``: what the region's own content
          does beyond any paste at that place (1 before
          :func:`~lightning_sas.trust.discovery.transplant.transplant`: unknown);
        * ``distinct = clip(1 - other_class_similarity, 0, 1)``: the object is in every image, so
          the other classes show something like it at the same place; a present-or-absent
          artifact is not there in them;
        * ``off_object = outside_object`` with masks (1 without).

        A factor that cannot be measured (no other class, no recipient) counts as 0.5: neither
        evidence for nor against. It orders candidates for reports; the alert decision reads the
        fields themselves, with thresholds chosen on seeded studies.
        """
        distinct = 0.5 if math.isnan(self.distinctness) else min(max(self.distinctness, 0.0), 1.0)
        causal = 1.0
        if self.trials:
            causal = 0.5
            if not math.isnan(self.flip_rate):
                control = 0.0 if math.isnan(self.control_flip_rate) else self.control_flip_rate
                causal = min(max(self.flip_rate - control, 0.0), 1.0)
        off_object = 1.0 if math.isnan(self.outside_object) else self.outside_object
        return self.recurrence * causal * distinct * off_object

    def to_dict(self) -> dict:
        """Plain JSON-able data: every scalar field, the box, the sources; NaN as ``None``; no masks."""
        data: dict = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("masks", "exclude"):  # pixels, not report data
                continue
            if isinstance(value, float):
                value = json_float(value)
            elif isinstance(value, tuple):
                value = [json_float(part) for part in value]
            elif item.name == "places":
                value = [{"box": [json_float(part) for part in box], "sources": count} for box, count in value]
            elif isinstance(value, list):
                value = list(value)
            data[item.name] = value
        data["contrast"] = json_float(self.contrast)
        data["distinctness"] = json_float(self.distinctness)
        data["suspicion"] = json_float(self.suspicion)
        return data

    def summary(self) -> str:
        """One line for logs: class, place, recurrence, the content and causal signals."""
        y0, x0, y1, x1 = self.box
        parts = [
            f"class {self.class_index}: region at y {y0:.2f}-{y1:.2f}, x {x0:.2f}-{x1:.2f}",
            f"{self.area:.1%} of the image",
            f"in {len(self.sources)} probes at {len(self.places)} place(s) ({self.recurrence:.0%} of the class)",
            f"consistency {self.consistency:.2f}, other classes {self.other_class_similarity:.2f}",
        ]
        if not math.isnan(self.outside_object):
            parts.append(f"{self.outside_object:.0%} off the object")
        if self.trials:
            parts.append(
                f"flips {self.flip_rate:.0%} of {self.trials} pastes (control {self.control_flip_rate:.0%}, "
                f"Δp {self.probability_change:+.2f})"
            )
        if self.labelled_sources:
            parts.append(f"labelled as its class in {self.source_accuracy:.0%} of {self.labelled_sources}")
        parts.append(f"suspicion {self.suspicion:.2f}")
        return "; ".join(parts)


def json_float(value: float | None) -> float | None:
    """NaN (and ``None``) as ``None``: JSON has no NaN."""
    return None if value is None or math.isnan(value) else float(value)


def suspicion_order(candidate: Candidate) -> tuple[float, float, int]:
    """Sort key: the most suspicious first, then the most recurrent, then by first source."""
    suspicion = candidate.suspicion
    return (-(suspicion if not math.isnan(suspicion) else -1.0), -candidate.recurrence, candidate.sources[0])
