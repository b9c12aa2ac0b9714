"""The probe set: a fixed handful of images the audit explains every time, and its manifest."""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePath

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset


@dataclass
class Probes:
    """Probe images with what the audit needs to know about them.

    Attributes:
        images: ``[N, C, H, W]`` float, normalised as the model expects.
        labels: ``[N]`` int64 true classes; -1 where unknown.
        roi: ``[N, H, W]`` bool region-of-interest masks (e.g. where a ruler is); all False
            for probes without one.
        names: One readable name per probe (dataset index or file name).
        indices: Dataset indices (or -1 for probes that come from files).
        integer_input: Whether the items held integer images (``uint8``), kept here as float
            with the same values: the model must give the same output for both.
    """

    images: Tensor
    labels: Tensor
    roi: Tensor
    names: list[str]
    indices: list[int] = field(default_factory=list)
    integer_input: bool = False

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_roi(self) -> Tensor:
        """``[N]`` bool: which probes carry a non-empty ROI."""
        return self.roi.flatten(1).any(dim=1)

    def to(self, device: torch.device | str) -> Probes:
        return replace(self, images=self.images.to(device), labels=self.labels.to(device), roi=self.roi.to(device))

    def subset(self, positions: Sequence[int]) -> Probes:
        """The probes at ``positions`` (used to shard probes across DDP ranks)."""
        index = torch.as_tensor(list(positions), dtype=torch.long)
        return replace(
            self,
            images=self.images[index.to(self.images.device)],
            labels=self.labels[index.to(self.labels.device)],
            roi=self.roi[index.to(self.roi.device)],
            names=[self.names[i] for i in positions],
            indices=[self.indices[i] for i in positions] if self.indices else [],
        )

    def manifest(self) -> list[dict]:
        """Index, label and content hash of each probe: what identifies the probe set."""
        return [
            {"name": name, "index": index, "label": int(label), "sha256": content_hash(image)}
            for name, index, label, image in zip(
                self.names, self.indices or [-1] * len(self), self.labels.tolist(), self.images, strict=True
            )
        ]


def class_label(index: int | None, class_names: Sequence[str] | None) -> str:
    """A class as a person reads it: its name when known, else the index; ``"?"`` for unknown.

    Example:
        >>> class_label(1, ["benign", "malignant"]), class_label(3, None), class_label(-1, None)
        ('malignant', '3', '?')
    """
    if index is None or index < 0:
        return "?"
    if class_names is not None and index < len(class_names):
        return str(class_names[index])
    return str(index)


def content_hash(image: Tensor) -> str:
    """SHA-256 of an image's float32 values (device- and layout-independent)."""
    values = image.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(values.tobytes()).hexdigest()


#: Where an item's fields are found by default: mapping items by key, sequence items (tuple,
#: list) by position. The ROI mask has no default position: a third element of a tuple may be
#: a file name, metadata or an *object* mask (the lesion), and reading it as the artifact ROI
#: would turn legitimate evidence into a shortcut alert. It is read only when ``item_keys``
#: says where it is (``{"mask": 2}``).
DEFAULT_ITEM_KEYS: dict[str, str] = {"image": "image", "label": "label", "mask": "mask"}
DEFAULT_POSITIONS: dict[str, int | None] = {"image": 0, "label": 1, "mask": None}
#: Field names ``item_keys`` accepts (``"roi"`` is the mask's other name).
_FIELD_ALIASES = {"image": "image", "label": "label", "mask": "mask", "roi": "mask"}


@dataclass(frozen=True)
class ItemKeys:
    """Where each field of a dataset item is: a key of mapping items, a position of sequence items.

    Attributes:
        keys: Field -> key of mapping items (``{"image": "image", "label": "label", "mask": "mask"}``;
            a mapping item without the mask key is also read at ``"roi"``).
        positions: Field -> position in tuple / list items (the mask: ``None`` unless told).
        mask_told: Whether ``item_keys`` named the mask's key (then ``"roi"`` is not tried).
    """

    keys: dict[str, str]
    positions: dict[str, int | None]
    mask_told: bool = False


def item_keys(keys: Mapping[str, str | int] | ItemKeys | None) -> ItemKeys:
    """Where to read items' fields: the defaults updated by ``keys``.

    ``keys`` maps a field (``"image"``, ``"label"``, ``"mask"``; ``"roi"`` is the same as
    ``"mask"``) to a string (the key of mapping items) or an int (the position in tuple items).

    Example:
        >>> item_keys({"mask": 2}).positions
        {'image': 0, 'label': 1, 'mask': 2}
        >>> item_keys({"image": "pixels", "roi": "ruler"}).keys
        {'image': 'pixels', 'label': 'label', 'mask': 'ruler'}

    Raises:
        ValueError: If ``keys`` names another field, or a value is neither a string nor an int >= 0.
    """
    if isinstance(keys, ItemKeys):
        return keys
    mapping, positions = dict(DEFAULT_ITEM_KEYS), dict(DEFAULT_POSITIONS)
    if keys is None:
        return ItemKeys(mapping, positions)
    usage = (
        "`item_keys` maps the fields 'image', 'label', 'mask' (or 'roi') to the key of mapping items (a string) "
        "or the position in tuple items (an int >= 0), e.g. {'image': 'pixels', 'mask': 'ruler_mask'} or {'mask': 2}"
    )
    if not isinstance(keys, Mapping):
        raise ValueError(f"{usage}; got {keys!r}.")
    told = False
    for name, where in keys.items():
        field_name = _FIELD_ALIASES.get(name) if isinstance(name, str) else None
        if field_name is None:
            raise ValueError(f"{usage}; got the field {name!r} in {dict(keys)!r}.")
        if isinstance(where, str):
            mapping[field_name] = where
        elif isinstance(where, int) and not isinstance(where, bool) and where >= 0:
            positions[field_name] = where
        else:
            raise ValueError(f"{usage}; got {name!r}: {where!r}.")
        told = told or field_name == "mask"
    return ItemKeys(mapping, positions, mask_told=told)


@dataclass
class ProbeItem:
    """One item read: the image ``[C, H, W]`` (float, or integer as stored), its label (-1 when
    unknown), its ROI ``[H, W]`` bool (or ``None``) and a file name it carried (or ``None``)."""

    image: Tensor
    label: int
    roi: Tensor | None
    file_name: str | None = None


def read_item(item: object, index: int, keys: Mapping[str, str | int] | ItemKeys | None = None) -> ProbeItem:
    """Read a dataset item as the audit needs it.

    Items may be an image; a tuple or list ``(image, label, ...)`` whose further elements are
    ignored (a string among them is kept as the probe's file name), unless ``keys`` puts the
    ROI mask at a position; or a mapping read with ``keys`` (only the image key is required;
    the mask is read at ``"mask"``, else ``"roi"``). Images: tensors or arrays ``[C, H, W]`` or
    ``[H, W]``, or PIL images. Labels: a class index (int or one-element
    tensor) or a one-hot / probability vector (its largest entry). PIL images are read as
    torchvision's ``to_tensor`` does (float in [0, 1]); integer tensors keep their dtype.

    Raises:
        TypeError: If the item or one of its fields is not one of those forms (naming the item).
    """
    names = item_keys(keys)
    extras: list[object] = []
    if isinstance(item, Mapping):
        if names.keys["image"] not in item:
            raise TypeError(
                f"dataset item {index} is a mapping without the image key {names.keys['image']!r} "
                f"(its keys: {sorted(map(str, item))}); set `item_keys`, e.g. item_keys={{'image': 'pixels'}}."
            )
        mask_key = names.keys["mask"]
        if not names.mask_told and mask_key not in item:
            mask_key = "roi"
        image, label, roi = item[names.keys["image"]], item.get(names.keys["label"]), item.get(mask_key)
    else:
        parts = list(item) if isinstance(item, tuple | list) else [item]
        taken = {position for position in names.positions.values() if position is not None}
        if any(position >= len(parts) for position in taken if position != names.positions["label"]):
            raise TypeError(
                f"dataset item {index} has {len(parts)} element(s), and `item_keys` reads positions "
                f"{dict(names.positions)}."
            )

        def at(field_name: str) -> object:
            position = names.positions[field_name]
            return parts[position] if position is not None and position < len(parts) else None

        image, label, roi = at("image"), at("label"), at("mask")
        extras = [part for position, part in enumerate(parts) if position not in taken]
    file_name = next((str(extra) for extra in extras if isinstance(extra, str)), None)
    picture = _read_image(image, index)
    return ProbeItem(picture, _read_label(label, index), _read_mask(roi, picture, index), file_name)


def unpack_item(
    item: object, index: int, keys: Mapping[str, str | int] | ItemKeys | None = None
) -> tuple[Tensor, int, Tensor | None]:
    """``(image, label, roi)`` from a dataset item (see :func:`read_item`); the image as float."""
    read = read_item(item, index, keys)
    return read.image.float(), read.label, read.roi


def _read_image(value: object, index: int) -> Tensor:
    if type(value).__module__.startswith("PIL."):
        # No model takes a PIL image: as torchvision's `to_tensor` reads it (float in [0, 1]).
        from torchvision.transforms.functional import to_tensor

        value = to_tensor(value)  # type: ignore[arg-type]
    try:
        image = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        image = None
    if image is not None and image.dim() == 2:
        image = image[None]  # [H, W]: one channel
    if image is None or image.dim() != 3 or image.dtype == torch.bool or image.is_complex():
        described = f"{image.dtype} with shape {list(image.shape)}" if image is not None else type(value).__name__
        raise TypeError(
            f"dataset item {index}: the image must be a tensor, array or PIL image [C, H, W] (or [H, W]), "
            f"got {described}."
        )
    return image


def _read_label(value: object, index: int) -> int:
    if value is None:
        return -1
    if isinstance(value, str):
        raise TypeError(f"dataset item {index}: the label must be a class index or a one-hot vector, got {value!r}.")
    label = torch.as_tensor(value)
    if label.numel() == 1:
        return int(label.reshape(()).item())
    if label.dim() == 1 and label.numel() > 1:
        # One-hot or class probabilities (label smoothing, mixup): the class they point to.
        return int(label.argmax().item()) if bool(label.abs().sum() > 0) else -1
    raise TypeError(
        f"dataset item {index}: the label must be a class index or a one-hot / probability vector "
        f"[num_classes], got shape {list(label.shape)}."
    )


def _read_mask(value: object, image: Tensor, index: int) -> Tensor | None:
    if value is None:
        return None
    roi = torch.as_tensor(value)
    roi = roi.reshape(roi.shape[-2:]) if roi.dim() == 3 and roi.shape[0] == 1 else roi
    if roi.shape != image.shape[-2:]:
        raise TypeError(
            f"dataset item {index}: the ROI mask must be [H, W] = {list(image.shape[-2:])}, got {list(roi.shape)}."
        )
    return roi > 0.5 if roi.is_floating_point() else roi.bool()


def stratified_indices(labels: Sequence[int], count: int, seed: int) -> list[int]:
    """``count`` dataset positions, deterministic for ``seed``, balanced over classes.

    Classes take turns (round robin, each class's members in a seeded random order), so every
    class appears as evenly as the data allows; unknown labels (-1) form one group.
    """
    if not 0 < count <= len(labels):
        raise ValueError(f"`probe` asks for {count} images but the dataset has {len(labels)}.")
    generator = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for position in generator.permutation(len(labels)).tolist():
        by_class.setdefault(int(labels[position]), []).append(position)
    queues = [by_class[label] for label in sorted(by_class)]
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def dataset_labels(dataset: Dataset, keys: Mapping[str, str] | None = None) -> list[int]:
    """Labels of every item (reads the items; datasets of validation size are cheap to scan)."""
    return [unpack_item(dataset[position], position, keys)[1] for position in range(len(dataset))]  # type: ignore[arg-type]


#: Label scans for stratified probe selection read at most this many items.
MAX_LABEL_SCAN = 4096


def choose_probes(dataset: Dataset, count: int, seed: int, keys: Mapping[str, str] | None = None) -> list[int]:
    """The positions of ``count`` probes, stratified over classes, deterministic for ``seed``.

    Labels are read from a seeded sample of at most :data:`MAX_LABEL_SCAN` items (a large
    validation set is not read whole); the positions come back sorted.
    """
    size = len(dataset)  # type: ignore[arg-type]
    scanned = np.random.default_rng(seed).permutation(size)[:MAX_LABEL_SCAN].tolist()
    labels = dataset_labels(Subset(dataset, scanned), keys)
    return sorted(scanned[i] for i in stratified_indices(labels, count, seed))


def probes_from_dataset(
    dataset: Dataset,
    positions: Sequence[int],
    prefix: str = "val",
    keys: Mapping[str, str | int] | ItemKeys | None = None,
    prepare: Callable[[object], object] | None = None,
) -> Probes:
    """Stack the items at ``positions`` into :class:`Probes` (items as in :func:`read_item`).

    Args:
        dataset: A map-style dataset.
        positions: The items to read.
        prefix: Names are ``"<prefix>[<position>]"`` (plus the item's file name, if it has one).
        keys: Where the items' fields are (:func:`item_keys`).
        prepare: Maps one item to the batch the model's ``validation_step`` would receive
            (collate, then the batch hooks); the probe is read from that one-item batch.

    Images of different sizes are resized (bilinear; masks: nearest) to the most common size,
    with a warning; integer images (``uint8``) become float with their values kept (see
    :attr:`Probes.integer_input`).
    """
    items: list[ProbeItem] = []
    for position in positions:
        item = dataset[position]
        if prepare is not None:
            item = _one_of_batch(prepare(item))
        items.append(read_item(item, position, keys))
    sizes = [tuple(read.image.shape[-2:]) for read in items]
    size = Counter(sizes).most_common(1)[0][0] if sizes else (0, 0)
    resized = [f"{prefix}[{position}]" for position, shape in zip(positions, sizes, strict=True) if shape != size]
    if resized:
        warnings.warn(
            f"The probes have different sizes; {len(resized)} of {len(items)} ({', '.join(resized[:5])}"
            f"{', ...' if len(resized) > 5 else ''}) are resized to the most common size {list(size)} "
            "(bilinear; masks nearest) so that they are explained in one batch.",
            stacklevel=2,
        )
    integer = any(not read.image.is_floating_point() for read in items)
    images, rois = [], []
    for read in items:
        image = read.image.detach().clone().float().cpu()
        roi = torch.zeros(image.shape[-2:], dtype=torch.bool) if read.roi is None else read.roi.cpu()
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            roi = F.interpolate(roi[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
        images.append(image)
        rois.append(roi)
    return Probes(
        images=torch.stack(images),
        labels=torch.tensor([read.label for read in items], dtype=torch.long),
        roi=torch.stack(rois),
        names=[
            f"{prefix}[{position}]" + (f" {PurePath(read.file_name).name}" if read.file_name else "")
            for position, read in zip(positions, items, strict=True)
        ],
        indices=[int(position) for position in positions],
        integer_input=integer,
    )


def _one_of_batch(batch: object) -> object:
    """The single item of a one-item batch: each field without its batch dimension."""

    def single(value: object) -> object:
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == 1:
            return value[0]
        if isinstance(value, list | tuple) and len(value) == 1 and not isinstance(value[0], Tensor):
            return value[0]  # collated strings and numbers
        return value

    if isinstance(batch, Mapping):
        return {key: single(value) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return [single(value) for value in batch]
    return single(batch)
