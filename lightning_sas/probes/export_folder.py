"""The output folder of an export (:mod:`lightning_sas.probes.export`,
:mod:`lightning_sas.probes.export_artifacts`): its errors, its files and its ``manifest.json``.

* :func:`to_pixels`: a normalised ``[C, H, W]`` image as the 8-bit pixels of a PNG;
* :func:`prepare_out`: a new or empty output folder, or one emptied of a previous export of the
  same kind (the files its ``manifest.json`` lists); a folder holding other files is refused;
* :func:`png_bytes`, :func:`write_hashed` and :func:`write_manifest`: the files written.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from lightning_sas.probes.images import image_files
from lightning_sas.validation import per_channel

__all__ = [
    "LABELS_FILE",
    "MANIFEST_FILE",
    "MANIFEST_VERSION",
    "MASKS_FOLDER",
    "ExportError",
    "ExportFolderError",
    "png_bytes",
    "prepare_out",
    "to_pixels",
    "write_hashed",
    "write_manifest",
]

#: Version of the ``manifest.json`` layout.
MANIFEST_VERSION = 1
#: Files of an export folder besides the images.
LABELS_FILE = "labels.csv"
MANIFEST_FILE = "manifest.json"
MASKS_FOLDER = "masks"


class ExportError(ValueError):
    """A data set, selection or output folder that cannot be exported; the message says why."""


class ExportFolderError(ExportError):
    """The output folder cannot take the export (a file, or a folder holding other files)."""


def to_pixels(
    image: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[np.ndarray, float]:
    """A ``[C, H, W]`` image as 8-bit pixels for a PNG, and the share of values clipped.

    Args:
        image: Float tensor ``[C, H, W]`` with C = 1 or 3, normalised as the model expects.
        mean: Normalisation mean (one value or one per channel); ``None``: the image is in [0, 1].
        std: Normalisation standard deviation.

    Returns:
        ``([H, W] grey or [H, W, 3] BGR uint8 as OpenCV writes it, clipped share)``.

    Raises:
        ExportError: For another number of channels or mismatched ``mean``/``std``.

    Example:
        >>> pixels, clipped = to_pixels(torch.tensor([[[-1.0, 0.0, 1.0]]]), mean=[0.5], std=[0.5])
        >>> pixels.tolist(), clipped
        ([[0, 128, 255]], 0.0)
    """
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ExportError(
            f"images must be [C, H, W] tensors with 1 (grey) or 3 (RGB) channels to be written as PNG, "
            f"got {list(image.shape) if isinstance(image, Tensor) else type(image).__name__}."
        )
    channels = image.shape[0]
    try:
        scale = per_channel("std", std if std is not None else [1.0], channels)
        shift = per_channel("mean", mean if mean is not None else [0.0], channels)
    except ValueError as error:
        raise ExportError(str(error)) from None
    values = image.detach().to("cpu", torch.float32) * torch.tensor(scale).view(-1, 1, 1)
    values = values + torch.tensor(shift).view(-1, 1, 1)
    finite = torch.nan_to_num(values, nan=0.0)
    clipped = float(((finite < -0.5 / 255) | (finite > 1 + 0.5 / 255)).float().mean())
    pixels = (finite.clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if channels == 1:
        return np.ascontiguousarray(pixels[..., 0]), clipped
    return np.ascontiguousarray(pixels[..., ::-1]), clipped


def encoded_image(pixels: np.ndarray, extension: str = ".png", params: Sequence[int] = ()) -> bytes:
    """8-bit grey or BGR pixels encoded as an image file (``extension``: ``.png``, ``.jpg``, ...).

    Encoded in memory and written with ``write_bytes``: ``cv2.imwrite`` fails silently on some paths.
    """
    ok, encoded = cv2.imencode(extension, pixels, list(params))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 grey/BGR array
        raise ExportError(f"OpenCV could not encode a {extension} image.")
    return encoded.tobytes()


def png_bytes(pixels: np.ndarray) -> bytes:
    """8-bit grey or BGR pixels encoded as a PNG file."""
    return encoded_image(pixels, ".png")


def write_hashed(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path``; its SHA-256 (hex)."""
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _previous_export(out_dir: Path, kind: str) -> list[Path] | None:
    """The files of an earlier export of ``kind`` in ``out_dir`` (from its manifest), or ``None``."""
    try:
        manifest = json.loads((out_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "lightning_sas" not in manifest:
        return None
    entries = manifest.get(kind)
    if manifest.get("kind", "probes") != kind or not isinstance(entries, list):
        return None
    names = [MANIFEST_FILE, *([LABELS_FILE] if kind == "probes" else [])]
    for entry in entries:
        if isinstance(entry, dict):
            names += [name for name in (entry.get("file"), entry.get("mask")) if isinstance(name, str)]
    allowed = {out_dir.resolve(), (out_dir / MASKS_FOLDER).resolve()}
    # Only plain files of the export's own folders, whatever the manifest says.
    return [out_dir / name for name in names if (out_dir / name).resolve().parent in allowed]


def prepare_out(out_dir: Path, kind: str) -> None:
    """Create ``out_dir``, or empty it of a previous export of ``kind``; refuse anything else.

    A previous export is recognised by its ``manifest.json``: the files it lists are removed
    (other things, e.g. an ``artifacts/`` folder inside a probe folder, stay). A folder that
    holds other files, or image files the manifest does not list, is refused.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportFolderError(f"{out_dir} exists and is not a folder.")
    if not out_dir.is_dir():
        out_dir.mkdir(parents=True)
        return
    previous = _previous_export(out_dir, kind)
    if previous is None:
        if any(out_dir.iterdir()):
            raise ExportFolderError(
                f"{out_dir} already exists and holds files that are not a previous {kind} export; "
                "give a new or empty folder."
            )
        return
    for path in previous:
        path.unlink(missing_ok=True)
    masks = out_dir / MASKS_FOLDER
    left = [path for folder in (out_dir, masks) if folder.is_dir() for path in image_files(folder)]
    if left:
        raise ExportFolderError(
            f"{out_dir} holds image files that its previous export did not write (e.g. {left[0].name}); "
            "give a new or empty folder."
        )
    if masks.is_dir() and not any(masks.iterdir()):
        masks.rmdir()


def write_manifest(out: Path, content: Mapping[str, Any]) -> None:
    """Write ``out/manifest.json``: the layout version, the time, the package version and ``content``."""
    import lightning_sas

    manifest = {
        "version": MANIFEST_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lightning_sas": lightning_sas.__version__,
        **content,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
