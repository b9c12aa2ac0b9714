"""What one audit found, as plain data: maps, predictions, scores, and the trust checks' results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_sas.audit.verdict import DEFAULT_MIN_ROI_PIXELS, DiscoveryEvidence, Evidence
from lightning_sas.scores.faithfulness import FaithfulnessCurves
from lightning_sas.scores.metrics import roi_enrichment
from lightning_sas.trust.discovery import Discovery
from lightning_sas.trust.intervention import InterventionResult
from lightning_sas.trust.sanity import SanityResult


def same_output_for_every_probe(logits: Tensor) -> bool:
    """Whether ``logits`` ``[N, C]`` are the same for every probe (``N >= 2``), to float precision.

    One host sync. A model whose output does not depend on its input (dead units, a collapsed
    training run) gives bit-identical or nearly identical rows.
    """
    if logits.shape[0] < 2:
        return False
    logits = logits.float()
    spread = (logits.amax(dim=0) - logits.amin(dim=0)).amax()
    scale = logits.abs().amax()
    # Relative: an untrained network's logits can all be tiny (1e-10) and still differ.
    return bool(torch.isfinite(scale) & (spread <= 1e-6 * scale))


@dataclass
class AuditResult:
    """What one audit found, still on the device (maps) or as small tensors (scores).

    Attributes:
        maps: Per method, ``[N, H, W]`` attribution maps in [0, 1].
        predictions: ``[N]`` predicted classes.
        confidences: ``[N]`` softmax probability of the predicted class.
        targets: ``[N]`` the classes that were explained.
        roi_share: Per method, ``[N]`` relevance rank accuracy (NaN for probes without ROI).
        roi_mass: Per method, ``[N]`` relevance mass accuracy (NaN for probes without ROI).
        seconds: Wall time of the audit.
        masks: Per warm-startable method, its final state (e.g. SaS's mask parameter
            ``[N, 1, h, w]``), to warm-start the next audit from.
        errors: Per method that failed, ``"ErrorType: message"``; such a method has no maps.
        nonfinite: Per method, the probe positions whose map (or model output) was not
            finite; their maps and scores are NaN.
        chance: ``[N]`` each probe's ROI area share ``|R| / HW`` (NaN without an ROI).
        roi_pixels: ``[N]`` each probe's ROI pixel count (0 without an ROI).
        flat: Per method, the probe positions whose map was flat (constant: no evidence);
            their scores are NaN.
        logits: ``[N, num_classes]`` the model's output for each probe (float32).
        intervention: What pasting the artifact did (when artifacts were given).
        faithfulness: Per method, the deletion and insertion curves of its maps (when asked).
        sanity: The model-parameter randomisation check (when asked).
        discovery: Shortcuts nobody named, looked for in one method's maps (when it ran;
            :mod:`lightning_sas.audit.discovery`).
        discovery_skipped: Why discovery was asked for and did not run (too few probes, ...).
    """

    maps: dict[str, Tensor]
    predictions: Tensor
    confidences: Tensor
    targets: Tensor
    roi_share: dict[str, Tensor]
    roi_mass: dict[str, Tensor]
    seconds: float
    masks: dict[str, Tensor] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    nonfinite: dict[str, list[int]] = field(default_factory=dict)
    chance: Tensor | None = None
    roi_pixels: Tensor | None = None
    flat: dict[str, list[int]] = field(default_factory=dict)
    logits: Tensor | None = None
    intervention: InterventionResult | None = None
    faithfulness: dict[str, FaithfulnessCurves] = field(default_factory=dict)
    sanity: SanityResult | None = None
    discovery: Discovery | None = None
    discovery_skipped: str | None = None

    def faithfulness_means(self) -> dict[str, dict[str, float]]:
        """Per method: mean ``deletion_auc``, ``insertion_auc`` and their difference
        ``insertion_minus_deletion`` over the probes with a finite map (higher difference =
        more faithful)."""
        means: dict[str, dict[str, float]] = {}
        for method, curves in self.faithfulness.items():
            deletion, insertion = curves.deletion_auc, curves.insertion_auc
            if bool(torch.isnan(deletion).all()):
                continue
            means[method] = {
                "deletion_auc": float(deletion.nanmean()),
                "insertion_auc": float(insertion.nanmean()),
                "insertion_minus_deletion": float((insertion - deletion).nanmean()),
            }
        return means

    def input_independent(self) -> bool:
        """Whether the model gave every probe the same output (two probes at least): then no
        pixel of any probe changes the prediction, and maps and flips mean nothing."""
        return self.logits is not None and same_output_for_every_probe(self.logits)

    def evidence(self, sanity_flagged: Sequence[str] = ()) -> Evidence:
        """This audit's results as the plain data :func:`~lightning_sas.audit.verdict.decide` reads.

        Args:
            sanity_flagged: Methods the sanity check flagged (at this audit or an earlier one).
        """
        count = int(self.predictions.shape[0])
        pixels = self.roi_pixels.cpu().tolist() if self.roi_pixels is not None else [0] * count
        image_pixels = next((int(maps[0].numel()) for maps in self.maps.values()), 1)
        intervention = self.intervention
        return Evidence(
            image_pixels=image_pixels,
            roi_pixels=[int(value) for value in pixels],
            roi_share={name: [float(value) for value in share.cpu()] for name, share in self.roi_share.items()},
            flat={name: [position in positions for position in range(count)] for name, positions in self.flat.items()},
            flip_rate=None if intervention is None else intervention.flip_rate,
            eligible_probes=None if intervention is None else int(intervention.eligible.sum()),
            artifact_class=None if intervention is None else intervention.target_class,
            sanity_flagged=tuple(sanity_flagged),
            input_independent=self.input_independent(),
            discovery=self._discovery_evidence(),
        )

    def _discovery_evidence(self) -> DiscoveryEvidence | None:
        if self.discovery is None:
            if self.discovery_skipped is None and "discovery" not in self.errors:
                return None
            return DiscoveryEvidence(candidates=[], skipped=self.discovery_skipped or self.errors["discovery"])
        found = self.discovery
        return DiscoveryEvidence(
            candidates=[candidate.to_dict() for candidate in found.candidates],
            object_masks=found.outside_share is not None,
            outside_enrichment=found.outside_enrichment,
            method=str(found.settings.get("method", "")),
        )

    def mean_scores(self, min_roi_pixels: int = DEFAULT_MIN_ROI_PIXELS) -> dict[str, dict[str, float]]:
        """Per method: ``roi_share``, ``roi_mass`` and ``roi_lift`` averaged over the probes
        that have an ROI (and a finite, non-flat map), and ``roi_enrichment`` pooled over those
        whose ROI has at least ``min_roi_pixels`` pixels (the alert rule's statistic,
        :func:`~lightning_sas.scores.metrics.roi_enrichment`).

        ``roi_lift`` is each probe's ``roi_share`` divided by its chance level ``|R| / HW``:
        how many times more of the top-ranked pixels fall on the ROI than a map that knows
        nothing would put there (at most ``HW / |R|``). Methods are left out when no probe has
        a scored ROI.
        """
        means: dict[str, dict[str, float]] = {}
        for method in self.maps:
            if method not in self.roi_share or bool(torch.isnan(share := self.roi_share[method]).all()):
                continue
            mass = self.roi_mass[method]
            means[method] = {"roi_share": float(share.nanmean()), "roi_mass": float(mass.nanmean())}
            if self.chance is not None:
                means[method]["roi_lift"] = float((share / self.chance.to(share.device)).nanmean())
            if self.roi_pixels is not None:
                pixels = self.roi_pixels.to(share.device)
                counted = torch.where(pixels >= min_roi_pixels, share, float("nan"))
                image_pixels = int(self.maps[method][0].numel())
                means[method]["roi_enrichment"] = float(roi_enrichment(counted, pixels, image_pixels))
        return means
