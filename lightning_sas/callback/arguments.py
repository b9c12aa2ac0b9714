"""The callback's constructor checks: cheap, before any Trainer exists; each message names the
argument, its value and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from lightning_sas.audit.discovery import DiscoveryOptions
from lightning_sas.audit.verdict import AlertRule
from lightning_sas.scores.faithfulness import Faithfulness
from lightning_sas.trust.intervention import Artifacts
from lightning_sas.trust.sanity import DEFAULT_STAGES
from lightning_sas.validation import require_choice, require_int, require_optional_int


def check_probe(probe: object, probe_count: object) -> None:
    """``probe``: a count >= 1, a non-empty list of indices, or a Dataset (with ``probe_count``)."""
    if isinstance(probe, bool) or not isinstance(probe, int | Sequence | Dataset):
        raise ValueError(f"`probe` must be an int, a list of indices or a Dataset, got {type(probe).__name__}.")
    if isinstance(probe, int) and probe < 1:
        raise ValueError(f"`probe` must be at least 1, got {probe}.")
    if isinstance(probe, Sequence) and (
        len(probe) == 0 or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in probe)
    ):
        raise ValueError(f"`probe` indices must be a non-empty list of integers >= 0, got {list(probe)!r}.")
    require_optional_int("probe_count", probe_count, minimum=1)
    if probe_count is not None and not isinstance(probe, Dataset):
        raise ValueError(
            f"`probe_count`={probe_count} chooses probes from a `probe` Dataset; with probe={probe!r} "
            "say how many validation images to pick with `probe` itself."
        )


def check_choices(
    name: object,
    every_n_epochs: object,
    target: object,
    on_error: object,
    shortcut_threshold: object,
    warm_start_iterations: object,
) -> None:
    """The callback's scalar options."""
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ \t\n"):
        raise ValueError(f"`name` must be a non-empty string without '/' or spaces, got {name!r}.")
    require_int("every_n_epochs", every_n_epochs, minimum=1)
    require_choice("target", target, ("pred", "label"))
    require_choice("on_error", on_error, ("warn", "raise"))
    if shortcut_threshold is not None and not 0 <= shortcut_threshold <= 1:  # type: ignore[operator]
        raise ValueError(f"`shortcut_threshold` must be in [0, 1] or None, got {shortcut_threshold!r}.")
    require_optional_int("warm_start_iterations", warm_start_iterations, minimum=1)


def check_cost_share(cost_warning_share: object) -> None:
    """A positive number (``math.inf``: estimate, never warn) or ``None``."""
    if cost_warning_share is not None and (
        isinstance(cost_warning_share, bool)
        or not isinstance(cost_warning_share, int | float)
        or cost_warning_share <= 0
    ):
        raise ValueError(f"`cost_warning_share` must be a positive number or None, got {cost_warning_share!r}.")


def check_types(alert_rule: object, artifacts: object) -> None:
    """``alert_rule`` and ``artifacts`` are of their classes (or ``None``)."""
    if alert_rule is not None and not isinstance(alert_rule, AlertRule):
        raise ValueError(f"`alert_rule` must be an AlertRule or None, got {type(alert_rule).__name__}.")
    if artifacts is not None and not isinstance(artifacts, Artifacts):
        raise ValueError(
            f"`artifacts` must be lightning_sas.trust.intervention.Artifacts or None, got {type(artifacts).__name__}."
        )


def faithfulness_option(faithfulness: object) -> Faithfulness | bool:
    """``True`` -> the default :class:`Faithfulness`; ``False`` or a :class:`Faithfulness` as given."""
    if faithfulness is True:
        faithfulness = Faithfulness()
    if faithfulness is not False and not isinstance(faithfulness, Faithfulness):
        raise ValueError(
            "`faithfulness` must be True, False or a lightning_sas.scores.faithfulness.Faithfulness, "
            f"got {faithfulness!r}."
        )
    return faithfulness  # type: ignore[return-value]


def discovery_option(discovery: object) -> DiscoveryOptions:
    """``"auto"``, ``"always"``, ``"never"`` (or ``None``) -> :class:`DiscoveryOptions`; one given as it is."""
    if isinstance(discovery, DiscoveryOptions):
        return discovery
    if discovery is None:
        return DiscoveryOptions(when="never")
    if discovery not in ("auto", "always", "never"):
        raise ValueError(
            "`discovery` must be 'auto' (when the probes have no ROI and no artifacts are given), 'always', "
            f"'never' or a lightning_sas.audit.discovery.DiscoveryOptions, got {discovery!r}."
        )
    return DiscoveryOptions(when=discovery)  # type: ignore[arg-type]


def sanity_stages_option(sanity: object) -> int:
    """``True`` -> the default stages, ``False`` -> 0, or a number of stages >= 0."""
    if isinstance(sanity, bool):
        sanity = DEFAULT_STAGES if sanity else 0
    if not isinstance(sanity, int) or sanity < 0:
        raise ValueError(f"`sanity` must be True, False or a number of stages >= 1, got {sanity!r}.")
    return sanity  # type: ignore[return-value]
