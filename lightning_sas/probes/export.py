"""Probe folders without writing code: export a data set's items as the folder ``lightning-sas audit`` reads.

:func:`export_probes` writes a probe folder from any map-style ``Dataset`` whose items
:func:`~lightning_sas.probes.probe_set.unpack_item` reads (``image``, ``(image, label, ...)`` or a mapping
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
``manifest.json``; :mod:`lightning_sas.probes.export_artifacts`). The output folder, its
manifest and the PNG pixels are :mod:`lightning_sas.probes.export_folder`.

The ``lightning-sas export-probes`` subcommand calls :func:`export_probes` on the data set
returned by an importable callable (``--dataset my_project.data:make_val_split``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch  # noqa: F401  (the doctest's ``torch``)
from torch import Tensor

from lightning_sas.probes.export_folder import (
    LABELS_FILE,
    MASKS_FOLDER,
    ExportError,
    png_bytes,
    prepare_out,
    to_pixels,
    write_hashed,
    write_manifest,
)
from lightning_sas.probes.items import unpack_item
from lightning_sas.probes.probe_set import class_label, stratified_indices
from lightning_sas.validation import check_normalization

__all__ = [
    "ItemKeyError",
    "export_probes",
]


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
            :func:`~lightning_sas.probes.probe_set.unpack_item` reads; images ``[C, H, W]``, C = 1 or 3.
        out_dir: The folder to write: new, empty, or holding a previous probe export (replaced).
        count: Export this many items, chosen by
            :func:`~lightning_sas.probes.probe_set.stratified_indices` (balanced over classes, seeded).
        indices: Export exactly these data set indices instead (in this order).
        seed: Seed of the ``count`` selection.
        mean: Normalisation mean of the data set's images (one value or one per channel):
            images are de-normalised as ``x * std + mean`` before they are written.
        std: Normalisation standard deviation.
        class_names: Class names by index, written in ``labels.csv`` instead of indices.
        item_keys: Where the fields ``"image"``, ``"label"`` and ``"mask"`` (or ``"roi"``) are: a
            key of mapping items or a position of tuple items, as in
            :func:`~lightning_sas.probes.probe_set.item_keys`; a tuple item's mask is read only when given.

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
    mean, std = _checked_arguments(dataset, mean, std, seed)
    size = len(dataset)
    chosen, selection = _selection(dataset, size, count, indices, seed, item_keys)
    out = Path(out_dir)
    prepare_out(out, "probes")
    _write_probes(out, dataset, chosen, size, selection, item_keys, mean, std, class_names)
    return out


def _checked_arguments(
    dataset: Any, mean: Sequence[float] | None, std: Sequence[float] | None, seed: int
) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """``mean`` and ``std`` as :func:`~lightning_sas.validation.check_normalization` returns them.

    Raises:
        ExportError: If the data set is not map-style, ``mean``/``std`` do not fit, or ``seed``
            is not a non-negative integer.
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
    return mean, std


def _write_probes(
    out: Path,
    dataset: Any,
    chosen: Sequence[int],
    size: int,
    selection: dict[str, Any],
    item_keys: Mapping[str, str | int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    class_names: Sequence[str] | None,
) -> None:
    """Write the chosen items as probe images and masks, then ``labels.csv`` and ``manifest.json``.

    File names carry the data set index, zero-padded to the digits of the largest index (at least 5).
    """
    width = max(5, len(str(max(size - 1, 0))))
    entries = []
    rows: list[tuple[str, str]] = [("filename", "label")]
    for number, index in enumerate(chosen):
        image, label, roi = _unpack(dataset[index], index, item_keys, told_too=number == 0)
        entry = _write_probe(out, f"probe_{index:0{width}d}.png", index, image, label, roi, mean, std, class_names)
        rows.append((entry["file"], str(entry["label_name"] if class_names is not None and label >= 0 else label)))
        entries.append(entry)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    labels_hash = write_hashed(out / LABELS_FILE, buffer.getvalue().encode("utf-8"))
    write_manifest(
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


def _write_probe(
    out: Path,
    name: str,
    index: int,
    image: Tensor,
    label: int,
    roi: Tensor | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    class_names: Sequence[str] | None,
) -> dict[str, Any]:
    """Write one probe image as ``out/name`` (and its non-empty ROI under ``masks/``); its manifest entry."""
    pixels, clipped = to_pixels(image, mean, std)
    entry: dict[str, Any] = {
        "file": name,
        "index": index,
        "label": label if label >= 0 else None,
        "label_name": class_label(label, class_names) if label >= 0 else None,
        "height": int(image.shape[1]),
        "width": int(image.shape[2]),
        "channels": int(image.shape[0]),
        "sha256": write_hashed(out / name, png_bytes(pixels)),
        "clipped": clipped,
        "mask": None,
        "mask_sha256": None,
    }
    if roi is not None and bool(roi.any()):
        (out / MASKS_FOLDER).mkdir(exist_ok=True)
        mask = roi.detach().cpu().numpy().astype(np.uint8) * 255
        entry["mask"] = f"{MASKS_FOLDER}/{name}"
        entry["mask_sha256"] = write_hashed(out / MASKS_FOLDER / name, png_bytes(mask))
    return entry
