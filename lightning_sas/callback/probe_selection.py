"""Probe selection: which images the callback audits, read as ``validation_step`` would see them.

The probes come from the validation loader (or a ``probe`` Dataset), chosen once per fit
(seeded, balanced over classes) or taken from a resumed checkpoint's manifest; each item is
collated and passed through the batch hooks (the datamodule's where it overrides them) in the
validation stage. Everything here runs before the first training step, and a probe set that
cannot be read is a configuration error (``MisconfigurationException``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.overrides import is_overridden
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from lightning_sas.audit.cost import TIMED_PROBES
from lightning_sas.probes.items import ItemKeys
from lightning_sas.probes.probe_set import Probes, choose_probes, probes_from_dataset
from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector
from lightning_sas.validation import per_channel


@dataclass(frozen=True)
class ProbeRequest:
    """What the callback was asked for (its arguments) and what a resumed checkpoint recorded."""

    probe: int | Sequence[int] | Dataset
    probe_count: int | None
    seed: int
    keys: ItemKeys
    batch_hooks: bool
    mean: Sequence[float] | None
    std: Sequence[float] | None
    target: str
    output: OutputSelector
    resumed: list[dict[str, Any]] | None

    @classmethod
    def of(cls, callback: Any) -> ProbeRequest:
        """The request of a :class:`~lightning_sas.callback.audit_callback.SASAuditCallback`."""
        return cls(
            probe=callback.probe,
            probe_count=callback.probe_count,
            seed=callback.seed,
            keys=callback.item_keys,
            batch_hooks=callback.batch_hooks,
            mean=callback.mean,
            std=callback.std,
            target=callback.target,
            output=callback.output,
            resumed=callback.records.loaded_manifest,
        )


def validation_loader(trainer: pl.Trainer, pl_module: pl.LightningModule) -> DataLoader:
    """The validation loader the probes come from (the first of several), refusing what has no indices."""
    loaders = trainer.val_dataloaders
    if loaders is None and trainer.limit_val_batches != 0:
        loaders = _unloaded_validation_dataloaders(trainer, pl_module)
    if isinstance(loaders, Mapping):  # several named loaders: the first one holds the probes
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, Sequence) and not isinstance(loaders, DataLoader):
        loaders = loaders[0] if loaders else None
    dataset = getattr(loaders, "dataset", None)
    if loaders is None or dataset is None:
        raise MisconfigurationException(
            "`SASAuditCallback` needs validation data to pick probes from, and the Trainer has none "
            "(no val_dataloader, or limit_val_batches=0). Pass `probe=<a Dataset>` instead."
        )
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise MisconfigurationException(
            f"`SASAuditCallback` picks probes by index, and the validation data is a "
            f"{type(dataset).__name__} (an IterableDataset or without len()), which has no indices. "
            "Pass `probe=<a Dataset>` (a map-style Dataset holding the probe images) instead."
        )
    return loaders  # type: ignore[return-value]


def batch_preparation(
    trainer: pl.Trainer, pl_module: pl.LightningModule, collate: Callable[[list], object] | None, enabled: bool
) -> Callable[[object], object] | None:
    """One item -> the batch ``validation_step`` would receive (``None``: read items as they are)."""
    if not enabled:
        return None
    hooks = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
    owners = {
        hook: trainer.datamodule
        if trainer.datamodule is not None and overrides(hook, trainer.datamodule)
        else pl_module
        for hook in hooks
    }
    hooked = any(overrides(hook, owner) for hook, owner in owners.items())
    custom_collate = collate is not None and collate is not default_collate

    def prepare(item: object) -> object:
        try:
            batch = (collate or default_collate)([item])
        except (TypeError, RuntimeError) as error:
            if not (hooked or custom_collate):
                return item  # nothing to reproduce: read the item as it is (e.g. a PIL image)
            raise MisconfigurationException(
                f"SASAuditCallback: could not collate a probe item as the validation loader does ({error}). "
                "Pass `probe=<a Dataset>` with items the collate function takes, or `batch_hooks=False`."
            ) from error
        stage = trainer.state.stage
        trainer.validating = True  # hooks that augment only while training see validation
        try:
            batch = owners["on_before_batch_transfer"].on_before_batch_transfer(batch, 0)
            batch = owners["transfer_batch_to_device"].transfer_batch_to_device(batch, pl_module.device, 0)
            return owners["on_after_batch_transfer"].on_after_batch_transfer(batch, 0)
        finally:
            trainer.state.stage = stage

    return prepare


def select_probes(trainer: pl.Trainer, pl_module: pl.LightningModule, request: ProbeRequest) -> Probes:
    """The probe set ``request`` asks for, read as ``validation_step`` would see it.

    Raises:
        MisconfigurationException: For a probe set that cannot be read (before training).
    """
    probes = _read_probes(trainer, pl_module, request)
    _check_probes(pl_module, probes, request)
    return probes


def _read_probes(trainer: pl.Trainer, pl_module: pl.LightningModule, request: ProbeRequest) -> Probes:
    if isinstance(request.probe, Dataset):
        positions = _positions_in_probe_dataset(request.probe, request)
        prepare = batch_preparation(trainer, pl_module, None, request.batch_hooks)
        return probes_from_dataset(request.probe, positions, prefix="probe", keys=request.keys, prepare=prepare)
    loader = validation_loader(trainer, pl_module)
    positions = _positions_in_validation_set(loader.dataset, request)
    prepare = batch_preparation(trainer, pl_module, getattr(loader, "collate_fn", None), request.batch_hooks)
    return probes_from_dataset(loader.dataset, positions, keys=request.keys, prepare=prepare)


def _positions_in_probe_dataset(dataset: Dataset, request: ProbeRequest) -> list[int]:
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise MisconfigurationException(
            f"`probe` must be a map-style Dataset (with len() and indexing), got {type(dataset).__name__}."
        )
    size = len(dataset)  # type: ignore[arg-type]
    if request.resumed and all(entry["index"] < size for entry in request.resumed):
        return [entry["index"] for entry in request.resumed]
    if request.probe_count is None:
        return list(range(size))
    if request.probe_count > size:
        raise MisconfigurationException(
            f"`probe_count`={request.probe_count} asks for more images than the `probe` Dataset has ({size})."
        )
    return choose_probes(dataset, request.probe_count, request.seed, request.keys)


def _positions_in_validation_set(dataset: Dataset, request: ProbeRequest) -> list[int]:
    size = len(dataset)  # type: ignore[arg-type]
    if request.resumed:
        positions = [entry["index"] for entry in request.resumed]
        if isinstance(request.probe, int) and request.probe != len(positions):
            rank_zero_warn(
                f"SASAuditCallback: `probe`={request.probe} is ignored on resume; the checkpoint's "
                f"{len(positions)} probes are audited so that scores stay comparable."
            )
    elif isinstance(request.probe, int):
        if request.probe > size:
            raise MisconfigurationException(
                f"`probe`={request.probe} asks for more images than the validation set has ({size})."
            )
        positions = choose_probes(dataset, request.probe, request.seed, request.keys)
    else:
        positions = list(request.probe)  # type: ignore[arg-type]
    out_of_range = [i for i in positions if i >= size]
    if out_of_range:
        raise MisconfigurationException(
            f"`probe` indices {out_of_range} are out of range for the validation set of {size} items."
        )
    return positions


def _check_probes(pl_module: pl.LightningModule, probes: Probes, request: ProbeRequest) -> None:
    channels = probes.images.shape[1]
    for name, values in (("mean", request.mean), ("std", request.std)):
        if values is not None:
            try:
                per_channel(name, values, channels)
            except ValueError as error:
                raise MisconfigurationException(str(error)) from None
    if request.target == "label" and bool((probes.labels < 0).any()):
        raise MisconfigurationException("`target`='label' needs labelled probes, and some probe items have no label.")
    if probes.integer_input:
        _check_integer_input(pl_module, probes, request.output)


def _check_integer_input(pl_module: pl.LightningModule, probes: Probes, output: OutputSelector) -> None:
    """Attribution needs float inputs: refuse a model that reads integer and float images differently."""
    images = probes.images[:TIMED_PROBES].to(pl_module.device)
    with attribution_mode(pl_module) as model, torch.no_grad():
        classifier = ClassifierOutput.wrap(model, output)
        as_float, as_stored = classifier(images).float(), classifier(images.to(torch.uint8)).float()
    if not torch.allclose(as_float, as_stored, rtol=1e-3, atol=1e-4):
        raise MisconfigurationException(
            "SASAuditCallback: the probes are integer (uint8) images, which the audit explains as float tensors "
            "with the same values, and the model's output changes when they are given as float (max difference "
            f"{float((as_float - as_stored).abs().max()):.3g}). Convert them to float in the dataset or in "
            "`on_after_batch_transfer`, where the audit sees it too."
        )


def overrides(method: str, instance: object) -> bool:
    """Whether ``instance`` (a module or datamodule of either Lightning namespace) overrides ``method``.

    Lightning's own helper knows only its namespace's base classes; the base is found here by
    name in the instance's class hierarchy, so ``pytorch_lightning`` modules are read alike.
    """
    if instance is None:
        return False
    bases = [
        base
        for base in type(instance).__mro__
        if base.__name__ in ("LightningModule", "LightningDataModule")
        and base.__module__.split(".")[0] in ("lightning", "pytorch_lightning")
    ]
    return bool(bases) and is_overridden(method, instance, parent=bases[0])


def _unloaded_validation_dataloaders(trainer: pl.Trainer, pl_module: pl.LightningModule) -> object:
    """The validation dataloaders when Lightning has not loaded them yet.

    Lightning loads validation data lazily, only for epochs that validate (e.g. not epoch 0
    with ``check_val_every_n_epoch=2``). The public ways come first: the datamodule's or the
    module's ``val_dataloader()``. Loaders passed to ``fit(val_dataloaders=...)`` are reachable
    only through the fit loop; that one private step is isolated here, does what the fit loop
    itself does before a validating epoch, and is tested on the supported Lightning versions.
    """
    for source in (trainer.datamodule, pl_module):
        if source is not None and overrides("val_dataloader", source):
            return source.val_dataloader()
    trainer.validating = True
    try:
        trainer.fit_loop.epoch_loop.val_loop.setup_data()
    except MisconfigurationException:
        pass  # no validation data at all: the caller says what to do about it
    finally:
        trainer.training = True
    return trainer.val_dataloaders
