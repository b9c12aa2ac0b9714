"""Projects as they stand: data in the forms projects ship, modules that prepare batches in hooks,
several audits in one Trainer, callbacks reused across Trainers, checkpoints without maps.

Each test runs a real ``lightning.Trainer`` and reads what was written back.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import TensorBoardLogger
from lit_models import LitClassifier, corner_dataset, images_and_labels, loaders
from test_callback import make_trainer, read_events
from test_callback_inputs import image_tags, scalar_tags, texts
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_sas import GradCAM, SaS, SASAuditCallback

IMAGES, LABELS, MASKS = corner_dataset().tensors


class ItemsDataset(Dataset):
    """The corner images with items built by ``make(position) -> item``."""

    def __init__(self, make) -> None:
        self.make = make

    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, position: int):
        return self.make(position)


def fit_on(tmp_path: Path, val: Dataset, callback: SASAuditCallback, module: L.LightningModule | None = None):
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    train = DataLoader(corner_dataset(), batch_size=16, shuffle=True)
    trainer.fit(module or LitClassifier(), train, DataLoader(val, batch_size=16))
    return trainer


def checkpointing_trainer(tmp_path: Path, callbacks: list, max_epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=callbacks,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )


class IgnoreValidation(LitClassifier):
    def validation_step(self, batch, batch_index: int) -> None:
        pass


# ----------------------------------------------------------------------------- item forms


def test_one_hot_labels_are_read_as_their_class(tmp_path: Path) -> None:
    one_hot = ItemsDataset(lambda i: (IMAGES[i], torch.nn.functional.one_hot(LABELS[i], 2).float()))
    callback = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False, on_error="raise")
    fit_on(tmp_path, one_hot, callback, IgnoreValidation())
    expected = [int(LABELS[entry["index"]]) for entry in callback.manifest]
    assert [entry["label"] for entry in callback.manifest] == expected
    assert sorted(entry["label"] for entry in callback.manifest) == [0, 0, 1, 1]


def test_a_file_name_in_the_item_names_the_probe(tmp_path: Path) -> None:
    named = ItemsDataset(lambda i: (IMAGES[i], LABELS[i], f"/data/isic/ISIC_{i:07d}.jpg"))
    callback = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False, on_error="raise")
    trainer = fit_on(tmp_path, named, callback, IgnoreValidation())
    assert [name.split(" ")[1] for name in callback.probes.names] == [
        f"ISIC_{entry['index']:07d}.jpg" for entry in callback.manifest
    ]
    assert "ISIC_" in texts(trainer, "audit/manifest")[0]


def test_a_third_element_is_never_read_as_the_roi_unless_told(tmp_path: Path) -> None:
    # Metadata, or a lesion's own mask, third: neither is the artifact's ROI.
    metadata = ItemsDataset(lambda i: (IMAGES[i], LABELS[i], {"age": 40 + i, "site": "back"}))
    callback = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False, on_error="raise")
    trainer = fit_on(tmp_path / "metadata", metadata, callback, IgnoreValidation())
    assert not bool(callback.probes.roi.any())
    assert "audit/gradcam/roi_share" not in scalar_tags(trainer)

    lesion = ItemsDataset(lambda i: (IMAGES[i], LABELS[i], MASKS[i]))
    untold = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False)
    fit_on(tmp_path / "untold", lesion, untold, IgnoreValidation())
    assert not bool(untold.probes.roi.any())

    told = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False, item_keys={"mask": 2})
    fit_on(tmp_path / "told", lesion, told, IgnoreValidation())
    assert torch.equal(told.probes.roi, MASKS[told.probes.indices] > 0.5)


@pytest.mark.parametrize("field", ["mask", "roi"])
def test_item_keys_name_the_mask_as_the_readme_does(tmp_path: Path, field: str) -> None:
    items = ItemsDataset(lambda i: {"pixels": IMAGES[i], "y": LABELS[i], "ruler_mask": MASKS[i]})
    keys = {"image": "pixels", "label": "y", field: "ruler_mask"}
    callback = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False, item_keys=keys)
    fit_on(tmp_path, items, callback, IgnoreValidation())
    assert torch.equal(callback.probes.roi, MASKS[callback.probes.indices] > 0.5)


def test_probe_count_chooses_balanced_probes_from_a_probe_dataset(tmp_path: Path) -> None:
    callback = SASAuditCallback(
        probe=corner_dataset(), probe_count=6, methods=["gradcam"], sanity=False, faithfulness=False
    )
    fit_on(tmp_path, corner_dataset(), callback)
    assert len(callback.manifest) == 6
    assert sorted(entry["label"] for entry in callback.manifest) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match=r"`probe_count`=3 chooses probes from a `probe` Dataset"):
        SASAuditCallback(probe=8, probe_count=3)


def test_images_of_different_sizes_are_resized_to_the_common_size_with_a_warning(tmp_path: Path) -> None:
    def item(i: int):
        image = IMAGES[i] if i % 5 else torch.nn.functional.interpolate(IMAGES[i][None], size=(20, 24))[0]
        return {"image": image, "label": LABELS[i]}

    callback = SASAuditCallback(probe=10, methods=["gradcam"], sanity=False, faithfulness=False, on_error="raise")
    with pytest.warns(UserWarning, match=r"different sizes; 2 of 10 .* resized to the most common size \[16, 16\]"):
        # Batch size 1: the validation loader itself takes items of different sizes.
        L.seed_everything(0, verbose=False)
        trainer = make_trainer(tmp_path, [callback], max_epochs=1)
        trainer.fit(IgnoreValidation(), DataLoader(corner_dataset(), batch_size=16), DataLoader(ItemsDataset(item)))
    assert callback.probes.images.shape == (10, 3, 16, 16)
    assert callback.audited_epochs == [0]


class Uint8Images(Dataset):
    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, i: int):
        return (IMAGES[i] * 40 + 128).clamp(0, 255).to(torch.uint8), LABELS[i]


class ScalesInForward(IgnoreValidation):
    def forward(self, images: Tensor) -> Tensor:
        return self.net((images.float() - 128) / 40)


class ScalesOnlyIntegers(IgnoreValidation):
    def forward(self, images: Tensor) -> Tensor:
        return self.net((images.float() - 128) / 40 if images.dtype == torch.uint8 else images)


def test_uint8_items_are_explained_as_float_and_a_model_that_tells_them_apart_is_refused(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False, on_error="raise")
    fit_on(tmp_path / "forward", Uint8Images(), callback, ScalesInForward())
    assert callback.probes.images.dtype == torch.float32 and callback.audited_epochs == [0]
    assert float(callback.probes.images.max()) > 1  # the stored values, not rescaled

    refused = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False)
    with pytest.raises(MisconfigurationException, match=r"integer \(uint8\) images.*output changes when they are"):
        fit_on(tmp_path / "dtype", Uint8Images(), refused, ScalesOnlyIntegers())


class PilImages(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        from torchvision.transforms.functional import to_pil_image

        return to_pil_image((IMAGES[i] * 0.2 + 0.5).clamp(0, 1)), int(LABELS[i])


def test_pil_probe_items_are_read_as_to_tensor_does(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=PilImages(), methods=["gradcam"], sanity=False, faithfulness=False)
    fit_on(tmp_path, corner_dataset(), callback)
    assert callback.audited_epochs == [0]
    expected = (IMAGES[:8] * 0.2 + 0.5).clamp(0, 1)
    assert torch.allclose(callback.probes.images, expected, atol=1 / 255)


# ----------------------------------------------------------------------------- batch hooks


class NormalisesInHooks(IgnoreValidation):
    """Raw items; the module normalises after transfer, and flips images only while training."""

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = images_and_labels(batch)
        if self.trainer.training:
            images = images.flip(-1)  # an augmentation a probe must not get
        return (images - 0.5) * 4, labels


class RawCorners(Dataset):
    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, i: int):
        return IMAGES[i] / 4 + 0.5, LABELS[i]


def test_probes_pass_through_the_batch_hooks_as_validation_batches_do(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False, on_error="raise")
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    trainer.fit(NormalisesInHooks(), DataLoader(RawCorners(), batch_size=16), DataLoader(RawCorners(), batch_size=16))
    expected = IMAGES[callback.probes.indices]  # normalised back, not flipped
    assert torch.allclose(callback.probes.images, expected, atol=1e-5)
    assert trainer.training is False  # the run's own stage is put back (fit has finished)

    raw = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False, batch_hooks=False)
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path / "raw", [raw], max_epochs=1)
    trainer.fit(NormalisesInHooks(), DataLoader(RawCorners(), batch_size=16), DataLoader(RawCorners(), batch_size=16))
    assert torch.allclose(raw.probes.images, IMAGES[raw.probes.indices] / 4 + 0.5)


class HookedData(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(RawCorners(), batch_size=16)

    def val_dataloader(self):
        return DataLoader(RawCorners(), batch_size=16)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        return (images - 0.5) * 4, labels


def test_a_datamodule_hook_prepares_the_probes(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, faithfulness=False, on_error="raise")
    L.seed_everything(0, verbose=False)
    make_trainer(tmp_path, [callback], max_epochs=1).fit(IgnoreValidation(), datamodule=HookedData())
    assert torch.allclose(callback.probes.images, IMAGES[callback.probes.indices], atol=1e-5)


# ----------------------------------------------------------------------------- several audits, several runs


def test_two_named_callbacks_audit_side_by_side_and_resume(tmp_path: Path) -> None:
    def callbacks():
        return [
            SASAuditCallback(probe=2, methods=["gradcam"], name="audit_gradcam", sanity=False, faithfulness=False),
            SASAuditCallback(
                probe=2, every_n_epochs=2, methods=[SaS(iterations=2, num_masks=4)], sanity=False, faithfulness=False
            ),
        ]

    fast, slow = callbacks()
    L.seed_everything(0, verbose=False)
    trainer = checkpointing_trainer(tmp_path, [fast, slow], max_epochs=2)
    trainer.fit(LitClassifier(), *loaders(corner_dataset()))
    assert fast.audited_epochs == [0, 1] and slow.audited_epochs == [1]
    events = read_events(trainer.logger.log_dir)
    assert [e.step for e in events.Scalars("audit_gradcam/gradcam/roi_share")] == [3, 6]
    assert [e.step for e in events.Scalars("audit/sas/roi_share")] == [6]
    assert "audit_gradcam/grid/gradcam" in image_tags(trainer) and "audit/grid/sas" in image_tags(trainer)
    assert fast.state_key != slow.state_key

    checkpoint = next(Path(trainer.logger.log_dir).rglob("*.ckpt"))
    states = torch.load(checkpoint, weights_only=False)["callbacks"]
    assert states[fast.state_key]["audited_epochs"] == [0, 1] and states[slow.state_key]["audited_epochs"] == [1]
    fast_again, slow_again = callbacks()
    resumed = make_trainer(tmp_path / "resumed", [fast_again, slow_again], max_epochs=3)
    resumed.fit(LitClassifier(), *loaders(corner_dataset()), ckpt_path=checkpoint)
    assert fast_again.audited_epochs == [0, 1, 2] and slow_again.audited_epochs == [1, 2]


def test_two_callbacks_with_one_name_are_refused_before_training(tmp_path: Path) -> None:
    # Lightning refuses two callbacks with one state key when the Trainer is built: the name is in the key.
    with pytest.raises(RuntimeError, match=r"more than one stateful callback of type `SASAuditCallback`"):
        make_trainer(tmp_path, [SASAuditCallback(methods=["gradcam"]), SASAuditCallback(methods=["sas"])])


def test_a_callback_reused_with_a_new_trainer_audits_the_new_run(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, methods=["gradcam"], sanity=False, faithfulness=False)
    for run in ("first", "second"):
        L.seed_everything(0, verbose=False)
        make_trainer(tmp_path / run, [callback], max_epochs=2).fit(LitClassifier(), *loaders(corner_dataset()))
        assert callback.audited_epochs == [0, 1], run
        assert [entry["epoch"] for entry in callback.history] == [0.0, 1.0], run


def test_checkpoints_can_leave_the_maps_out(tmp_path: Path) -> None:
    sizes = {}
    for keep in (True, False):
        callback = SASAuditCallback(probe=4, methods=["gradcam"], sanity=False, checkpoint_maps=keep)
        L.seed_everything(0, verbose=False)
        trainer = checkpointing_trainer(tmp_path / str(keep), [callback], max_epochs=1)
        trainer.fit(LitClassifier(), *loaders(corner_dataset()))
        checkpoint = next(Path(trainer.logger.log_dir).rglob("*.ckpt"))
        state = torch.load(checkpoint, weights_only=False)["callbacks"][callback.state_key]
        assert bool(state["previous_maps"]) is keep
        assert state["history"] and state["manifest"]  # the small records stay either way
        sizes[keep] = checkpoint.stat().st_size
    assert sizes[False] < sizes[True]


# ----------------------------------------------------------------------------- the progress bar


def test_the_progress_bar_ends_at_its_total_with_the_sanity_check(tmp_path: Path, monkeypatch) -> None:
    import lightning_sas.runtime.progress as progress_module

    bars = []

    class RecordingBar(progress_module.tqdm):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(progress_module, "tqdm", RecordingBar)
    callback = SASAuditCallback(probe=2, methods=[SaS(iterations=2, num_masks=4), GradCAM()], progress_bar=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_on(tmp_path, corner_dataset(), callback)
    assert len(bars) == 1 and bars[0].total > 0
    assert bars[0].n == bars[0].total  # every counted pass, sanity check included, and no more


# ----------------------------------------------------------------------------- the Grad-CAM layer


def test_the_grad_cam_layer_is_logged_and_a_wrong_one_fails_before_training(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, methods=["gradcam"], sanity=False, faithfulness=False, on_error="raise")
    trainer = fit_on(tmp_path / "auto", corner_dataset(), callback)
    assert callback.layers == {"gradcam": "net.features"}
    expected = "gradcam explains the layer `net.features` (chosen automatically)."
    assert texts(trainer, "audit/gradcam/layer") == [expected]

    wrong = SASAuditCallback(probe=2, methods=[GradCAM("net.featurs")], sanity=False, faithfulness=False)
    model = LitClassifier()
    expected = r"method 'gradcam'.*'net\.featurs' is not a submodule.*'net\.features'"
    with pytest.raises(MisconfigurationException, match=expected):
        fit_on(tmp_path / "wrong", corner_dataset(), wrong, model)
    assert model.training_steps == 0
