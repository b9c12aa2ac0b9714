"""Object masks (where the legitimate evidence is) read from dataset items and from probe folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lightning_sas.probes.folder import read_probe_folder, to_probes
from lightning_sas.probes.items import read_item
from lightning_sas.probes.probe_set import probes_from_dataset


def lesion(size: int = 8) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[2:6, 2:6] = True
    return mask


def test_items_carry_an_object_mask_by_key_or_where_item_keys_says() -> None:
    image = torch.rand(3, 8, 8)
    assert torch.equal(read_item({"image": image, "object_mask": lesion()}, 0).object_mask, lesion())
    # A tuple's third element is not read as anything unless item_keys says what it is.
    assert read_item((image, 1, lesion()), 0).object_mask is None
    item = read_item((image, 1, lesion()), 0, {"object_mask": 2})
    assert torch.equal(item.object_mask, lesion()) and item.roi is None
    with pytest.raises(TypeError, match=r"dataset item 3: the object mask must be \[H, W\] = \[8, 8\]"):
        read_item({"image": image, "object_mask": torch.zeros(4, 4)}, 3)


def test_probes_stack_object_masks_and_shard_them() -> None:
    items = [{"image": torch.rand(3, 8, 8), "label": i % 2, "object_mask": lesion()} for i in range(3)]
    items.append({"image": torch.rand(3, 8, 8), "label": 1})  # a probe without one: all False
    probes = probes_from_dataset(items, range(4))
    assert probes.object_mask.shape == (4, 8, 8) and not bool(probes.object_mask[3].any())
    assert torch.equal(probes.subset([1, 3]).object_mask, probes.object_mask[[1, 3]])
    assert probes_from_dataset(items[3:], range(1)).object_mask is None  # nobody gave one


def test_a_probe_folder_reads_object_masks_by_file_name(tmp_path: Path) -> None:
    images, objects = tmp_path / "images", tmp_path / "lesions"
    images.mkdir()
    objects.mkdir()
    for name in ("a.png", "b.png"):
        assert cv2.imwrite(str(images / name), np.full((8, 8, 3), 128, dtype=np.uint8))
    assert cv2.imwrite(str(objects / "a.png"), lesion().numpy().astype(np.uint8) * 255)
    folder = read_probe_folder(images, None, {}, size=8, channels=3, object_masks_dir=objects)
    probes = to_probes(folder, [0.0] * 3, [1.0] * 3)
    assert torch.equal(probes.object_mask[0], lesion()) and not bool(probes.object_mask[1].any())
    assert to_probes(read_probe_folder(images, None, {}, size=8, channels=3), [0.0] * 3, [1.0] * 3).object_mask is None
