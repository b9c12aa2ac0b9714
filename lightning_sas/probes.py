"""The probe set: a fixed handful of images the audit explains every time, and its manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
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
    """

    images: Tensor
    labels: Tensor
    roi: Tensor
    names: list[str]
    indices: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_roi(self) -> Tensor:
        """``[N]`` bool: which probes carry a non-empty ROI."""
        return self.roi.flatten(1).any(dim=1)

    def to(self, device: torch.device | str) -> Probes:
        return Probes(self.images.to(device), self.labels.to(device), self.roi.to(device), self.names, self.indices)

    def subset(self, positions: Sequence[int]) -> Probes:
        """The probes at ``positions`` (used to shard probes across DDP ranks)."""
        index = torch.as_tensor(list(positions), dtype=torch.long)
        return Probes(
            self.images[index.to(self.images.device)],
            self.labels[index.to(self.labels.device)],
            self.roi[index.to(self.roi.device)],
            [self.names[i] for i in positions],
            [self.indices[i] for i in positions] if self.indices else [],
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


#: Default keys of mapping items: ``{"image": ..., "label": ..., "mask": ...}``.
DEFAULT_ITEM_KEYS: dict[str, str] = {"image": "image", "label": "label", "roi": "mask"}


def item_keys(keys: Mapping[str, str] | None) -> dict[str, str]:
    """The keys to read mapping items with: :data:`DEFAULT_ITEM_KEYS` updated by ``keys``.

    Raises:
        ValueError: If ``keys`` names a field other than ``image``, ``label``, ``roi``, or a
            key is not a string.
    """
    if keys is None:
        return dict(DEFAULT_ITEM_KEYS)
    if not isinstance(keys, Mapping):
        raise ValueError(f"`item_keys` must be a mapping like {DEFAULT_ITEM_KEYS}, got {keys!r}.")
    unknown = sorted(set(keys) - set(DEFAULT_ITEM_KEYS))
    if unknown or not all(isinstance(value, str) for value in keys.values()):
        raise ValueError(
            f"`item_keys` maps the fields 'image', 'label', 'roi' to string keys of your items, got {dict(keys)!r}."
        )
    return {**DEFAULT_ITEM_KEYS, **keys}


def unpack_item(item: object, index: int, keys: Mapping[str, str] | None = None) -> tuple[Tensor, int, Tensor | None]:
    """``(image, label, roi)`` from a dataset item.

    Items may be ``image``, ``(image, label)``, ``(image, label, roi)`` (tuple or list), or a
    mapping read with ``keys`` (default ``{"image": "image", "label": "label", "roi": "mask"}``;
    only the image key is required).

    Raises:
        TypeError: If the item is not one of those forms or the image is not a [C, H, W] tensor.
    """
    if isinstance(item, Mapping):
        names = item_keys(keys)
        if names["image"] not in item:
            raise TypeError(
                f"dataset item {index} is a mapping without the image key {names['image']!r} "
                f"(its keys: {sorted(map(str, item))}); set `item_keys`, e.g. item_keys={{'image': 'pixels'}}."
            )
        parts: tuple = (item[names["image"]], item.get(names["label"]), item.get(names["roi"]))
    else:
        parts = tuple(item) if isinstance(item, tuple | list) else (item,)
    if not 1 <= len(parts) <= 3:
        raise TypeError(
            f"dataset item {index} must be image, (image, label), (image, label, roi_mask) or a mapping "
            f"with an image key; got a {type(item).__name__} of length {len(parts)}."
        )
    image = torch.as_tensor(parts[0])
    if image.dim() != 3 or not image.is_floating_point():
        raise TypeError(
            f"dataset item {index}: the image must be a float tensor [C, H, W], got "
            f"{image.dtype} with shape {list(image.shape)}."
        )
    label = int(parts[1]) if len(parts) > 1 and parts[1] is not None else -1
    roi = torch.as_tensor(parts[2]) if len(parts) > 2 and parts[2] is not None else None
    if roi is not None:
        roi = roi.reshape(roi.shape[-2:]) if roi.dim() == 3 and roi.shape[0] == 1 else roi
        if roi.shape != image.shape[-2:]:
            raise TypeError(
                f"dataset item {index}: roi_mask must be [H, W] = {list(image.shape[-2:])}, got {list(roi.shape)}."
            )
        roi = roi > 0.5 if roi.is_floating_point() else roi.bool()
    return image, label, roi


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
    dataset: Dataset, positions: Sequence[int], prefix: str = "val", keys: Mapping[str, str] | None = None
) -> Probes:
    """Stack the items at ``positions`` into :class:`Probes` (items as in :func:`unpack_item`)."""
    images, labels, rois = [], [], []
    for position in positions:
        image, label, roi = unpack_item(dataset[position], position, keys)
        images.append(image.detach().clone().float())
        labels.append(label)
        rois.append(torch.zeros(image.shape[-2:], dtype=torch.bool) if roi is None else roi.cpu())
    return Probes(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        roi=torch.stack(rois),
        names=[f"{prefix}[{position}]" for position in positions],
        indices=[int(position) for position in positions],
    )
