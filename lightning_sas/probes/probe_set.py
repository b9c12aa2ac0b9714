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

from lightning_sas.probes.items import ItemKeys, ProbeItem, read_item, unpack_item


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
        object_mask: ``[N, H, W]`` bool masks of where the *legitimate* evidence is (e.g. the
            lesion), all False for probes without one; ``None`` when no probe has one.
            Attribution outside the object is suspect (:mod:`lightning_sas.trust.discovery`).
    """

    images: Tensor
    labels: Tensor
    roi: Tensor
    names: list[str]
    indices: list[int] = field(default_factory=list)
    integer_input: bool = False
    object_mask: Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_roi(self) -> Tensor:
        """``[N]`` bool: which probes carry a non-empty ROI."""
        return self.roi.flatten(1).any(dim=1)

    def to(self, device: torch.device | str) -> Probes:
        objects = None if self.object_mask is None else self.object_mask.to(device)
        moved = {"images": self.images, "labels": self.labels, "roi": self.roi}
        return replace(self, **{name: value.to(device) for name, value in moved.items()}, object_mask=objects)

    def subset(self, positions: Sequence[int]) -> Probes:
        """The probes at ``positions`` (used to shard probes across DDP ranks)."""
        index = torch.as_tensor(list(positions), dtype=torch.long)
        return replace(
            self,
            images=self.images[index.to(self.images.device)],
            labels=self.labels[index.to(self.labels.device)],
            roi=self.roi[index.to(self.roi.device)],
            object_mask=None if self.object_mask is None else self.object_mask[index.to(self.object_mask.device)],
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
        prefix: Names are ``"<prefix>[<position>]"`` (plus the item's file name, if it has one),
            unless the dataset names its probes: a ``probe_name(position) -> str`` method gives
            each probe's name itself (:class:`~lightning_sas.probes.folder_dataset.ProbeFolderDataset`:
            the file name, so that a manifest's names find the files again).
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
    images, masks_of = [], []
    for read in items:
        image = read.image.detach().clone().float().cpu()
        masks = [read.roi, read.object_mask]
        masks = [torch.zeros(image.shape[-2:], dtype=torch.bool) if mask is None else mask.cpu() for mask in masks]
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            masks = [F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5 for mask in masks]
        images.append(image)
        masks_of.append(masks)
    has_objects = any(read.object_mask is not None for read in items)
    return Probes(
        images=torch.stack(images),
        labels=torch.tensor([read.label for read in items], dtype=torch.long),
        roi=torch.stack([masks[0] for masks in masks_of]),
        names=_probe_names(dataset, positions, items, prefix),
        indices=[int(position) for position in positions],
        integer_input=any(not read.image.is_floating_point() for read in items),
        object_mask=torch.stack([masks[1] for masks in masks_of]) if has_objects else None,
    )


def _probe_names(dataset: Dataset, positions: Sequence[int], items: Sequence[ProbeItem], prefix: str) -> list[str]:
    """The dataset's own names (``probe_name(position)``), else ``"<prefix>[<position>]"`` and the file name."""
    namer = getattr(dataset, "probe_name", None)
    if callable(namer):
        return [str(namer(position)) for position in positions]
    return [
        f"{prefix}[{position}]" + (f" {PurePath(read.file_name).name}" if read.file_name else "")
        for position, read in zip(positions, items, strict=True)
    ]


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
