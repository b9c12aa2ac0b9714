"""A probe folder as a PyTorch ``Dataset``: one probe set for the training callback and the command line.

``lightning-sas audit --probe DIR [--masks DIR] [--object-masks DIR] [--labels FILE]`` reads a
folder of probe images; :class:`ProbeFolderDataset` reads the same folder, with the same reader
(:func:`~lightning_sas.probes.folder.read_probe_folder`) and the same normalisation
(:func:`~lightning_sas.probes.folder.to_probes`), as items the training callback takes for
``probe=``::

    probes = ProbeFolderDataset("probes/images", masks="probes/masks", labels="probes/labels.csv",
                                image_size=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    SASAuditCallback(probe=probes)

Each item is ``{"image": [C, H, W] float32 normalised, "label": int (-1 unknown), "mask": [H, W]
bool (the ROI, all False without a mask file), "name": the file name}``, plus ``"object_mask"``
(``[H, W]`` bool) when an object-mask folder is given. The dataset names its probes by file
(:meth:`ProbeFolderDataset.probe_name`), so the callback's manifest lists file names, and the
content hash of each probe is the one the command line computes for the same file and settings:
``lightning-sas audit --probes-from-checkpoint`` finds a checkpoint's probes again by name and
checks them by hash (:mod:`lightning_sas.probes.checkpoint_manifest`).

:meth:`ProbeFolderDataset.from_export` reads a folder written by ``lightning-sas export-probes``
(:mod:`lightning_sas.probes.export`): its images, ``masks/``, ``labels.csv`` and the size,
channels, class names and normalisation its ``manifest.json`` records. The artifact examples of
such a folder become the callback's ``artifacts=`` with
:meth:`lightning_sas.trust.intervention.Artifacts.from_folder`.
"""

from __future__ import annotations

import json
import operator
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lightning_sas.probes.errors import ProbeFolderError
from lightning_sas.probes.export_folder import LABELS_FILE, MANIFEST_FILE, MASKS_FOLDER
from lightning_sas.probes.folder import ProbeFolder, read_probe_folder, to_probes
from lightning_sas.probes.labels import class_index, read_labels
from lightning_sas.validation import check_normalization, per_channel

__all__ = ["DEFAULT_IMAGE_SIZE", "ProbeFolderDataset"]

#: The command line's default ``--image-size``; the same default here, so one setting means one thing.
DEFAULT_IMAGE_SIZE = 224


class ProbeFolderDataset(Dataset):
    """The probe images of a folder, read as ``lightning-sas audit`` reads them (see the module docstring).

    Args:
        images: Folder of probe images (file-name order; undecodable files are skipped with a warning).
        masks: Folder of ROI masks with the probes' file names (nonzero = ROI), or ``None``.
        object_masks: Folder of object masks (where the legitimate evidence is), or ``None``.
        labels: A ``filename,label`` CSV file, or a mapping ``{file name: class index or name}``;
            probes without a label get -1.
        class_names: Class names by index (labels may then be names).
        image_size: ``N`` (N x N) or ``(height, width)``: images and masks are resized to it.
        channels: 3 (RGB) or 1 (grey).
        mean: Normalisation mean, one value or one per channel (``None``: 0).
        std: Normalisation standard deviation, likewise (``None``: 1).

    Attributes:
        folder: The :class:`~lightning_sas.probes.folder.ProbeFolder` read (file hashes, sizes, skipped files).
        image_size: ``(height, width)``.
        mean: One value per channel.
        std: One value per channel.

    Raises:
        ValueError: If an argument is invalid (the message names it), or the folder holds no
            readable image (:class:`~lightning_sas.probes.errors.ProbeFolderError`).
    """

    def __init__(
        self,
        images: str | os.PathLike[str],
        *,
        masks: str | os.PathLike[str] | None = None,
        object_masks: str | os.PathLike[str] | None = None,
        labels: str | os.PathLike[str] | Mapping[str, int | str] | None = None,
        class_names: Sequence[str] | None = None,
        image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        root = _folder("images", images)
        masks_dir = None if masks is None else _folder("masks", masks)
        objects_dir = None if object_masks is None else _folder("object_masks", object_masks)
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"`channels` must be 3 (RGB) or 1 (grey), got {channels!r}.")
        self.root, self.channels, self.image_size = root, channels, _image_size(image_size)
        if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, Sequence)):
            raise ValueError(f"`class_names` must be a list of names, got {class_names!r}.")
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.mean, self.std = _normalisation(mean, std, channels)
        try:
            self.folder: ProbeFolder = read_probe_folder(
                root,
                masks_dir,
                _labels(labels, self.class_names),
                size=self.image_size,
                channels=channels,
                object_masks_dir=objects_dir,
            )
        except ProbeFolderError as error:
            raise ProbeFolderError(f"`images`: {error}") from None
        if self.folder.skipped:
            reasons = "; ".join(f"{item.file}: {item.reason}" for item in self.folder.skipped)
            warnings.warn(f"ProbeFolderDataset({str(root)!r}) skips unreadable files ({reasons}).", stacklevel=2)
        # Normalised once, as the command line does (to_probes): the same float32 values, the same hashes.
        self._probes = to_probes(self.folder, self.mean, self.std)

    @classmethod
    def from_export(cls, root: str | os.PathLike[str], **overrides: Any) -> ProbeFolderDataset:
        """The folder ``lightning-sas export-probes`` wrote: images, ``masks/``, ``labels.csv`` and ``manifest.json``.

        The manifest gives the image size (when every exported image has one size), the channels,
        the class names and the normalisation of the exported data set; ``overrides`` (any
        argument of the constructor, e.g. ``image_size=224`` or ``object_masks="lesions"``) win.

        Raises:
            ValueError: If ``root`` holds no export manifest of probes, or its images have
                different sizes and no ``image_size`` is given.
        """
        folder = _folder("root", root)
        manifest = _export_manifest(folder)
        entries = [entry for entry in manifest["probes"] if isinstance(entry, Mapping)]
        sizes = {(entry.get("height"), entry.get("width")) for entry in entries}
        channels = {entry.get("channels") for entry in entries}
        arguments: dict[str, Any] = {
            "masks": folder / MASKS_FOLDER if (folder / MASKS_FOLDER).is_dir() else None,
            "labels": folder / LABELS_FILE if (folder / LABELS_FILE).is_file() else None,
            "class_names": manifest.get("class_names"),
            "mean": manifest.get("mean"),
            "std": manifest.get("std"),
        }
        if len(channels) == 1 and next(iter(channels)) in (1, 3):
            arguments["channels"] = next(iter(channels))
        if len(sizes) == 1 and all(isinstance(side, int) for side in next(iter(sizes))):
            arguments["image_size"] = next(iter(sizes))
        elif "image_size" not in overrides:
            raise ValueError(
                f"`root` {str(folder)!r}: the exported images have {len(sizes)} different sizes; "
                "give the size the model takes, e.g. ProbeFolderDataset.from_export(root, image_size=224)."
            )
        arguments.update(overrides)
        return cls(folder, **arguments)

    def __len__(self) -> int:
        return len(self.folder.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        position = self._position(index)
        probes = self._probes
        item: dict[str, Any] = {
            "image": probes.images[position].clone(),
            "label": int(probes.labels[position]),
            "mask": probes.roi[position].clone(),
            "name": self.folder.names[position],
        }
        if probes.object_mask is not None:
            item["object_mask"] = probes.object_mask[position].clone()
        return item

    def probe_name(self, index: int) -> str:
        """The file name of probe ``index``: the name the callback's manifest records for it."""
        return self.folder.names[self._position(index)]

    @property
    def names(self) -> list[str]:
        """The probes' file names, in item order."""
        return list(self.folder.names)

    def __repr__(self) -> str:
        height, width = self.image_size
        return (
            f"{type(self).__name__}({str(self.root)!r}, {len(self)} probes, {height}x{width}, "
            f"{self.channels} channel{'s' if self.channels > 1 else ''})"
        )

    def _position(self, index: int) -> int:
        position = operator.index(index)
        if not -len(self) <= position < len(self):
            raise IndexError(f"ProbeFolderDataset: index {index} is out of range for its {len(self)} probes.")
        return position % len(self)


def _folder(argument: str, value: object) -> Path:
    """``value`` as an existing folder."""
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"`{argument}` must be a folder path, got {type(value).__name__} {value!r}.")
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"`{argument}` must be an existing folder, got {str(path)!r} (no such folder).")
    return path


def _image_size(value: object) -> tuple[int, int]:
    """``N`` or ``(height, width)`` as two positive ints."""
    sides = [value] if isinstance(value, int) else list(value) if isinstance(value, Sequence) else []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides):
        raise ValueError(f"`image_size` must be N or (height, width) with positive integers, got {value!r}.")
    return sides[0], sides[1]


def _normalisation(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> tuple[list[float], list[float]]:
    """``mean`` and ``std`` per channel, 0 and 1 where not given (as the command line's ``--mean``/``--std``)."""
    mean, std = check_normalization(mean, std)
    return per_channel("mean", mean or [0.0], channels), per_channel("std", std or [1.0], channels)


def _labels(labels: object, class_names: Sequence[str] | None) -> dict[str, int]:
    """``labels`` (a CSV path or a mapping) as ``{file name: class index}``."""
    if labels is None:
        return {}
    if isinstance(labels, str | os.PathLike):
        try:
            return read_labels(labels, class_names, class_names_source="`class_names`")
        except ProbeFolderError as error:
            raise ProbeFolderError(f"`labels`: {error}") from None
    if not isinstance(labels, Mapping):
        raise ValueError(
            "`labels` must be a 'filename,label' CSV file or a mapping {file name: class index or name}, "
            f"got {type(labels).__name__}."
        )
    indices = {}
    for name, label in labels.items():
        if isinstance(label, int) and not isinstance(label, bool) and label >= -1:
            indices[str(name)] = label
        elif isinstance(label, str):
            try:
                indices[str(name)] = class_index(label, class_names, source="`class_names`")
            except ProbeFolderError as error:
                raise ProbeFolderError(f"`labels`[{name!r}]: {error}") from None
        else:
            raise ValueError(f"`labels`[{name!r}] must be a class index (-1: unknown) or a class name, got {label!r}.")
    return indices


def _export_manifest(folder: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a probe export in ``folder``."""
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"`root` {str(folder)!r} is no export-probes folder: its {MANIFEST_FILE} cannot be read ({error}); "
            "for another folder use ProbeFolderDataset(images, masks=..., labels=...)."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("kind", "probes") != "probes":
        kind = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"`root` {str(folder)!r}: {MANIFEST_FILE} is not a probe export's (kind {kind!r}).")
    if not isinstance(manifest.get("probes"), list):
        raise ValueError(f"`root` {str(folder)!r}: {MANIFEST_FILE} lists no probes.")
    return manifest
