"""What users really pass to the callback: model outputs, item forms, normalisation, odd data.

Each test runs a real ``lightning.Trainer`` and reads the real TensorBoard event files back.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import TensorBoardLogger
from lit_models import LitClassifier, corner_dataset, images_and_labels, loaders
from test_callback import fit, make_trainer, read_events, snapshot_training_state
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_sas import GradCAM, SaS, SASAuditCallback


def cheap() -> list:
    return [SaS(iterations=2, num_masks=4), GradCAM()]


def scalar_tags(trainer: L.Trainer) -> set[str]:
    return set(read_events(trainer.logger.log_dir).Tags()["scalars"])


def image_tags(trainer: L.Trainer) -> set[str]:
    return set(read_events(trainer.logger.log_dir).Tags()["images"])


def texts(trainer: L.Trainer, tag: str) -> list[str]:
    events = read_events(trainer.logger.log_dir)
    return [event.tensor_proto.string_val[0].decode() for event in events.Tensors(f"{tag}/text_summary")]


# ----------------------------------------------------------------------------- normalisation


def test_one_value_mean_and_std_for_rgb_probes(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, methods=["gradcam"], mean=(0.5,), std=(0.25,), on_error="raise")
    trainer, _ = fit(tmp_path, callback, max_epochs=1)
    assert {"audit/grid/gradcam", "audit/probe_00", "audit/probe_01"} <= image_tags(trainer)
    assert "audit/gradcam/roi_share" in scalar_tags(trainer)


# ----------------------------------------------------------------------------- model outputs


class BinaryLit(LitClassifier):
    """One logit per image, trained with BCEWithLogitsLoss (benign/malignant style)."""

    def __init__(self, shape: str = "[B]") -> None:
        super().__init__(num_classes=1)
        self.shape = shape

    def forward(self, images: Tensor) -> Tensor:
        logit = self.net(images)  # [B, 1]
        return logit[:, 0] if self.shape == "[B]" else logit

    def training_step(self, batch, batch_index: int) -> Tensor:
        images, labels = images_and_labels(batch)
        logit = self(images).reshape(-1)
        return nn.functional.binary_cross_entropy_with_logits(logit, labels.float())

    def validation_step(self, batch, batch_index: int) -> None:
        pass


class DictLit(LitClassifier):
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(images), "aux": images.mean()}

    def training_step(self, batch, batch_index: int) -> Tensor:
        return nn.functional.cross_entropy(self(images_and_labels(batch)[0])["logits"], images_and_labels(batch)[1])

    def validation_step(self, batch, batch_index: int) -> None:
        pass


class TupleLit(DictLit):
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return images.mean(), self.net(images)

    def training_step(self, batch, batch_index: int) -> Tensor:
        return nn.functional.cross_entropy(self(images_and_labels(batch)[0])[1], images_and_labels(batch)[1])


def fit_module(tmp_path: Path, module: L.LightningModule, callback: SASAuditCallback, **kwargs) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, **kwargs)
    trainer.fit(module, *loaders(corner_dataset()))
    return trainer


@pytest.mark.parametrize("shape", ["[B]", "[B, 1]"])
def test_single_logit_binary_classifier(tmp_path: Path, shape: str) -> None:
    module = BinaryLit(shape)
    callback = SASAuditCallback(probe=4, methods=cheap(), on_error="raise")
    trainer = fit_module(tmp_path, module, callback)
    assert {"audit/sas/roi_share", "audit/gradcam/roi_share"} <= scalar_tags(trainer)
    raw = np.load(Path(trainer.logger.log_dir) / "audits" / "epoch=0.npz")
    # The prediction is logit > 0, and the confidence is sigmoid(logit) of the predicted class.
    images = torch.stack([corner_dataset()[i]["image"] for i in raw["indices"]])
    module.eval()
    with torch.no_grad():
        logit = module(images).reshape(-1)
    assert raw["predictions"].tolist() == (logit > 0).long().tolist()
    expected = torch.where(logit > 0, torch.sigmoid(logit), 1 - torch.sigmoid(logit))
    np.testing.assert_allclose(raw["confidences"], expected.numpy(), rtol=1e-5)
    assert np.isfinite(raw["maps_sas"]).all() and np.isfinite(raw["maps_gradcam"]).all()


@pytest.mark.parametrize(
    ("module", "output"), [(DictLit(), "logits"), (TupleLit(), 1), (TupleLit(), lambda out: out[1])]
)
def test_structured_outputs_with_an_output_selector(tmp_path: Path, module, output) -> None:
    callback = SASAuditCallback(probe=2, methods=cheap(), output=output, on_error="raise")
    trainer = fit_module(tmp_path, module, callback)
    assert {"audit/grid/sas", "audit/grid/gradcam"} <= image_tags(trainer)


def test_output_that_is_not_logits_fails_clearly_at_the_first_audit(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, methods=cheap(), on_error="raise")
    with pytest.raises(ValueError, match=r"got a dict \{'logits': a tensor of shape \[\d+, 2\].*Pass `output=`"):
        fit_module(tmp_path, DictLit(), callback)
    warned = SASAuditCallback(probe=2, methods=cheap())
    # Reported before training (the cost estimate's timed pass) and at the audit; training goes on.
    with pytest.warns(
        UserWarning,
        match=r"(could not estimate its cost|at epoch 0 failed and was skipped) \(ValueError: `model` must return",
    ) as caught:
        trainer = fit_module(tmp_path / "warn", DictLit(), warned)
    assert any("at epoch 0 failed and was skipped" in str(warning.message) for warning in caught)
    assert trainer.current_epoch == 1


# ----------------------------------------------------------------------------- dataset items


class MappingDataset(Dataset):
    def __init__(self, keys: dict[str, str]) -> None:
        self.base = corner_dataset()
        self.keys = keys

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        image, label, roi = self.base.tensors[0][index], self.base.tensors[1][index], self.base.tensors[2][index]
        return {self.keys["image"]: image, self.keys["label"]: label, self.keys["roi"]: roi, "id": index}


class NoValidationStep(LitClassifier):
    def validation_step(self, batch, batch_index: int) -> None:
        pass


@pytest.mark.parametrize(
    ("keys", "item_keys"),
    [
        ({"image": "image", "label": "label", "roi": "mask"}, None),
        ({"image": "px", "label": "y", "roi": "ruler"}, {"image": "px", "label": "y", "roi": "ruler"}),
    ],
)
def test_mapping_items(tmp_path: Path, keys: dict, item_keys) -> None:
    callback = SASAuditCallback(probe=4, methods=["gradcam"], item_keys=item_keys, on_error="raise")
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    train = DataLoader(corner_dataset(), batch_size=16)
    trainer.fit(NoValidationStep(), train, DataLoader(MappingDataset(keys), batch_size=16))
    assert sorted(entry["label"] for entry in callback.manifest) == [0, 0, 1, 1]
    assert bool(callback.probes.has_roi.all())
    assert "audit/gradcam/roi_share" in scalar_tags(trainer)


def test_mapping_item_without_the_image_key_names_the_keys(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=MappingDataset({"image": "px", "label": "y", "roi": "r"}), methods=["gradcam"])
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, limit_val_batches=0)
    with pytest.raises(
        TypeError, match=r"without the image key 'image' \(its keys: \['id', 'px', 'r', 'y'\]\); set `item_keys`"
    ):
        trainer.fit(LitClassifier(), DataLoader(corner_dataset(), batch_size=16))


class Stream(IterableDataset):
    def __iter__(self):
        yield from corner_dataset()


def test_iterable_validation_data_is_refused_before_training(tmp_path: Path) -> None:
    model = LitClassifier()
    trainer = make_trainer(tmp_path, [SASAuditCallback(probe=2, methods=["gradcam"])], max_epochs=1)
    with pytest.raises(
        MisconfigurationException, match=r"validation data is a Stream \(an IterableDataset.*Pass `probe=<a Dataset>`"
    ):
        trainer.fit(model, DataLoader(corner_dataset(), batch_size=16), DataLoader(Stream(), batch_size=16))
    assert model.training_steps == 0


# ----------------------------------------------------------------------------- non-finite values


class NanForCornerLit(LitClassifier):
    """Returns NaN logits for images whose top-left corner is bright (class 1 of corner_dataset);
    trains and validates on the healthy network, so only the audit meets the NaN forward."""

    def training_step(self, batch, batch_index: int) -> Tensor:
        return nn.functional.cross_entropy(self.net(images_and_labels(batch)[0]), images_and_labels(batch)[1])

    def validation_step(self, batch, batch_index: int) -> None:
        pass

    def forward(self, images: Tensor) -> Tensor:
        logits = self.net(images)
        bright = images[:, :, :8, :8].mean(dim=(1, 2, 3)) > 0.75
        return torch.where(bright[:, None], torch.full_like(logits, float("nan")), logits)


def top_pixel_share(heatmap: np.ndarray, roi: np.ndarray) -> float:
    """Share of the map's |R| highest pixels inside R, ties at the cut shared out evenly (roi_share)."""
    values, inside = heatmap.ravel().astype(np.float64), roi.ravel()
    k = int(inside.sum())
    cut = np.sort(values)[::-1][k - 1]
    above, at_cut = values > cut, values == cut
    return float(((above & inside).sum() + (k - above.sum()) * (at_cut & inside).sum() / at_cut.sum()) / k)


def test_non_finite_outputs_are_nan_scores_with_a_warning_never_chance(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=4, methods=cheap())
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    dataset = corner_dataset()
    module = NanForCornerLit()
    with pytest.warns(
        UserWarning,
        match=r"sas: the model's output or the map is not finite \(NaN/inf\) for 2 probe\(s\): val\[\d+\], val\[\d+\]",
    ):
        trainer.fit(module, *loaders(dataset))
    raw = np.load(Path(trainer.logger.log_dir) / "audits" / "epoch=0.npz")
    nan_rows = [bool(np.isnan(m).all()) for m in raw["maps_gradcam"]]
    assert nan_rows == [bool(label == 1) for label in raw["labels"]]
    # The mean is over the finite probes only: equal to the two healthy probes' mean, computed
    # here from the saved maps and the dataset's ROIs (a NaN probe scored as a blank map would
    # pull roi_share towards its chance level, 0.25).
    rois = dataset.tensors[2][raw["indices"]].numpy() > 0
    for method in ("sas", "gradcam"):
        maps = raw[f"maps_{method}"]
        healthy = [i for i in range(len(maps)) if np.isfinite(maps[i]).all()]
        assert healthy == [i for i, label in enumerate(raw["labels"]) if label == 0], method
        assert all(maps[i].max() > maps[i].min() for i in healthy), method  # each ranks something
        shares = [top_pixel_share(maps[i], rois[i]) for i in healthy]
        masses = [maps[i][rois[i]].sum() / maps[i].sum() for i in healthy]
        share = callback.history[0][f"audit/{method}/roi_share"]
        assert math.isfinite(share)
        assert share == pytest.approx(np.mean(shares), abs=1e-6), (method, share, shares)
        assert callback.history[0][f"audit/{method}/roi_mass"] == pytest.approx(np.mean(masses), abs=1e-5), method
    problems = texts(trainer, "audit/problems")
    assert problems and "gradcam" in problems[0] and "sas" in problems[0]


# ----------------------------------------------------------------------------- data shapes and settings


def test_grayscale_non_square_images_end_to_end(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(32, 1, 12, 20, generator=generator) * 0.5
    labels = torch.arange(32) % 2
    images[labels == 1, :, :6, :10] += 1.5
    roi = torch.zeros(32, 12, 20)
    roi[:, :6, :10] = 1
    dataset = TensorDataset(images, labels, roi)
    module = LitClassifier()
    module.net.features[0] = nn.Conv2d(1, 8, 3, padding=1)
    callback = SASAuditCallback(probe=2, methods=cheap(), mean=(0.5,), std=(0.5,), on_error="raise")
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    trainer.fit(module, *loaders(dataset))
    raw = np.load(Path(trainer.logger.log_dir) / "audits" / "epoch=0.npz")
    assert raw["maps_sas"].shape == (2, 12, 20) and raw["maps_gradcam"].shape == (2, 12, 20)
    assert {"audit/grid/sas", "audit/probe_01"} <= image_tags(trainer)


def test_target_label_explains_the_true_class(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=4, methods=["gradcam"], target="label", on_error="raise")
    trainer, _ = fit(tmp_path, callback, max_epochs=1)
    raw = np.load(Path(trainer.logger.log_dir) / "audits" / "epoch=0.npz")
    assert raw["targets"].tolist() == raw["labels"].tolist()


def test_several_validation_loaders_take_probes_from_the_first(tmp_path: Path) -> None:
    first, second = corner_dataset(seed=1), corner_dataset(seed=2)
    callback = SASAuditCallback(probe=2, methods=["gradcam"], on_error="raise")
    L.seed_everything(0, verbose=False)

    class TwoLoaders(LitClassifier):
        def validation_step(self, batch, batch_index: int, dataloader_idx: int = 0) -> None:
            pass

    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    trainer.fit(
        TwoLoaders(),
        DataLoader(first, batch_size=16),
        [DataLoader(first, batch_size=16), DataLoader(second, batch_size=16)],
    )
    expected = torch.stack([first[entry["index"]]["image"] for entry in callback.manifest])
    assert torch.equal(callback.probes.images, expected)


# ----------------------------------------------------------------------------- the training run


class DrawingMethod:
    """Draws from every global RNG outside any attribution context: only the callback's
    isolation stands between it and the training run's random streams."""

    name = "drawing"

    def attribute(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        torch.rand(3)
        np.random.rand(3)
        random.random()
        return images.abs().mean(dim=1) / images.abs().amax()


def test_rng_drawing_method_leaves_the_training_run_bit_identical(tmp_path: Path) -> None:
    reference = snapshot_training_state(*fit(tmp_path / "ref", None, max_epochs=3))
    callback = SASAuditCallback(probe=2, methods=[DrawingMethod()], on_error="raise", sanity=False)
    audited = snapshot_training_state(*fit(tmp_path / "audited", callback, max_epochs=3))
    assert callback.audited_epochs == [0, 1, 2]
    for name, value in reference["weights"].items():
        assert torch.equal(audited["weights"][name], value), name
    assert torch.equal(audited["torch_draw"], reference["torch_draw"])
    assert np.array_equal(audited["numpy_draw"], reference["numpy_draw"])
    assert audited["python_draw"] == reference["python_draw"]


def test_resume_with_other_settings_keeps_the_probe_set_and_history(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0, verbose=False)
    train, val = loaders(corner_dataset())
    first = SASAuditCallback(probe=3, methods=["gradcam"], every_n_epochs=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_epochs=1,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[first, checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(LitClassifier(), train, val)
    resumed = SASAuditCallback(probe=3, methods=cheap(), every_n_epochs=2, seed=7)
    trainer = make_trainer(tmp_path, [resumed], max_epochs=2)
    trainer.fit(LitClassifier(), train, val, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.manifest == first.manifest
    assert resumed.audited_epochs == [0, 1] and len(resumed.history) == 2
