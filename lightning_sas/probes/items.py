"""Dataset items as the audit reads them: where the fields are (``item_keys``), and what forms they take.

An item is an image, a tuple or list ``(image, label, ...)``, or a mapping. Images are tensors,
arrays or PIL images; labels class indices or one-hot / probability vectors; masks ``[H, W]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

#: Where an item's fields are found by default: mapping items by key, sequence items (tuple,
#: list) by position. The ROI mask has no default position: a third element of a tuple may be
#: a file name, metadata or an *object* mask (the lesion), and reading it as the artifact ROI
#: would turn legitimate evidence into a shortcut alert. It is read only when ``item_keys``
#: says where it is (``{"mask": 2}``).
#: The object mask (where the legitimate evidence is, e.g. the lesion) likewise: key
#: ``"object_mask"``, no default position.
DEFAULT_ITEM_KEYS: dict[str, str] = {"image": "image", "label": "label", "mask": "mask", "object_mask": "object_mask"}
DEFAULT_POSITIONS: dict[str, int | None] = {"image": 0, "label": 1, "mask": None, "object_mask": None}
#: Field names ``item_keys`` accepts (``"roi"`` is the mask's other name).
_FIELD_ALIASES = {"image": "image", "label": "label", "mask": "mask", "roi": "mask", "object_mask": "object_mask"}


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
        {'image': 0, 'label': 1, 'mask': 2, 'object_mask': None}
        >>> item_keys({"image": "pixels", "roi": "ruler"}).keys
        {'image': 'pixels', 'label': 'label', 'mask': 'ruler', 'object_mask': 'object_mask'}

    Raises:
        ValueError: If ``keys`` names another field, or a value is neither a string nor an int >= 0.
    """
    if isinstance(keys, ItemKeys):
        return keys
    mapping, positions = dict(DEFAULT_ITEM_KEYS), dict(DEFAULT_POSITIONS)
    if keys is None:
        return ItemKeys(mapping, positions)
    usage = (
        "`item_keys` maps the fields 'image', 'label', 'mask' (or 'roi'), 'object_mask' to the key of mapping items "
        "(a string) "
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
    unknown), its ROI ``[H, W]`` bool (or ``None``), a file name it carried (or ``None``) and its
    object mask ``[H, W]`` bool (or ``None``)."""

    image: Tensor
    label: int
    roi: Tensor | None
    file_name: str | None = None
    object_mask: Tensor | None = None


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
        objects = item.get(names.keys["object_mask"])
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

        image, label, roi, objects = at("image"), at("label"), at("mask"), at("object_mask")
        extras = [part for position, part in enumerate(parts) if position not in taken]
    file_name = next((str(extra) for extra in extras if isinstance(extra, str)), None)
    picture = _read_image(image, index)
    object_mask = _read_mask(objects, picture, index, "the object mask")
    return ProbeItem(picture, _read_label(label, index), _read_mask(roi, picture, index), file_name, object_mask)


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


def _read_mask(value: object, image: Tensor, index: int, what: str = "the ROI mask") -> Tensor | None:
    if value is None:
        return None
    roi = torch.as_tensor(value)
    roi = roi.reshape(roi.shape[-2:]) if roi.dim() == 3 and roi.shape[0] == 1 else roi
    if roi.shape != image.shape[-2:]:
        raise TypeError(
            f"dataset item {index}: {what} must be [H, W] = {list(image.shape[-2:])}, got {list(roi.shape)}."
        )
    return roi > 0.5 if roi.is_floating_point() else roi.bool()
