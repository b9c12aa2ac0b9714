"""Shortcut discovery inside one audit: whose maps, which probes, when it runs, what it costs.

Discovery (:func:`lightning_sas.trust.discovery.discover`) reads every probe's map at once
(it groups regions across probes and clusters each class's maps), so it runs after the maps
are scored and, under DDP, gathered: on the whole probe set, the same on every rank. Its
result goes to :attr:`AuditResult.discovery`; a failure goes to ``errors["discovery"]`` and the
rest of the audit stands. :func:`~lightning_sas.audit.verdict.decide` reads it through
:meth:`AuditResult.evidence`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from lightning_sas.audit.result import AuditResult
from lightning_sas.probes.probe_set import Probes
from lightning_sas.runtime.outputs import OutputSelector
from lightning_sas.runtime.progress import accounted
from lightning_sas.trust.discovery import SETTINGS, discover

#: Whose maps discovery reads when :attr:`DiscoveryOptions.method` is not given: the first of these
#: the audit has (SaS, then occlusion: the discovery study's best two; README, "Discovery study").
PREFERRED_METHODS = ("sas", "occlusion", "gradientshap", "saliency", "ig", "smoothgrad", "lime", "gradcam")
#: Fewer probes than this: discovery does not run (a candidate must recur, and SpRAy's clusters
#: need members); the verdict says it could not tell.
MIN_PROBES = 16
#: Pastes per recipient probe (each with its control) in the transplant test.
TRIALS = 4


@dataclass(frozen=True)
class DiscoveryOptions:
    """How an audit looks for shortcuts nobody named.

    Args:
        when: ``"auto"``: when the probes carry no ROI and no artifact examples were given (the
            audit has nothing else to decide on); ``"always"``; ``"never"``.
        method: Whose maps to read (a method of the audit); ``None``: the first of
            :data:`PREFERRED_METHODS` the audit has.
        seed: Seed of the transplants' and the clustering's draws.
        settings: Further settings of :func:`~lightning_sas.trust.discovery.discover`
            (``top_fraction``, ``trials``, ``max_clusters``, ...).
    """

    when: Literal["auto", "always", "never"] = "auto"
    method: str | None = None
    seed: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.when not in ("auto", "always", "never"):
            raise ValueError(f"`discovery.when` must be 'auto', 'always' or 'never', got {self.when!r}.")
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError(f"`discovery.method` must be a method name or None, got {self.method!r}.")
        unknown = sorted(set(self.settings) - set(SETTINGS))
        if unknown:
            raise ValueError(f"`discovery.settings` has unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}.")

    def applies(self, probes: Probes, artifacts_given: bool) -> bool:
        """Whether this audit runs discovery."""
        if self.when == "auto":
            return not artifacts_given and not bool(probes.has_roi.any())
        return self.when == "always"

    def method_for(self, methods: Mapping[str, Any]) -> str | None:
        """The method whose maps discovery reads, among ``methods`` (``None`` if none fits)."""
        if self.method is not None:
            return self.method if self.method in methods else None
        return next((name for name in PREFERRED_METHODS if name in methods), next(iter(methods), None))

    def passes(self, probes: int) -> int:
        """Model passes of the transplant test, at most: a paste and its control per trial and probe."""
        return 2 * int(self.settings.get("trials", TRIALS)) * probes


def run_discovery(
    model: nn.Module, probes: Probes, result: AuditResult, options: DiscoveryOptions, output: OutputSelector = None
) -> None:
    """Look for shortcuts in ``result``'s maps: :attr:`AuditResult.discovery`, or why not.

    Why not goes to ``result.discovery_skipped`` (too few probes, no method's maps) or
    ``result.errors["discovery"]`` (it failed).
    """
    method = options.method_for(result.maps)
    if method is None:
        result.discovery_skipped = "no method has maps to read" + (
            f" (asked for {options.method!r})" if options.method else ""
        )
        return
    if len(probes) < MIN_PROBES:
        result.discovery_skipped = f"{len(probes)} probes; discovery needs at least {MIN_PROBES}"
        return
    settings = {"trials": TRIALS, **options.settings}
    try:
        with accounted(options.passes(len(probes))):
            found = discover(
                model,
                probes.images,
                result.maps[method],
                result.predictions.to(probes.images.device),
                probes.object_mask,
                labels=probes.labels,
                seed=options.seed,
                output=output,
                **settings,
            )
    except Exception as error:  # noqa: BLE001 - discovery's failure must not lose the audit's other results
        result.errors["discovery"] = f"{type(error).__name__}: {error}"
        return
    found.settings["method"] = method
    result.discovery = found
