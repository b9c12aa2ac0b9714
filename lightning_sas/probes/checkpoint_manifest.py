"""The probe manifest a training run left in its Lightning checkpoint, and the probes of a folder it names.

The training callback keeps its probe manifest in its checkpoint state,
``checkpoint["callbacks"][<state key>]["manifest"]``: one ``{"name", "index", "label", "sha256"}``
per probe, in audit order (:meth:`~lightning_sas.probes.probe_set.Probes.manifest`; ``sha256`` is
:func:`~lightning_sas.probes.probe_set.content_hash` of the normalised float32 image). With
``probe=ProbeFolderDataset(...)`` the names are file names
(:mod:`lightning_sas.probes.folder_dataset`), so a later audit of the checkpoint can take exactly
those probes from the folder (``lightning-sas audit --probes-from-checkpoint``):

* :func:`read_checkpoint_manifest`: the manifest of one audit callback's state, found by the
  callback's ``name`` (the only one when the checkpoint holds one; with several, the name is
  required: picking one silently would audit another probe set than asked);
* :func:`select_recorded`: the folder's probes the manifest names, in its order, checked by
  content hash (a changed file, or other image size / channels / normalisation than in
  training, is refused), with the labels the manifest records where the folder has none.

Problems raise :class:`ManifestError` (a ``ValueError``) naming the checkpoint or the file;
callers add which option it came from. Only the standard library is imported with this
module: torch is imported by the functions that need it.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_sas.probes.folder import ProbeFolder

__all__ = ["DEFAULT_CALLBACK_NAME", "ManifestError", "RecordedProbes", "read_checkpoint_manifest", "select_recorded"]

#: The callback's default ``name``, which its checkpoint state key leaves out (the key of
#: checkpoints written before ``name`` existed).
DEFAULT_CALLBACK_NAME = "audit"
#: Names the callback gives probes of a Dataset that does not name them (``val[3]``, ``probe[0] a.png``).
_INDEX_NAME = re.compile(r"^\w+\[\d+\]")


class ManifestError(ValueError):
    """A checkpoint without a usable probe manifest, or a folder that does not hold its probes."""


@dataclass(frozen=True)
class RecordedProbes:
    """One audit callback's probe manifest, as a checkpoint holds it.

    Attributes:
        checkpoint: The checkpoint file.
        callback: The callback's ``name``.
        entries: ``{"name", "index", "label", "sha256"}`` per probe, in audit order.
    """

    checkpoint: Path
    callback: str
    entries: list[dict[str, Any]]

    def where(self) -> str:
        """``"runs/last.ckpt (callback 'audit')"``, for messages."""
        return f"{self.checkpoint} (callback {self.callback!r})"


def read_checkpoint_manifest(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    trust: bool = False,
    name_hint: str = "pass its name",
    trust_hint: str = "load it with trust=True",
) -> RecordedProbes:
    """The probe manifest of the audit callback ``name`` in the checkpoint ``path``.

    Args:
        path: A Lightning checkpoint (``Trainer.save_checkpoint``, ``ModelCheckpoint``).
        name: The callback's ``name``; ``None``: the checkpoint's only audit callback.
        trust: Allow unpickling arbitrary Python objects (weights only otherwise).
        name_hint: How the message for several callbacks tells a user to name one.
        trust_hint: How the message for a checkpoint that needs unpickling tells a user to trust it.

    Raises:
        ManifestError: If the file cannot be read, holds no audit callback state, not the one
            named, several without ``name``, or a state whose manifest is empty.
    """
    path = Path(path)
    states = audit_states(_load(path, trust, trust_hint))
    if not states:
        raise ManifestError(
            f"{path} holds no SASAuditCallback state, so no probe manifest: it was not saved by a Trainer "
            "with the audit callback (or with save_weights_only=True)."
        )
    if name is None and len(states) > 1:
        raise ManifestError(
            f"{path} holds the states of {len(states)} audit callbacks ({', '.join(map(repr, states))}); "
            f"which one's probes: {name_hint}."
        )
    chosen = name if name is not None else next(iter(states))
    if chosen not in states:
        raise ManifestError(
            f"{path} holds no audit callback named {chosen!r}; its audit callbacks: {', '.join(map(repr, states))}."
        )
    entries = [dict(entry) for entry in states[chosen].get("manifest") or [] if isinstance(entry, Mapping)]
    if not entries:
        raise ManifestError(
            f"{path}: the audit callback {chosen!r} recorded no probe (it is saved before the first training "
            "epoch chose its probes)."
        )
    return RecordedProbes(path, chosen, entries)


def audit_states(checkpoint: object) -> dict[str, Mapping[str, Any]]:
    """The audit callbacks' states in a loaded checkpoint, by callback ``name``.

    A state is recognised by its content (``manifest`` and ``audited_epochs``), so a subclass of
    the callback is found too; its name is read from the state key Lightning builds from it.
    """
    callbacks = checkpoint.get("callbacks") if isinstance(checkpoint, Mapping) else None
    if not isinstance(callbacks, Mapping):
        return {}
    states: dict[str, Mapping[str, Any]] = {}
    for key, state in callbacks.items():
        if isinstance(state, Mapping) and isinstance(state.get("manifest"), list) and "audited_epochs" in state:
            states[_callback_name(key)] = state
    return states


def _callback_name(key: object) -> str:
    """The ``name`` in a state key such as ``SASAuditCallback{'probes': 'validation', 'name': 'val'}``."""
    text = str(key)
    start = text.find("{")
    try:
        fields = ast.literal_eval(text[start:]) if start >= 0 else None
    except (ValueError, SyntaxError):
        fields = None
    if isinstance(fields, dict):
        return str(fields.get("name", DEFAULT_CALLBACK_NAME))
    return text


def _load(path: Path, trust: bool, trust_hint: str) -> object:
    """The checkpoint's content on the CPU; its tensors memory-mapped, not read (only the manifest is used)."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        if not trust and "Unsupported global" in str(error):
            raise ManifestError(
                f"{path} needs unpickling arbitrary Python objects to be read, which could run code from the file; "
                f"if you trust its origin, {trust_hint}."
            ) from None
        raise ManifestError(f"{path} cannot be read ({_first_line(error)}).") from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise ManifestError(f"{path} cannot be read ({type(error).__name__}: {_first_line(error)}).") from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def select_recorded(
    folder: ProbeFolder,
    recorded: RecordedProbes,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    settings: str = "the image size, channels, mean and std",
) -> ProbeFolder:
    """The probes of ``folder`` that ``recorded`` names, in its order, checked against its content hashes.

    Args:
        folder: The probe folder read (:func:`~lightning_sas.probes.folder.read_probe_folder`).
        recorded: From :func:`read_checkpoint_manifest`.
        mean: Normalisation per channel, as given to :func:`~lightning_sas.probes.folder.to_probes`.
        std: Likewise.
        settings: How messages name the reading settings that change the hashes.

    Returns:
        A folder of those probes only (no skipped files); a probe without a label in ``folder``
        has the manifest's.

    Raises:
        ManifestError: If a recorded probe is not in the folder (or cannot be read), a probe's
            content hash differs (the first one is named, with the likely cause), or a label
            differs from the recorded one.
    """
    positions = {name: position for position, name in enumerate(folder.names)}
    unreadable = {item.file: item.reason for item in folder.skipped}
    chosen = []
    for entry in recorded.entries:
        name = str(entry.get("name"))
        if name in unreadable:
            raise ManifestError(f"{name}, a probe of {recorded.where()}, cannot be read: {unreadable[name]}.")
        if name not in positions:
            raise ManifestError(_missing(name, recorded))
        chosen.append(positions[name])
    selected = _subset(folder, chosen)
    _check_hashes(selected, recorded, mean, std, settings)
    _take_labels(selected, recorded)
    return selected


def _missing(name: str, recorded: RecordedProbes) -> str:
    message = f"{name}, a probe of {recorded.where()}, is not in the folder"
    if _INDEX_NAME.match(name):
        message += (
            " (a name the callback gives items of a Dataset without file names: train with "
            "probe=ProbeFolderDataset(...) so that the manifest names files)"
        )
    return message + "."


def _subset(folder: ProbeFolder, positions: Sequence[int]) -> ProbeFolder:
    def pick(values: list) -> list:
        return [values[position] for position in positions] if values else []

    return ProbeFolder(
        names=pick(folder.names),
        images=pick(folder.images),
        masks=pick(folder.masks),
        labels=pick(folder.labels),
        file_hashes=pick(folder.file_hashes),
        skipped=[],
        file_sizes=pick(folder.file_sizes),
        object_masks=pick(folder.object_masks),
    )


def _check_hashes(
    selected: ProbeFolder, recorded: RecordedProbes, mean: Sequence[float], std: Sequence[float], settings: str
) -> None:
    from lightning_sas.probes.folder import to_probes
    from lightning_sas.probes.probe_set import content_hash

    images = to_probes(selected, mean, std).images
    differing = [
        entry["name"]
        for entry, image in zip(recorded.entries, images, strict=True)
        if content_hash(image) != entry.get("sha256")
    ]
    if not differing:
        return
    count = len(recorded.entries)
    if len(differing) == count:
        cause = (
            f"none of its {count} probes hashes as in training, so the reading likely differs: {settings} must be "
            "those the training's ProbeFolderDataset used (or the training's batch hooks changed the images)"
        )
    else:
        cause = (
            f"{len(differing)} of its {count} probes differ ({', '.join(differing[:3])}"
            f"{', ...' if len(differing) > 3 else ''}): the file changed since training (edited, re-exported, "
            "re-encoded)"
        )
    raise ManifestError(
        f"{differing[0]}: its content differs from the probe of that name in {recorded.where()} "
        f"(sha256 of the normalised image); {cause}."
    )


def _take_labels(selected: ProbeFolder, recorded: RecordedProbes) -> None:
    """The recorded label where the folder has none; a different known label is refused."""
    for position, entry in enumerate(recorded.entries):
        label = entry.get("label")
        if not isinstance(label, int) or label < 0:
            continue
        if selected.labels[position] < 0:
            selected.labels[position] = label
        elif selected.labels[position] != label:
            raise ManifestError(
                f"{entry['name']}: its label is {selected.labels[position]} here and {label} in "
                f"{recorded.where()}; the labels must be those of training."
            )
