"""Find a localised shortcut nobody named: recurring attributed regions, transplanted.

The ROI scores and :func:`~lightning_sas.trust.intervention.intervene` need the user to say what the
artifact is. This module looks for it from the maps, at two levels of side information:

* **object masks** (where the legitimate evidence is: a lesion segmentation): the map's
  top-ranked pixels *outside* the (slightly dilated) object are the suspects;
* **nothing**: the map's top-ranked compact regions, the object itself included.

Pipeline (:func:`discover`), one module per step:

1. :func:`~lightning_sas.trust.discovery.candidate_regions.propose_candidates` -- per probe, the top
   ``top_fraction`` of the (lightly smoothed) map's pixels, split into 8-connected components; the
   ``regions_per_probe`` components with most attribution mass are the probe's regions
   (:mod:`~lightning_sas.trust.discovery.probe_regions`); with object masks, each grown to the whole visual
   thing it sits on (:mod:`~lightning_sas.trust.discovery.region_completion`; ``completion``). Regions of
   probes predicted as the same class are grouped where they recur: into places (mask IoU), then
   places into things with the same typical content
   (:mod:`~lightning_sas.trust.discovery.region_grouping`, comparing crops with
   :mod:`~lightning_sas.trust.discovery.region_content`, rotations and flips allowed, so a sticker
   in any corner is one candidate). Each thing seen in ``min_sources`` probes or more is a
   :class:`~lightning_sas.trust.discovery.candidate.Candidate`, measured by
   :mod:`~lightning_sas.trust.discovery.candidate_measures`.
2. :func:`~lightning_sas.trust.discovery.transplant.transplant` -- the causal test: each candidate's pixels,
   cut from its source probes, are pasted at the same place onto probes predicted as other
   classes; the share whose prediction moves to the candidate's class is its ``flip_rate``. The
   *control* pastes, onto the same recipients at the same place, a same-shaped window taken from
   *elsewhere* in the source (off its top-attributed pixels and off the object): a non-local cue
   (a colour cast, the source's overall exposure) travels with any window and flips the controls
   too; a localised shortcut does not.
3. :func:`~lightning_sas.trust.discovery.strategies.cluster_strategies` -- SpRAy's clusters of each class's
   maps, for the report.

**Telling a shortcut from the object.** Without masks, a clean model's top region *is* the object,
and transplanting a malignant lesion onto a benign image flips it too: a flip rate alone would
call every good model biased. The candidate carries the signals that can separate the two, all
computed without knowing what the artifact looks like:

* ``control_flip_rate`` -- besides non-local cues, the control catches *place* effects: at the
  object's place every recipient has its own object, and pasting anything there (even skin from
  the source) damages it and moves the prediction; at an artifact's place recipients show
  background, and a background window changes nothing. ``flip_rate - control_flip_rate`` is what
  the region's own content does.
* ``other_class_similarity`` -- how alike the region's content is to what probes of the *other*
  classes show at the same place (standardised by the probe set's own pixel statistics: 1
  identical, 0 as different as two random pixels of the probe set). The object is in every image
  (a benign lesion sits where the malignant one does, and looks like one); an artifact is present
  or absent (the other classes mostly show skin there).
* ``consistency`` -- how alike the region's content is across its sources (an artifact is a copy
  of one thing; objects of one class vary). Measured the same way, best of 8 rotations/flips.
* ``spread``, ``centre_distance``, ``area``, ``attribution_share``, ``places`` -- where it sits
  and how much of the map it holds: a dominant central object versus a thing at the side.
* ``outside_object`` -- with masks, the share of the region off the object.
* ``source_accuracy`` -- with labels, the share of the probes where the region appears that are
  labelled as its class. A shortcut predicts its class wherever it appears, so where the probes
  break its link with the label (the artifact on images of another class) the model is wrong on
  them; the object a clean model reads goes with the label. Of these signals it is the one that
  separated shortcuts from objects without masks in the discovery study.

Measured on the ruler demo at 32 px (small CNNs, occlusion and Grad-CAM maps, 64 probes; before
region completion): the ruler and corner-patch shortcuts gave flip rates 0.56-1.0 with controls
0.10-0.17 and other-class similarity <= 0 (one candidate over the four edges / corners); the clean
model's lesion gave flip 0.84 with control 0.43 and other-class similarity 0.38. ``consistency``
did *not* separate them there (a ruler's ticks differ in phase and the skin around them varies,
0.2-0.6; lesions are smooth dark blobs, 0.75): it is reported, not used in
:attr:`Candidate.suspicion`. With object masks the separation is clear: no candidate of the clean
or colour-cast models flipped more than 0.1. Grad-CAM's coarse cells at 32 px sit beside a thin
ruler rather than on it (its regions then miss the ruler and do not flip); occlusion and finer
maps find it.

:attr:`Candidate.suspicion` combines the signals into one documented ordering score; the alert
rule (thresholds chosen on seeded studies) lives elsewhere and reads the fields.

Every model forward runs inside :func:`~lightning_sas.runtime.model_state.attribution_mode` and
``torch.no_grad()``; every random draw comes from a local ``torch.Generator`` seeded from
``seed`` and the candidate, so the model's flags and the global random streams are untouched and
a candidate's result does not depend on the other candidates measured with it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from torch import Tensor, nn

from lightning_sas.runtime.outputs import OutputSelector
from lightning_sas.scores.object_evidence import object_enrichment, outside_enrichment, outside_share
from lightning_sas.trust.discovery.candidate import NAN, Candidate, json_float, suspicion_order
from lightning_sas.trust.discovery.candidate_measures import source_accuracy
from lightning_sas.trust.discovery.candidate_regions import propose_candidates
from lightning_sas.trust.discovery.strategies import Strategies, cluster_strategies
from lightning_sas.trust.discovery.transplant import transplant
from lightning_sas.validation import require_int

# propose_candidates and transplant are this module's API too (discover's two steps, one at a time).
__all__ = ["Candidate", "Discovery", "discover", "propose_candidates", "transplant"]


@dataclass
class Discovery:
    """What :func:`discover` found.

    Attributes:
        candidates: The candidates, most suspicious first (:attr:`Candidate.suspicion`).
        outside_share: ``[N]`` per probe :func:`~lightning_sas.scores.object_evidence.outside_share`
            (with the object dilated by the discovery's margin); ``None`` without object masks.
        object_area: ``[N]`` object area share per probe; ``None`` without object masks.
        strategies: Per predicted class, SpRAy's clusters of its maps.
        outside_enrichment: Pooled :func:`~lightning_sas.scores.object_evidence.outside_enrichment`
            (0 chance, 1 all top pixels off the object); NaN without object masks.
        object_enrichment: Pooled :func:`~lightning_sas.scores.object_evidence.object_enrichment`
            (1 all top pixels on the object, 0 chance); NaN without object masks.
        settings: The settings used (defaults filled in), for reports.
    """

    candidates: list[Candidate]
    outside_share: Tensor | None
    object_area: Tensor | None
    strategies: dict[int, Strategies]
    outside_enrichment: float = NAN
    object_enrichment: float = NAN
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-able data (tensors as lists, NaN as ``None``, no masks or maps)."""
        return {
            "candidates": [candidate.to_dict() for candidate in self.candidates],
            "outside_share": None
            if self.outside_share is None
            else [json_float(v) for v in self.outside_share.tolist()],
            "object_area": None if self.object_area is None else [json_float(v) for v in self.object_area.tolist()],
            "outside_enrichment": json_float(self.outside_enrichment),
            "object_enrichment": json_float(self.object_enrichment),
            "strategies": {str(key): value.to_dict() for key, value in sorted(self.strategies.items())},
            "settings": dict(self.settings),
        }

    def summary(self) -> str:
        """A few lines for logs: the object scores, then one line per candidate."""
        lines = []
        if self.outside_share is not None:
            lines.append(
                f"evidence off the object: enrichment {self.outside_enrichment:+.2f} "
                f"(0 chance, 1 all top pixels off it); on it: {self.object_enrichment:+.2f}"
            )
        split = [f"class {key}: {value.clusters}" for key, value in sorted(self.strategies.items())]
        lines.append("strategies per class: " + (", ".join(split) if split else "none"))
        lines += [candidate.summary() for candidate in self.candidates] or ["no recurring region"]
        return "\n".join(lines)


_PROPOSAL_SETTINGS = (
    "top_fraction",
    "max_candidates",
    "regions_per_probe",
    "min_sources",
    "smoothing",
    "object_margin",
    "link_iou",
    "merge_distance",
    "completion",
)
_TRANSPLANT_SETTINGS = ("trials", "max_recipients", "max_batch")
_STRATEGY_SETTINGS = ("max_clusters",)
#: Every setting :func:`discover` takes.
SETTINGS = (*_PROPOSAL_SETTINGS, *_TRANSPLANT_SETTINGS, *_STRATEGY_SETTINGS)


def discover(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    predictions: Tensor,
    object_masks: Tensor | None = None,
    *,
    labels: Tensor | None = None,
    seed: int = 0,
    output: OutputSelector = None,
    **settings: object,
) -> Discovery:
    """Look for a localised shortcut nobody named: propose, transplant, cluster (see the module docstring).

    Args:
        model: The classifier the maps explain (left as it was found).
        images: The probes ``[N, C, H, W]`` as the model takes them.
        maps: Their attribution maps ``[N, H, W]`` for the predicted classes.
        predictions: ``[N]`` the predicted classes.
        object_masks: Optional ``[N, H, W]`` masks of the legitimate object.
        labels: Optional ``[N]`` true classes (below 0: unknown), for each candidate's
            ``source_accuracy``.
        seed: Seed of the transplant's and the clustering's draws.
        output: Where the logits are in the model's output.
        **settings: Any of :func:`propose_candidates`' settings (``top_fraction``, ``max_candidates``,
            ``regions_per_probe``, ``min_sources``, ``smoothing``, ``object_margin``, ``link_iou``,
            ``merge_distance``, ``completion``), :func:`transplant`'s (``trials``, ``max_recipients``,
            ``max_batch``) and :func:`~lightning_sas.trust.discovery.strategies.cluster_strategies`' ``max_clusters``.

    Returns:
        The :class:`Discovery`, its candidates transplanted and ordered by suspicion.

    Raises:
        ValueError: If a setting is unknown or out of range, or the inputs do not fit.

    Example:
        >>> import torch
        >>> class Corner(nn.Module):  # class 1 iff the top-left 4x4 corner is bright
        ...     def forward(self, x):
        ...         logit = 10 * (x[:, :, :4, :4].mean(dim=(1, 2, 3)) - 0.5)
        ...         return torch.stack([-logit, logit], dim=1)
        >>> images = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.3
        >>> images[:8, :, :4, :4] = 1.0  # a white sticker on half of them
        >>> maps = torch.zeros(16, 16, 16)
        >>> maps[:8, :4, :4] = 1.0  # the maps of the sticker's class point at it
        >>> maps[8:, 6:10, 6:10] = 1.0
        >>> found = discover(Corner(), images, maps, Corner()(images).argmax(dim=1))
        >>> top = found.candidates[0]
        >>> top.class_index, top.box, top.flip_rate, top.control_flip_rate
        (1, (0.0, 0.0, 0.25, 0.25), 1.0, 0.0)
    """
    require_int("seed", seed, minimum=0)
    proposal, moves, clustering = _split_settings(settings)
    candidates = propose_candidates(maps, predictions, images, object_masks, **proposal)  # type: ignore[arg-type]
    candidates = transplant(model, images, predictions, candidates, seed=seed, output=output, **moves)  # type: ignore[arg-type]
    for candidate in candidates:
        candidate.source_accuracy, candidate.labelled_sources = source_accuracy(
            labels, candidate.sources, candidate.class_index
        )
    candidates.sort(key=suspicion_order)
    margin = proposal.get("object_margin", _DEFAULTS["object_margin"])
    return Discovery(
        candidates=candidates,
        strategies=cluster_strategies(maps, predictions, seed=seed, **clustering),  # type: ignore[arg-type]
        settings={"seed": seed, **{name: settings.get(name, _DEFAULTS[name]) for name in SETTINGS}},
        **_object_scores(maps, object_masks, float(margin)),  # type: ignore[arg-type]
    )


def _split_settings(settings: dict[str, object]) -> tuple[dict[str, object], ...]:
    """``(proposal, transplant, clustering)`` settings; ``ValueError`` for an unknown one."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown discovery setting(s) {unknown}; expected some of {list(SETTINGS)}.")
    return tuple(
        {name: settings[name] for name in names if name in settings}
        for names in (_PROPOSAL_SETTINGS, _TRANSPLANT_SETTINGS, _STRATEGY_SETTINGS)
    )


def _object_scores(maps: Tensor, object_masks: Tensor | None, object_margin: float) -> dict:
    """:class:`Discovery`'s object fields: per-probe outside share and object area, the pooled
    enrichments (the object dilated by ``object_margin`` of the side); ``None`` / NaN without masks."""
    if object_masks is None:
        return {"outside_share": None, "object_area": None, "outside_enrichment": NAN, "object_enrichment": NAN}
    cpu_maps = maps.detach().float().cpu()
    masks = object_masks.detach().cpu()
    masks = masks > 0.5 if masks.is_floating_point() else masks != 0
    margin = round(object_margin * max(maps.shape[-2:]))
    return {
        "outside_share": outside_share(cpu_maps, masks, margin=margin),
        "object_area": masks.flatten(1).float().mean(dim=1),
        "outside_enrichment": outside_enrichment(cpu_maps, masks, margin=margin),
        "object_enrichment": object_enrichment(cpu_maps, masks, margin=margin),
    }


#: Every setting's default, read from the functions' signatures (one source of truth).
_DEFAULTS = {
    name: parameter.default
    for function in (propose_candidates, transplant)
    for name, parameter in inspect.signature(function).parameters.items()
    if name in (*_PROPOSAL_SETTINGS, *_TRANSPLANT_SETTINGS)
} | {"max_clusters": inspect.signature(cluster_strategies).parameters["max_clusters"].default}
