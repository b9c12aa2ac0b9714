"""SASAuditCallback: explain a fixed probe set every N epochs while the model trains."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from lightning_sas.audit import AuditResult, explain, resolve_methods, score
from lightning_sas.audit_logging import (
    audit_scalars,
    logger_directory,
    manifest_markdown,
    render_audit,
    save_raw_maps,
    write_pictures,
    write_text,
)
from lightning_sas.methods.base import AttributionMethod
from lightning_sas.probes import Probes, dataset_labels, probes_from_dataset, stratified_indices

#: Label scans for stratified probe selection read at most this many validation items.
MAX_LABEL_SCAN = 4096


class SASAuditCallback(Callback):
    r"""Audit the model every ``every_n_epochs`` epochs with SaS and Grad-CAM, logged for review.

    At the end of every N-th training epoch (after validation), the callback explains a fixed
    probe set of validation images on the module's device and in its precision, and logs:

    - ``audit/<method>/grid``: per method, a row per probe: image | heatmap overlay, labelled
      with the true class, the predicted class and the confidence;
    - ``audit/probe_<NN>``: per probe, image | one overlay per method (TensorBoard's step
      slider walks one probe through the epochs);
    - scalars ``audit/<method>/roi_share`` and ``audit/<method>/roi_mass`` (when probes carry
      ROI masks), ``audit/<method>/agreement`` (rank correlation with the previous audit's
      maps: drift) and ``audit/seconds``;
    - raw maps as ``audits/epoch=<E>.npz`` under the first logger's directory.

    Steps are ``trainer.global_step``. With a TensorBoard logger everything goes through it;
    other loggers get the scalars through ``log_metrics`` and the images as PNG files under
    their directory. The audit never runs during the sanity check, ``validate``, ``test`` or
    ``predict``, and runs once more at the end of ``fit`` if the last epoch was not audited.

    The training run does not notice the audit: model state, gradients, BatchNorm statistics
    and all random number generators are exactly as without it. An audit that fails is
    skipped with a warning (``on_error="warn"``) unless ``on_error="raise"``.

    The probe set is chosen once, before the first training step, from the validation dataset
    (or is the ``probe`` Dataset): deterministic for ``seed`` and stratified over classes.
    Dataset items may be ``image``, ``(image, label)`` or ``(image, label, roi_mask)``, where
    ``roi_mask`` (``H×W``, 0/1) marks a region that must not drive the decision, e.g. a ruler.
    The module's ``forward(images)`` must return logits ``[B, num_classes]``.

    Args:
        probe: How many validation images to pick (``int``), the indices into the validation
            dataset to use, or a ``Dataset`` whose items are the probes.
        every_n_epochs: Audit every this many training epochs.
        methods: Method names (``"sas"``, ``"gradcam"``) or method objects (anything with
            ``.attribute(model, images, targets)`` and a ``name``).
        target: Explain the model's prediction (``"pred"``) or the true label (``"label"``).
        mean: Per-channel mean of the input normalisation, to show images in true colour.
        std: Per-channel standard deviation of the input normalisation.
        seed: Seed of the probe selection.
        on_error: ``"warn"``: a failing audit is skipped with a rank-zero warning and training
            continues; ``"raise"``: the error propagates.
        shortcut_threshold: Raise a shortcut alert when a method's mean ``roi_share`` over the
            probes with an ROI exceeds this value; ``None`` disables alerts.
        stop_on_shortcut: Stop training cleanly (``trainer.should_stop``) at the first alert.
        class_names: Names of the classes, for labels in the pictures.
        warm_start_iterations: If set, SaS methods start each audit after the first from the
            previous audit's mask of the same probe and run this many iterations instead of
            their own ``iterations`` (the model moves little between audits, so fewer steps
            reach a map close to a cold start; see the README for the measured trade-off).

    Raises:
        ValueError: If an argument is invalid (the message names it and its value).
        MisconfigurationException: At ``setup`` if the Trainer has no logger; before the first
            training step if there is no validation data and no probe Dataset, or ``probe``
            asks for more images than the validation set has.

    Example::

        from lightning import Trainer
        from lightning_sas import SASAuditCallback

        trainer = Trainer(max_epochs=10, callbacks=[SASAuditCallback(probe=16, every_n_epochs=2)])
        trainer.fit(model, datamodule=data)  # then: tensorboard --logdir lightning_logs
    """

    def __init__(
        self,
        probe: int | Sequence[int] | Dataset = 16,
        every_n_epochs: int = 1,
        methods: Sequence[str | AttributionMethod] = ("sas", "gradcam"),
        target: Literal["pred", "label"] = "pred",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        on_error: Literal["warn", "raise"] = "warn",
        shortcut_threshold: float | None = 0.5,
        stop_on_shortcut: bool = False,
        class_names: Sequence[str] | None = None,
        warm_start_iterations: int | None = None,
    ) -> None:
        if isinstance(probe, bool) or not isinstance(probe, int | Sequence | Dataset):
            raise ValueError(f"`probe` must be an int, a list of indices or a Dataset, got {type(probe).__name__}.")
        if isinstance(probe, int) and probe < 1:
            raise ValueError(f"`probe` must be at least 1, got {probe}.")
        if isinstance(probe, Sequence) and (
            len(probe) == 0 or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in probe)
        ):
            raise ValueError(f"`probe` indices must be a non-empty list of integers >= 0, got {list(probe)!r}.")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an integer >= 1, got {every_n_epochs!r}.")
        if target not in ("pred", "label"):
            raise ValueError(f"`target` must be 'pred' or 'label', got {target!r}.")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"`on_error` must be 'warn' or 'raise', got {on_error!r}.")
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and (
                isinstance(values, str) or not isinstance(values, Sequence) or len(values) not in (1, 3)
            ):
                raise ValueError(f"`{name}` must be a list of 1 or 3 numbers (one per channel), got {values!r}.")
        if mean is not None and std is not None and len(mean) != len(std):
            raise ValueError(f"`mean` and `std` must have the same length, got {list(mean)} and {list(std)}.")
        if std is not None and any(value <= 0 for value in std):
            raise ValueError(f"`std` values must be positive, got {list(std)}.")
        if shortcut_threshold is not None and not 0 <= shortcut_threshold <= 1:
            raise ValueError(f"`shortcut_threshold` must be in [0, 1] or None, got {shortcut_threshold!r}.")
        if warm_start_iterations is not None and (
            isinstance(warm_start_iterations, bool) or not isinstance(warm_start_iterations, int) or warm_start_iterations < 1
        ):
            raise ValueError(f"`warm_start_iterations` must be an integer >= 1 or None, got {warm_start_iterations!r}.")
        self.methods = resolve_methods(methods)  # unknown names fail here, at construction
        self.probe = probe
        self.every_n_epochs = every_n_epochs
        self.target = target
        self.mean = None if mean is None else [float(value) for value in mean]
        self.std = None if std is None else [float(value) for value in std]
        self.seed = seed
        self.on_error = on_error
        self.shortcut_threshold = shortcut_threshold
        self.stop_on_shortcut = stop_on_shortcut
        self.class_names = None if class_names is None else list(class_names)
        self.warm_start_iterations = warm_start_iterations

        self.probes: Probes | None = None
        self.manifest: list[dict] = []
        self.alerts: list[dict] = []
        self.audited_epochs: list[int] = []
        self.probe_changes: list[dict] = []
        self.history: list[dict[str, float]] = []
        self._previous_maps: dict[str, Tensor] = {}
        self._previous_masks: dict[str, Tensor] = {}
        self._loaded_manifest: list[dict] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_epochs=self.every_n_epochs, methods=tuple(self.methods))

    # ------------------------------------------------------------------ checks and probe set

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `SASAuditCallback` with a Trainer that has no logger: the audit's heatmaps and "
                "scores are written through it. Pass e.g. `Trainer(logger=TensorBoardLogger('logs'))`."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The validation dataloaders exist from here on (and a resumed manifest is loaded), and
        # no training step has run yet: the last moment to refuse a bad configuration.
        if self.probes is None:
            with isolate_rng():
                self.probes = self._select_probes(trainer)
            self._check_manifest(trainer)

    def _validation_dataset(self, trainer: pl.Trainer) -> Dataset:
        loaders = trainer.val_dataloaders
        if loaders is None and trainer.limit_val_batches != 0:
            # Lightning loads validation data lazily, only for epochs that validate (e.g. not
            # epoch 0 with check_val_every_n_epoch=2); load it now, as its own fit loop does.
            trainer.validating = True
            try:
                trainer.fit_loop.epoch_loop.val_loop.setup_data()
            except MisconfigurationException:
                pass  # no validation data at all: reported below, with what to do about it
            finally:
                trainer.training = True
            loaders = trainer.val_dataloaders
        if isinstance(loaders, Mapping):  # several named loaders: the first one holds the probes
            loaders = next(iter(loaders.values()), None)
        elif isinstance(loaders, Sequence) and not isinstance(loaders, DataLoader):
            loaders = loaders[0] if loaders else None
        dataset = getattr(loaders, "dataset", None)
        if dataset is None:
            raise MisconfigurationException(
                "`SASAuditCallback` needs validation data to pick probes from, and the Trainer has none "
                "(no val_dataloader, or limit_val_batches=0). Pass `probe=<a Dataset>` instead."
            )
        return dataset

    def _select_probes(self, trainer: pl.Trainer) -> Probes:
        if isinstance(self.probe, Dataset):
            positions = list(range(len(self.probe)))  # type: ignore[arg-type]
            probes = probes_from_dataset(self.probe, positions, prefix="probe")
        else:
            dataset = self._validation_dataset(trainer)
            size = len(dataset)  # type: ignore[arg-type]
            if self._loaded_manifest:
                positions = [entry["index"] for entry in self._loaded_manifest]
                if isinstance(self.probe, int) and self.probe != len(positions):
                    rank_zero_warn(
                        f"SASAuditCallback: `probe`={self.probe} is ignored on resume; the checkpoint's "
                        f"{len(positions)} probes are audited so that scores stay comparable."
                    )
            elif isinstance(self.probe, int):
                if self.probe > size:
                    raise MisconfigurationException(
                        f"`probe`={self.probe} asks for more images than the validation set has ({size})."
                    )
                # A seeded sample of at most MAX_LABEL_SCAN items to read labels from.
                scanned = np.random.default_rng(self.seed).permutation(size)[:MAX_LABEL_SCAN].tolist()
                labels = dataset_labels(Subset(dataset, scanned))
                chosen = stratified_indices(labels, self.probe, self.seed)
                positions = sorted(scanned[i] for i in chosen)
            else:
                positions = list(self.probe)
            out_of_range = [i for i in positions if i >= size]
            if out_of_range:
                raise MisconfigurationException(
                    f"`probe` indices {out_of_range} are out of range for the validation set of {size} items."
                )
            probes = probes_from_dataset(dataset, positions)
        channels = probes.images.shape[1]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                raise MisconfigurationException(
                    f"`{name}` has {len(values)} values but the probe images have {channels} channels."
                )
        if self.target == "label" and bool((probes.labels < 0).any()):
            raise MisconfigurationException("`target`='label' needs labelled probes, and some probe items have no label.")
        return probes

    def _check_manifest(self, trainer: pl.Trainer) -> None:
        if self.probes is None:
            return
        manifest = self.probes.manifest()
        if self._loaded_manifest is not None:
            changed = [
                new["name"]
                for old, new in zip(self._loaded_manifest, manifest, strict=False)
                if old["sha256"] != new["sha256"]
            ]
            if changed or len(self._loaded_manifest) != len(manifest):
                change = {"epoch": trainer.current_epoch, "probes": changed}
                self.probe_changes.append(change)
                message = (
                    f"SASAuditCallback: the probe set changed since the checkpoint: {changed or 'count differs'} "
                    "no longer hash to the same content. Scores before and after this point are not comparable."
                )
                rank_zero_warn(message)
                self._write_text(trainer, "audit/probe_change", message)
                # Drift and warm starts against other images would be meaningless.
                self._previous_maps, self._previous_masks = {}, {}
        self.manifest = manifest
        self._write_text(trainer, "audit/manifest", manifest_markdown(manifest))

    # ------------------------------------------------------------------ when to audit

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        self._audit(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last_epoch = trainer.current_epoch - 1  # the epoch counter has moved past the last epoch
        if self.probes is not None and last_epoch >= 0 and last_epoch not in self.audited_epochs:
            self._audit(trainer, pl_module, epoch=last_epoch)

    # ------------------------------------------------------------------ the audit

    def _audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int | None = None) -> None:
        epoch = trainer.current_epoch if epoch is None else epoch
        if self.probes is None or epoch in self.audited_epochs:
            return
        with self._failures_reported(epoch, "failed and was skipped"), isolate_rng():
            self._run_audit(trainer, pl_module, epoch)

    @contextmanager
    def _failures_reported(self, epoch: int, outcome: str) -> Iterator[None]:
        """By default a failing audit never kills training: warn and go on (``on_error="raise"`` re-raises)."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - any failure of the audit, whatever its type
            if self.on_error == "raise":
                raise
            rank_zero_warn(
                f"SASAuditCallback: the audit at epoch {epoch} {outcome} "
                f"({type(error).__name__}: {error}). Training continues."
            )

    def _run_audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        started = time.perf_counter()
        result = self._explain_sharded(trainer, pl_module)
        result.seconds = time.perf_counter() - started
        # Every rank holds the gathered result: bookkeeping and the shortcut decision happen on
        # all of them, so they agree on what was audited and on `should_stop`.
        scalars = audit_scalars(result, self._previous_maps)
        self.audited_epochs.append(epoch)
        self._previous_maps = {name: maps.detach().cpu() for name, maps in result.maps.items()}
        if self.warm_start_iterations is not None:
            self._previous_masks = {name: mask.detach().cpu() for name, mask in result.masks.items()}
        self.history.append({"epoch": float(epoch), "step": float(trainer.global_step), **scalars})
        self._check_shortcut(trainer, result, epoch)
        with self._failures_reported(epoch, "ran but could not be written"):
            self._publish(trainer, result, scalars, epoch)

    def _explain_sharded(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> AuditResult:
        """Each rank explains its share of the probes; everyone gets all results back."""
        probes = self.probes
        if probes is None:
            raise RuntimeError("SASAuditCallback: no probe set was selected before the audit.")
        device = pl_module.device
        world_size, rank = trainer.world_size, trainer.global_rank
        count = len(probes)
        per_rank = math.ceil(count / world_size)
        # Strided shards padded to the same length (all_gather needs equal shapes).
        mine = list(range(rank, count, world_size)) or [0]
        mine += [mine[-1]] * (per_rank - len(mine))
        failure: Exception | None = None
        local = shard = None
        try:
            shard = probes.subset(mine).to(device)
            shard.images = trainer.precision_plugin.convert_input(shard.images)
            initial_masks = {name: mask[mine].to(device) for name, mask in self._previous_masks.items()}
            with trainer.precision_plugin.forward_context():
                local = explain(
                    pl_module, shard, self.methods, self.target,
                    initial_masks=initial_masks, warm_start_iterations=self.warm_start_iterations,
                )
        except Exception as error:  # noqa: BLE001 - ranks must agree before raising
            failure = error
        if world_size == 1:
            if failure is not None:
                raise failure
            return score(local, shard.roi)  # type: ignore[arg-type,union-attr]
        failed = pl_module.all_gather(torch.tensor(float(failure is not None), device=device))
        if bool(failed.sum() > 0):
            raise failure or RuntimeError("the audit failed on another rank")
        gathered = {
            "predictions": pl_module.all_gather(local.predictions),  # type: ignore[union-attr]
            "confidences": pl_module.all_gather(local.confidences),  # type: ignore[union-attr]
            "targets": pl_module.all_gather(local.targets),  # type: ignore[union-attr]
            **{f"map_{name}": pl_module.all_gather(maps) for name, maps in local.maps.items()},  # type: ignore[union-attr]
            **{f"mask_{name}": pl_module.all_gather(mask) for name, mask in local.masks.items()},  # type: ignore[union-attr]
        }
        # [world, per_rank, ...] -> probe order: rank r's j-th item is probe r + j * world.
        order = [r + j * world_size for j in range(per_rank) for r in range(world_size)]
        keep = [i for i, position in enumerate(order) if position < count]
        sort = sorted(keep, key=lambda i: order[i])

        def reassemble(value: Tensor) -> Tensor:
            interleaved = value.transpose(0, 1).reshape(world_size * per_rank, *value.shape[2:])
            return interleaved[torch.tensor(sort, device=value.device)]

        result = AuditResult(
            maps={name: reassemble(gathered[f"map_{name}"]) for name in local.maps},  # type: ignore[union-attr]
            predictions=reassemble(gathered["predictions"]),
            confidences=reassemble(gathered["confidences"]),
            targets=reassemble(gathered["targets"]),
            roi_share={},
            roi_mass={},
            seconds=0.0,
            masks={name: reassemble(gathered[f"mask_{name}"]) for name in local.masks},  # type: ignore[union-attr]
        )
        return score(result, probes.roi)

    @rank_zero_only
    def _publish(self, trainer: pl.Trainer, result: AuditResult, scalars: dict[str, float], epoch: int) -> None:
        probes = self.probes
        if probes is None:
            return
        step = trainer.global_step
        pictures = render_audit(
            result, probes, mean=self.mean, std=self.std, class_names=self.class_names, title=f"epoch {epoch}"
        )
        write_pictures(trainer.loggers, pictures, step)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            logger.save()
        save_raw_maps(logger_directory(trainer.loggers[0]), epoch, result, probes)

    # ------------------------------------------------------------------ shortcut alerts

    def _check_shortcut(self, trainer: pl.Trainer, result: AuditResult, epoch: int) -> None:
        if self.shortcut_threshold is None or self.probes is None:
            return
        for method, means in result.mean_scores().items():
            if means["roi_share"] <= self.shortcut_threshold:
                continue
            shares = result.roi_share[method].detach().cpu()
            ranked = [i for i in torch.argsort(torch.nan_to_num(shares, nan=-1.0), descending=True).tolist()]
            worst = [self.probes.names[i] for i in ranked[:3] if not math.isnan(float(shares[i]))]
            alert = {
                "method": method,
                "epoch": epoch,
                "step": trainer.global_step,
                "roi_share": means["roi_share"],
                "roi_mass": means["roi_mass"],
                "probes": worst,
            }
            message = (
                f"Shortcut alert: {method} puts {means['roi_share']:.2f} of its top-ranked pixels on the ROI "
                f"(threshold {self.shortcut_threshold:.2f}) at epoch {epoch}; "
                f"probes leaning on it most: {', '.join(worst)}."
            )
            first = not self.alerts
            self.alerts.append(alert)
            rank_zero_warn(message)
            if first:
                self._write_text(trainer, "audit/alert", message)
            if self.stop_on_shortcut:
                trainer.should_stop = True

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "alerts": self.alerts,
            "audited_epochs": self.audited_epochs,
            "probe_changes": self.probe_changes,
            "history": self.history,
            "previous_maps": {name: maps.half() for name, maps in self._previous_maps.items()},
            "previous_masks": self._previous_masks,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_manifest = list(state_dict.get("manifest", [])) or None
        self.alerts = list(state_dict.get("alerts", []))
        self.audited_epochs = list(state_dict.get("audited_epochs", []))
        self.probe_changes = list(state_dict.get("probe_changes", []))
        self.history = list(state_dict.get("history", []))
        self._previous_maps = {name: maps.float() for name, maps in state_dict.get("previous_maps", {}).items()}
        self._previous_masks = dict(state_dict.get("previous_masks", {}))
        self.probes = None  # re-read from the dataset at the next train start, then checked

    @rank_zero_only
    def _write_text(self, trainer: pl.Trainer, tag: str, text: str) -> None:
        write_text(trainer.loggers, tag, text, trainer.global_step)
