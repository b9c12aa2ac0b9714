"""What the callback keeps across audits: one object that is reset, saved and resumed whole.

The records are plain data (lists of dicts, CPU tensors): the probe manifest, the score
history, alerts, verdicts, the sanity check's outcome, and the last audit's maps and masks
(for drift scores and warm starts). :class:`RecordField` lets the callback expose each as
an attribute (``callback.history``) while the records stay one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class AuditRecords:
    """The callback's memory of one training run: what it audited, scored, alerted and saw."""

    manifest: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    audited_epochs: list[int] = field(default_factory=list)
    probe_changes: list[dict] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    #: The sanity check's outcome, once it ran: stages, per-stage similarity per method, flagged
    #: methods, threshold, epoch.
    sanity: dict[str, Any] | None = None
    previous_maps: dict[str, Tensor] = field(default_factory=dict)
    previous_masks: dict[str, Tensor] = field(default_factory=dict)
    #: The manifest of a checkpoint being resumed, until the probe set is chosen again and compared.
    loaded_manifest: list[dict] | None = None
    #: "Cannot tell" reasons already warned about (each new reason once).
    cannot_tell_warned: set[str] = field(default_factory=set)

    def state_dict(self, checkpoint_maps: bool) -> dict[str, Any]:
        """The records for a Lightning checkpoint (maps as float16, or none without ``checkpoint_maps``)."""
        return {
            "manifest": self.manifest,
            "alerts": self.alerts,
            "sanity": self.sanity,
            "audited_epochs": self.audited_epochs,
            "probe_changes": self.probe_changes,
            "history": self.history,
            "previous_maps": {name: maps.half() for name, maps in self.previous_maps.items()}
            if checkpoint_maps
            else {},
            "previous_masks": self.previous_masks if checkpoint_maps else {},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> AuditRecords:
        """The records a checkpoint holds (the manifest is kept aside until the probes are chosen again)."""
        return cls(
            loaded_manifest=list(state.get("manifest", [])) or None,
            alerts=list(state.get("alerts", [])),
            sanity=state.get("sanity"),
            audited_epochs=list(state.get("audited_epochs", [])),
            probe_changes=list(state.get("probe_changes", [])),
            history=list(state.get("history", [])),
            previous_maps={name: maps.float() for name, maps in state.get("previous_maps", {}).items()},
            previous_masks=dict(state.get("previous_masks", {})),
        )

    def compare_manifest(self, manifest: list[dict], epoch: int) -> str | None:
        """Take the new probe set's ``manifest``; a message if it differs from a resumed checkpoint's.

        A changed probe set makes drift scores and warm starts meaningless: they start afresh.
        """
        loaded, self.manifest = self.loaded_manifest, manifest
        if loaded is None:
            return None
        changed = [new["name"] for old, new in zip(loaded, manifest, strict=False) if old["sha256"] != new["sha256"]]
        if not changed and len(loaded) == len(manifest):
            return None
        self.probe_changes.append({"epoch": epoch, "probes": changed})
        self.previous_maps, self.previous_masks = {}, {}
        return (
            f"SASAuditCallback: the probe set changed since the checkpoint: {changed or 'count differs'} "
            "no longer hash to the same content. Scores before and after this point are not comparable."
        )

    def record_audit(
        self, epoch: int, step: int, scalars: dict[str, float], maps: dict[str, Tensor], masks: dict[str, Tensor]
    ) -> None:
        """One audit's scalars in the history, and its maps (and warm-start masks) for the next one."""
        self.audited_epochs.append(epoch)
        self.history.append({"epoch": float(epoch), "step": float(step), **scalars})
        self.previous_maps.update({name: value.detach().cpu() for name, value in maps.items()})
        self.previous_masks.update({name: value.detach().cpu() for name, value in masks.items()})


class RecordField:
    """A callback attribute that lives in its :class:`AuditRecords` (``callback.history`` is
    ``callback.records.history``), so resetting, saving and resuming treat them as one."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else getattr(instance.records, self.name)

    def __set__(self, instance: Any, value: Any) -> None:
        setattr(instance.records, self.name, value)
