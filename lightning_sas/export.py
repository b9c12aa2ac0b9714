"""Probe folders without writing code: export a data set's items as the folder ``lightning-sas audit`` reads.

:func:`export_probes` writes a probe folder from any map-style ``Dataset`` whose items
:func:`~lightning_sas.probes.unpack_item` reads (``image``, ``(image, label, ...)`` or a mapping
with ``"image"``, ``"label"`` and ``"mask"`` or ``"roi"`` keys; ``item_keys`` says where else
the fields are, and where a tuple item's ROI mask is: it is read only when told, e.g.
``item_keys={"mask": 2}`` for ``(image, label, roi)`` items, as in the training callback):

* ``<out>/probe_<index>.png``: the images, de-normalised with ``mean``/``std`` when given
  (``x * std + mean``), clipped to [0, 1] and written as 8-bit PNG (RGB, or grey for one
  channel); the name carries the data set index, zero-padded, so file-name order is index order;
* ``<out>/masks/probe_<index>.png``: the ROI mask (255 = ROI) of each item with a non-empty ROI;
* ``<out>/labels.csv``: ``filename,label`` rows (class names when given, ``-1`` for unknown);
* ``<out>/manifest.json``: the data set index, label and SHA-256 of every file written, the
  selection (count, seed) and the normalisation.

The output folder must be new or empty, or hold a previous export of the same kind: the files
its ``manifest.json`` lists are replaced (anything else there, e.g. an ``artifacts/`` folder,
stays), so a script that exports into the same folder every night can run again. A folder
holding other image files is refused.

The folder is audited with ``lightning-sas audit --probe OUT --masks OUT/masks --labels
OUT/labels.csv`` and the same ``--mean``/``--std``/``--class-names``: the audit then sees the
data set's images to within one 8-bit step (1/255 before normalisation).

:func:`export_artifacts` writes artifact patches and their masks in the layout ``lightning-sas
audit --artifacts DIR`` reads (``DIR/<name>.png`` and ``DIR/masks/<name>.png``, with a
``manifest.json``).

The ``lightning-sas export-probes`` subcommand calls :func:`export_probes` on the data set
returned by an importable callable (``--dataset my_project.data:make_val_split``).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from lightning_sas.normalization import check_normalization, per_channel
from lightning_sas.probe_folder import image_files
from lightning_sas.probes import class_label, stratified_indices, unpack_item

__all__ = [
    "MANIFEST_VERSION",
    "ExportError",
    "ExportFolderError",
    "ItemKeyError",
    "export_artifacts",
    "export_probes",
    "to_pixels",
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


class ItemKeyError(ExportError):
    """A data set item without a field where ``item_keys`` (or the default) says it is.

    Attributes:
        field: ``"image"``, ``"label"`` or ``"mask"``.
        where: The key or position looked at.
        detail: What is wrong, without advice (a caller can name its own option).
    """

    def __init__(self, field: str, where: str | int, detail: str) -> None:
        example = f"{{{field!r}: 2}}" if isinstance(where, int) else f"{{{field!r}: 'my_{field}'}}"
        super().__init__(f"{detail}; set `item_keys`, e.g. item_keys={example}.")
        self.field, self.where, self.detail = field, where, detail


#: Field names of ``item_keys`` (``"roi"`` is the mask's other name).
_FIELDS = {"image": "image", "label": "label", "mask": "mask", "roi": "mask"}


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


def _png(pixels: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 grey/BGR array
        raise ExportError("OpenCV could not encode a PNG.")
    return encoded.tobytes()


def _write(path: Path, data: bytes) -> str:
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


def _prepare_out(out_dir: Path, kind: str) -> None:
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


def _selection(
    dataset: Any,
    size: int,
    count: int | None,
    indices: Sequence[int] | None,
    seed: int,
    keys: Mapping[str, str | int] | None,
) -> tuple[list[int], dict[str, Any]]:
    if count is not None and indices is not None:
        raise ExportError("give `count` (a stratified, seeded selection) or `indices`, not both.")
    if indices is not None:
        chosen = [int(index) for index in indices]
        bad = [index for index in chosen if not 0 <= index < size]
        if bad:
            raise ExportError(f"`indices` {bad[:3]} are out of range for the data set's {size} items.")
        if len(set(chosen)) != len(chosen):
            raise ExportError("`indices` lists an item twice.")
        if not chosen:
            raise ExportError("`indices` is empty.")
        return chosen, {"kind": "indices"}
    if count is None:
        if size == 0:
            raise ExportError("the data set is empty.")
        return list(range(size)), {"kind": "all"}
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= size:
        raise ExportError(f"`count` must be an integer in 1..{size} (the data set's size), got {count!r}.")
    labels = [_unpack(dataset[position], position, keys, position == 0)[1] for position in range(size)]
    return stratified_indices(labels, count, seed), {"kind": "stratified", "count": count, "seed": seed}


def _check_item_keys(item: object, position: int, keys: Mapping[str, str | int] | None, told_too: bool) -> None:
    """Raise :class:`ItemKeyError` if ``item`` lacks its image, or (``told_too``) a field ``keys`` names.

    The image is required in every item; a label or mask that ``keys`` names is looked for in
    the first item only (later items may lack an ROI), which catches a misspelt key before
    anything is written.
    """
    # Other names, or keys that are no mapping, are item_keys' own error (unpack_item says what it takes).
    given = keys.items() if isinstance(keys, Mapping) else ()
    told = {_FIELDS[name]: where for name, where in given if name in _FIELDS}
    wanted = {"image": told.get("image", "image" if isinstance(item, Mapping) else 0)}
    if told_too:
        wanted.update({name: where for name, where in told.items() if name != "image"})
    for name, where in wanted.items():
        if isinstance(item, Mapping) and where not in item:
            raise ItemKeyError(
                name,
                where,
                f"dataset item {position} is a mapping without the {name} key {where!r} (its keys: "
                f"{', '.join(sorted(map(str, item)))})",
            )
        if isinstance(item, tuple | list) and not (isinstance(where, int) and where < len(item)):
            raise ItemKeyError(
                name,
                where,
                f"dataset item {position} is a {type(item).__name__} of {len(item)} element(s), with no {name} at "
                f"{'position' if isinstance(where, int) else 'key'} {where!r}",
            )


def _unpack(
    item: object, position: int, keys: Mapping[str, str | int] | None, told_too: bool = False
) -> tuple[Tensor, int, Tensor | None]:
    _check_item_keys(item, position, keys, told_too)
    try:
        return unpack_item(item, position, keys)
    except (TypeError, ValueError, RuntimeError) as error:
        message = str(error)
        if not message.startswith("dataset item"):
            message = f"dataset item {position} ({type(item).__name__}) cannot be read as an image: {message}"
        raise ExportError(message) from None


def export_probes(
    dataset: Any,
    out_dir: Path | str,
    *,
    count: int | None = None,
    indices: Sequence[int] | None = None,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    item_keys: Mapping[str, str | int] | None = None,
) -> Path:
    """Write a probe folder from a map-style data set (see the module docstring for the layout).

    Args:
        dataset: Anything with ``__len__`` and ``__getitem__`` returning items
            :func:`~lightning_sas.probes.unpack_item` reads; images ``[C, H, W]``, C = 1 or 3.
        out_dir: The folder to write: new, empty, or holding a previous probe export (replaced).
        count: Export this many items, chosen by
            :func:`~lightning_sas.probes.stratified_indices` (balanced over classes, seeded).
        indices: Export exactly these data set indices instead (in this order).
        seed: Seed of the ``count`` selection.
        mean: Normalisation mean of the data set's images (one value or one per channel):
            images are de-normalised as ``x * std + mean`` before they are written.
        std: Normalisation standard deviation.
        class_names: Class names by index, written in ``labels.csv`` instead of indices.
        item_keys: Where the fields ``"image"``, ``"label"`` and ``"mask"`` (or ``"roi"``) are: a
            key of mapping items or a position of tuple items, as in
            :func:`~lightning_sas.probes.item_keys`; a tuple item's mask is read only when given.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: If the data set is not map-style or empty, an item cannot be read as an
            image (with label and ROI), lacks a field where ``item_keys`` says it is
            (:class:`ItemKeyError`), ``count``/``indices`` are invalid, ``mean``/``std`` do
            not fit, or ``out_dir`` holds other files (:class:`ExportFolderError`).
        OSError: If a file cannot be written.

    Example:
        >>> import tempfile
        >>> items = [(torch.rand(3, 8, 8), index % 2) for index in range(6)]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     out = export_probes(items, Path(folder) / "probes", count=4, class_names=["cat", "dog"])
        ...     sorted(path.name for path in out.iterdir())
        ['labels.csv', 'manifest.json', 'probe_00002.png', 'probe_00003.png', 'probe_00004.png', 'probe_00005.png']
    """
    if not (callable(getattr(dataset, "__len__", None)) and callable(getattr(dataset, "__getitem__", None))):
        raise ExportError(
            f"the data set is a {type(dataset).__name__}, not a map-style Dataset (it needs __len__ and __getitem__)."
        )
    try:
        mean, std = check_normalization(mean, std)
    except ValueError as error:
        raise ExportError(str(error)) from None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ExportError(f"`seed` must be a non-negative integer, got {seed!r}.")
    size = len(dataset)
    chosen, selection = _selection(dataset, size, count, indices, seed, item_keys)
    out = Path(out_dir)
    _prepare_out(out, "probes")
    width = max(5, len(str(max(size - 1, 0))))
    entries = []
    rows: list[tuple[str, str]] = [("filename", "label")]
    for number, index in enumerate(chosen):
        image, label, roi = _unpack(dataset[index], index, item_keys, told_too=number == 0)
        pixels, clipped = to_pixels(image, mean, std)
        name = f"probe_{index:0{width}d}.png"
        entry: dict[str, Any] = {
            "file": name,
            "index": index,
            "label": label if label >= 0 else None,
            "label_name": class_label(label, class_names) if label >= 0 else None,
            "height": int(image.shape[1]),
            "width": int(image.shape[2]),
            "channels": int(image.shape[0]),
            "sha256": _write(out / name, _png(pixels)),
            "clipped": clipped,
            "mask": None,
            "mask_sha256": None,
        }
        if roi is not None and bool(roi.any()):
            (out / MASKS_FOLDER).mkdir(exist_ok=True)
            mask = roi.detach().cpu().numpy().astype(np.uint8) * 255
            entry["mask"] = f"{MASKS_FOLDER}/{name}"
            entry["mask_sha256"] = _write(out / MASKS_FOLDER / name, _png(mask))
        rows.append((name, str(entry["label_name"] if class_names is not None and label >= 0 else label)))
        entries.append(entry)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    labels_hash = _write(out / LABELS_FILE, buffer.getvalue().encode("utf-8"))
    _write_manifest(
        out,
        {
            "kind": "probes",
            "dataset_size": size,
            "selection": selection,
            "mean": list(mean) if mean is not None else None,
            "std": list(std) if std is not None else None,
            "class_names": list(class_names) if class_names is not None else None,
            "probes": entries,
            "files": {LABELS_FILE: labels_hash},
        },
    )
    return out


def export_artifacts(
    patches: Tensor,
    masks: Tensor,
    out_dir: Path | str,
    *,
    names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """Write artifact patches and masks as the folder ``lightning-sas audit --artifacts`` reads.

    ``out_dir/<name>.png`` holds each patch (de-normalised like :func:`export_probes`),
    ``out_dir/masks/<name>.png`` its mask (255 = artifact pixel), and ``manifest.json`` their
    SHA-256.

    Args:
        patches: ``[N, C, h, w]`` float patches (C = 1 or 3), e.g. an
            :class:`~lightning_sas.intervention.Artifacts`' ``patches``.
        masks: ``[N, h, w]`` bool or 0/1 masks of the artifact pixels.
        out_dir: The folder to write: new, empty, or holding a previous artifacts export (replaced).
        names: File stems (default ``artifact_000``, ...).
        mean: Normalisation mean of the patches, if they are normalised.
        std: Normalisation standard deviation.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: If shapes do not fit, a mask is empty, ``names`` has the wrong length or
            repeats, or ``out_dir`` holds other files (:class:`ExportFolderError`).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     out = export_artifacts(torch.ones(1, 3, 4, 4), torch.ones(1, 4, 4), Path(folder) / "ruler")
        ...     sorted(str(path.relative_to(out)) for path in out.rglob("*.png"))
        ['artifact_000.png', 'masks/artifact_000.png']
    """
    if not isinstance(patches, Tensor) or patches.dim() != 4:
        raise ExportError(f"`patches` must be a tensor [N, C, h, w], got {getattr(patches, 'shape', type(patches))}.")
    if not isinstance(masks, Tensor) or tuple(masks.shape) != (patches.shape[0], *patches.shape[2:]):
        raise ExportError(
            f"`masks` must have shape [N, h, w] = {[patches.shape[0], *patches.shape[2:]]}, "
            f"got {list(getattr(masks, 'shape', []))}."
        )
    stems = list(names) if names is not None else [f"artifact_{position:03d}" for position in range(len(patches))]
    if len(stems) != len(patches) or len(set(stems)) != len(stems):
        raise ExportError(f"`names` must give {len(patches)} distinct file stems, got {stems!r}.")
    try:
        mean, std = check_normalization(mean, std)
    except ValueError as error:
        raise ExportError(str(error)) from None
    binary = masks > 0.5 if masks.is_floating_point() else masks.bool()
    empty = [stems[position] for position in range(len(stems)) if not bool(binary[position].any())]
    if empty:
        raise ExportError(f"the masks of {', '.join(empty)} mark no pixel.")
    out = Path(out_dir)
    _prepare_out(out, "artifacts")
    (out / MASKS_FOLDER).mkdir(exist_ok=True)
    entries = []
    for stem, patch, mask in zip(stems, patches, binary, strict=True):
        pixels, _ = to_pixels(patch, mean, std)
        name = f"{stem}.png"
        entries.append(
            {
                "file": name,
                "sha256": _write(out / name, _png(pixels)),
                "mask": f"{MASKS_FOLDER}/{name}",
                "mask_sha256": _write(
                    out / MASKS_FOLDER / name, _png(mask.detach().cpu().numpy().astype(np.uint8) * 255)
                ),
            }
        )
    _write_manifest(
        out,
        {"kind": "artifacts", "mean": mean, "std": std, "artifacts": entries},
    )
    return out


def _write_manifest(out: Path, content: Mapping[str, Any]) -> None:
    import lightning_sas

    manifest = {
        "version": MANIFEST_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lightning_sas": lightning_sas.__version__,
        **content,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
