"""A folder of probe images on disk, read into :class:`~lightning_sas.probes.probe_set.Probes`.

The command line (``lightning-sas audit --probe DIR --masks DIR --labels FILE``) reads its
probes with this module, and so can a script:

* :func:`read_labels`: ``filename,label`` rows of a CSV file, labels as class indices or names
  (:mod:`lightning_sas.probes.labels`);
* :func:`read_probe_folder`: every image in a folder (file-name order), converted to RGB or grey,
  resized, scaled to [0, 1], with its mask (same file name in the masks folder) and label;
  files that cannot be decoded are skipped and listed (:class:`SkippedFile`);
* :func:`to_probes`: the folder as normalised tensors on a device;
* :func:`read_artifact_folder`: a folder of artifact patches with their masks
  (``lightning-sas audit --artifacts DIR``; :mod:`lightning_sas.probes.artifact_folder`), which
  :func:`lightning_sas.trust.intervention.to_artifacts` turns into the intervention's input;
* :func:`class_index`: a class given by name or index (``--artifact-class``).

Decoding and converting the image files is :mod:`lightning_sas.probes.images`.

Problems with the inputs raise :class:`ProbeFolderError` (a ``ValueError``) with a message that
names the file; callers add which option or argument it came from.

Only the standard library is imported with this module: OpenCV, NumPy and torch are imported
by the functions that need them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_sas.probes.errors import ProbeFolderError
from lightning_sas.probes.images import (
    IMAGE_EXTENSIONS,
    decode_image,
    height_width,
    image_files,
    mask_file,
    prepare_image,
    read_mask,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lightning_sas.probes.probe_set import Probes

__all__ = [
    "ProbeFolder",
    "SkippedFile",
    "read_probe_folder",
    "to_probes",
]


@dataclass(frozen=True)
class SkippedFile:
    """A probe file the audit could not use, and why."""

    file: str
    reason: str


@dataclass
class ProbeFolder:
    """Probe images read from disk, before they become tensors.

    Attributes:
        names: File names of the readable probes, in order.
        images: ``[H, W, C]`` float32 arrays in [0, 1], resized.
        masks: ``[H, W]`` bool arrays (all False without a mask), resized.
        labels: Class index per probe, -1 where unknown.
        file_hashes: SHA-256 of each probe's file bytes.
        skipped: Files that could not be used, with the reason.
        file_sizes: ``(height, width)`` of each probe's file, before resizing.
        object_masks: ``[H, W]`` bool arrays of where the legitimate evidence is (all False
            without one), resized; empty when no object-mask folder was given.
    """

    names: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    file_hashes: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    file_sizes: list[tuple[int, int]] = field(default_factory=list)
    object_masks: list[np.ndarray] = field(default_factory=list)


def read_probe_folder(
    probe_dir: Path | str,
    masks_dir: Path | str | None,
    labels: dict[str, int],
    *,
    size: int | Sequence[int],
    channels: int,
    object_masks_dir: Path | str | None = None,
) -> ProbeFolder:
    """Read, convert and resize every probe image (and its mask); undecodable files are skipped.

    Args:
        probe_dir: Folder of probe images (:data:`~lightning_sas.probes.images.IMAGE_EXTENSIONS`).
        masks_dir: Folder of masks with the probes' file names, or ``None``.
        labels: Class index by file name (from :func:`read_labels`); others get -1.
        size: ``N`` (N x N) or ``(height, width)`` in pixels.
        channels: 3 (RGB) or 1 (grey).
        object_masks_dir: Folder of object masks (where the legitimate evidence is, e.g. the
            lesion) with the probes' file names, or ``None``.

    Returns:
        The readable probes, and the skipped files with their reason.

    Raises:
        ProbeFolderError: If the folder holds no image file, or none that can be read. The
            message starts with the folder.
    """
    probe_dir = Path(probe_dir)
    masks_path = Path(masks_dir) if masks_dir is not None else None
    objects_path = Path(object_masks_dir) if object_masks_dir is not None else None
    height, width = height_width(size)
    files = image_files(probe_dir)
    if not files:
        raise ProbeFolderError(f"{probe_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    folder = ProbeFolder()
    for path in files:
        probe = _read_probe(path, masks_path, (height, width), channels)
        object_mask = _read_object_mask(path, objects_path, (height, width))
        if isinstance(probe, SkippedFile) or isinstance(object_mask, SkippedFile):
            folder.skipped.append(probe if isinstance(probe, SkippedFile) else object_mask)
            continue
        data, pixels, image, mask = probe
        if object_mask is not None:
            folder.object_masks.append(object_mask)
        folder.names.append(path.name)
        folder.images.append(image)
        folder.masks.append(mask)
        folder.labels.append(labels.get(path.name, -1))
        folder.file_hashes.append(hashlib.sha256(data).hexdigest())
        folder.file_sizes.append((int(pixels.shape[0]), int(pixels.shape[1])))
    if not folder.names:
        reasons = "; ".join(f"{item.file}: {item.reason}" for item in folder.skipped)
        raise ProbeFolderError(f"{probe_dir}: no readable image ({reasons}).")
    return folder


def _read_probe(
    path: Path, masks_path: Path | None, size: tuple[int, int], channels: int
) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray] | SkippedFile:
    """One probe file as ``(file bytes, decoded pixels, image, mask)``, or why it is skipped.

    Args:
        path: The probe image file.
        masks_path: The masks folder, or ``None`` (the mask is then all False).
        size: ``(height, width)`` of the image and mask.
        channels: 3 (RGB) or 1 (grey).
    """
    import numpy as np

    try:
        data = path.read_bytes()
    except OSError as error:
        return SkippedFile(path.name, f"cannot be read: {error.strerror or error}")
    pixels = decode_image(data)
    if pixels is None:
        reason = "empty file" if not data else "not a decodable image (corrupt or unsupported format)"
        return SkippedFile(path.name, reason)
    try:
        image = prepare_image(pixels, size, channels)
    except (ValueError, OSError) as error:
        return SkippedFile(path.name, f"cannot be converted: {error}")
    mask_path = mask_file(masks_path, path.name) if masks_path is not None else None
    try:
        mask = read_mask(mask_path, size) if mask_path is not None else np.zeros(size, dtype=bool)
    except ValueError as error:
        return SkippedFile(path.name, str(error))
    return data, pixels, image, mask


def _read_object_mask(path: Path, objects_path: Path | None, size: tuple[int, int]) -> np.ndarray | SkippedFile | None:
    """The probe's object mask (all False without a file), ``None`` without a folder, or why it is skipped."""
    import numpy as np

    if objects_path is None:
        return None
    found = mask_file(objects_path, path.name)
    try:
        return read_mask(found, size) if found is not None else np.zeros(size, dtype=bool)
    except ValueError as error:
        return SkippedFile(path.name, f"object mask: {error}")


def to_probes(
    folder: ProbeFolder, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> Probes:
    """The folder's images as normalised :class:`~lightning_sas.probes.probe_set.Probes` on ``device``.

    Args:
        folder: From :func:`read_probe_folder`.
        mean: One value per channel (see :func:`lightning_sas.validation.per_channel`).
        std: One value per channel.
        device: Where the tensors go.

    Returns:
        Probes with ``(image - mean) / std``, the labels, the masks as ROIs and the file names.
    """
    import numpy as np
    import torch

    from lightning_sas.probes.probe_set import Probes

    images = torch.from_numpy(np.stack(folder.images)).permute(0, 3, 1, 2).contiguous()
    mean_tensor = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_tensor = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    return Probes(
        images=((images - mean_tensor) / std_tensor).to(device),
        labels=torch.tensor(folder.labels, dtype=torch.long).to(device),
        roi=torch.from_numpy(np.stack(folder.masks)).to(device),
        names=list(folder.names),
        indices=[-1] * len(folder.names),
        object_mask=torch.from_numpy(np.stack(folder.object_masks)).to(device) if folder.object_masks else None,
    )
