"""SASAuditCallback: explain a fixed probe set every N epochs while the model trains.

At the end of every N-th training epoch (after validation) the callback explains a fixed probe
set of validation images on the module's device and in its precision, scores the maps, decides
(:func:`~lightning_sas.audit.verdict.decide`, shared with the CLI) and publishes through every
logger of the Trainer (:mod:`lightning_sas.callback.publishing`). What it logs, what it costs
and what it accepts: the README ("What the audit logs", "What you may pass") and
``docs/loggers.md``.

The training run does not notice the audit: model state, gradients, BatchNorm statistics and
every random number generator are as without it. Whatever fails after the probe set is chosen
(a method, rendering, a logger) is reported with a warning and training continues
(``on_error="warn"``) unless ``on_error="raise"``; a method that fails loses only its own
results. The audit never runs during the sanity check, ``validate``, ``test`` or ``predict``,
and runs once more at the end of ``fit`` if the last epoch was not audited.

The pieces: probe selection and resume (:mod:`~lightning_sas.callback.probe_selection`), the
checks before training (:mod:`~lightning_sas.callback.preflight`), the sharded audit
(:mod:`~lightning_sas.audit.sharded_run`, shared with the command line), what is kept
(:mod:`~lightning_sas.callback.records`), what is said (:mod:`~lightning_sas.callback.messages`)
and written (:mod:`~lightning_sas.callback.publishing`).
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_sas.audit.cost import AuditCost, audit_passes
from lightning_sas.audit.discovery import DiscoveryOptions
from lightning_sas.audit.run import AuditResult, problems, resolve_methods
from lightning_sas.audit.sharded_run import Ranks, explain_on_every_rank
from lightning_sas.audit.verdict import AlertRule, decide
from lightning_sas.callback.arguments import (
    check_choices,
    check_cost_share,
    check_probe,
    check_types,
    discovery_option,
    faithfulness_option,
    sanity_stages_option,
)
from lightning_sas.callback.messages import sanity_report, shortcut_outcome
from lightning_sas.callback.preflight import estimate_cost, locate_layers
from lightning_sas.callback.probe_selection import ProbeRequest, select_probes
from lightning_sas.callback.publishing import Publisher
from lightning_sas.callback.records import AuditRecords, RecordField
from lightning_sas.loggers.content import audit_scalars, scalar_layout
from lightning_sas.loggers.writing import describe_error
from lightning_sas.methods.base import AttributionMethod
from lightning_sas.probes.items import item_keys as checked_item_keys
from lightning_sas.probes.probe_set import Probes
from lightning_sas.runtime.distributed import all_ranks_together
from lightning_sas.runtime.outputs import OutputSelector, check_output_selector
from lightning_sas.runtime.progress import progress_bar
from lightning_sas.scores.faithfulness import Faithfulness
from lightning_sas.trust.intervention import Artifacts
from lightning_sas.validation import check_normalization


def _trainer_ranks(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Ranks:
    """The Trainer's processes as the sharded audit sees them (one, or the DDP ranks)."""
    world, rank = trainer.world_size, trainer.global_rank
    return Ranks(world, rank, pl_module.all_gather, pl_module.device, trainer.precision_plugin)


class SASAuditCallback(Callback):
    r"""Audit the model every ``every_n_epochs`` epochs with SaS and Grad-CAM, logged for review.

    The records live on the callback as plain data and in its checkpoint state:
    :attr:`history` (the scalars of each audit, with ``epoch`` and ``step``), :attr:`alerts`,
    :attr:`verdicts`, :attr:`sanity`, :attr:`manifest`, :attr:`audited_epochs`, :attr:`probe_changes`;
    :attr:`cost` (the estimate) and :attr:`layers` (Grad-CAM's layers). ``from_config``: from a YAML job.

    Args:
        probe: How many validation images to pick (seeded, class-balanced), indices, or a ``Dataset``.
        probe_count: With ``probe=<Dataset>``: this many of its items, chosen the same way (``None``: all).
        every_n_epochs: Audit every this many training epochs.
        methods: Method names (``"sas"``, ``"gradcam"``, ...) or objects with ``attribute`` and ``name``.
        target: Explain the prediction (``"pred"``) or the true label (``"label"``).
        mean: The input normalisation's mean (one value, or one per channel), to show true colours.
        std: Its standard deviation, likewise.
        seed: Seed of the probe selection and the sanity check.
        on_error: ``"warn"`` (a failing audit is a warning, training goes on) or ``"raise"``.
        alert_rule: When to alert (:class:`~lightning_sas.audit.verdict.AlertRule`, shared with the
            CLI; default thresholds measured in the README's alert study); ``None``: never.
        shortcut_threshold: Also alert when a method's mean ``roi_share`` exceeds this (off by default).
        stop_on_shortcut: Stop training cleanly (``trainer.should_stop``) at the first alert.
        class_names: Names of the classes, for the pictures.
        warm_start_iterations: SaS starts from the previous audit's masks and runs this many iterations.
        output: Where the logits are in the module's output: ``None``, an index, a key or a callable.
        item_keys: Where ``"image"``, ``"label"`` and ``"mask"`` (or ``"roi"``) are in the items: a
            mapping key or a tuple position, e.g. ``{"mask": 2}``.
        artifacts: Examples of a suspected artifact (:class:`~lightning_sas.trust.intervention.Artifacts`),
            pasted onto other-class probes at every audit; the alert rule uses the flip rate.
        faithfulness: Deletion / insertion scores of the maps: ``True``, ``False`` or a ``Faithfulness``.
        cost_warning_share: Warn before training when one audit would take more than this share of
            the training time between two audits (text ``audit/cost``); ``None``: no estimate.
        progress_bar: A progress bar in model passes (``None``: as the Trainer).
        sanity: Parameter randomisation check at the 1st audit: ``True`` (4 stages), stages, ``False``.
        batch_hooks: Pass probes through the collate function and batch hooks, as validation does.
        name: The tag prefix and part of the checkpoint key (two callbacks in one Trainer: two names).
        checkpoint_maps: Keep the last maps and SaS masks in checkpoints (``probes × H × W × 2`` B per method).
        discovery: Look for shortcuts nobody named (:mod:`lightning_sas.audit.discovery`): ``"auto"``
            (when the probes carry no ROI and no ``artifacts`` are given), ``"always"``, ``"never"``.

    Raises:
        ValueError: If an argument is invalid (``TypeError`` for ``output``); the message names it.
        MisconfigurationException: At ``setup`` without a logger; before the first training step for
            unreadable probes, a Grad-CAM layer not in the model, or ``mean``/``std`` that do not fit.
    """

    manifest = RecordField()
    alerts = RecordField()
    verdicts = RecordField()
    sanity = RecordField()
    audited_epochs = RecordField()
    probe_changes = RecordField()
    history = RecordField()

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
        alert_rule: AlertRule | None = AlertRule(),  # noqa: B008 - frozen dataclass, never mutated
        shortcut_threshold: float | None = None,
        stop_on_shortcut: bool = False,
        class_names: Sequence[str] | None = None,
        warm_start_iterations: int | None = None,
        output: OutputSelector = None,
        item_keys: Mapping[str, str] | None = None,
        artifacts: Artifacts | None = None,
        faithfulness: Faithfulness | bool = True,
        cost_warning_share: float | None = 0.5,
        progress_bar: bool | None = None,
        sanity: bool | int = True,
        probe_count: int | None = None,
        batch_hooks: bool = True,
        name: str = "audit",
        checkpoint_maps: bool = True,
        discovery: DiscoveryOptions | Literal["auto", "always", "never"] = "auto",
    ) -> None:
        check_probe(probe, probe_count)
        check_choices(name, every_n_epochs, target, on_error, shortcut_threshold, warm_start_iterations)
        check_types(alert_rule, artifacts)
        check_cost_share(cost_warning_share)
        self.methods = resolve_methods(methods)  # unknown names fail here, at construction
        self.probe, self.probe_count, self.seed = probe, probe_count, seed
        self.every_n_epochs, self.target, self.on_error = every_n_epochs, target, on_error
        self.mean, self.std = check_normalization(mean, std)
        if alert_rule is not None and shortcut_threshold is not None:
            alert_rule = replace(alert_rule, max_roi_share=shortcut_threshold)
        self.alert_rule, self.shortcut_threshold = alert_rule, shortcut_threshold
        self.stop_on_shortcut, self.artifacts = stop_on_shortcut, artifacts
        self.faithfulness = faithfulness_option(faithfulness) or None
        self.cost_warning_share, self.progress_bar = cost_warning_share, progress_bar
        self.sanity_stages = sanity_stages_option(sanity)
        self.class_names = None if class_names is None else list(class_names)
        self.warm_start_iterations = warm_start_iterations
        self.output = check_output_selector(output)
        self.item_keys = checked_item_keys(item_keys)
        self.batch_hooks, self.name, self.checkpoint_maps = bool(batch_hooks), name, bool(checkpoint_maps)
        self.discovery = discovery_option(discovery)
        self.records = AuditRecords()
        self.probes: Probes | None = None
        self.cost: AuditCost | None = None
        #: Per Grad-CAM method, the dotted name of the layer it explains (set before training).
        self.layers: dict[str, str] = {}
        self._publisher = Publisher(name, self.mean, self.std, self.class_names)
        self._run_trainer: weakref.ref[pl.Trainer] | None = None  # the Trainer of the run audited so far

    @classmethod
    def from_config(cls, config: str | os.PathLike[str] | Mapping[str, Any], **overrides: Any) -> SASAuditCallback:
        """The callback of a job file's ``audit:`` section, read as ``lightning-sas audit --config`` reads
        it (probes: ``ProbeFolderDataset``); ``callback:`` holds its own arguments, ``overrides`` win.
        Which key goes where: :mod:`lightning_sas.callback.job_config` (``ValueError`` for a bad one)."""
        from lightning_sas.callback.job_config import callback_arguments

        return cls(**callback_arguments(config, overrides))

    @property
    @override
    def state_key(self) -> str:
        # Only where the probes come from: a resumed run keeps its saved probe set and history
        # whatever else changed (the manifest wins and a changed count is reported).
        source = f"dataset:{type(self.probe).__qualname__}" if isinstance(self.probe, Dataset) else "validation"
        if self.name == "audit":  # the key of checkpoints written before `name` existed
            return self._generate_state_key(probes=source)
        return self._generate_state_key(probes=source, name=self.name)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `SASAuditCallback` with a Trainer that has no logger: the audit's heatmaps and "
                "scores are written through it. Pass e.g. `Trainer(logger=TensorBoardLogger('logs'))`."
            )
        if self._run_trainer is not None and self._run_trainer() is not trainer:
            # A new Trainer is a new run (a checkpoint given to `fit(ckpt_path=...)` loads after `setup`).
            if self.audited_epochs:
                rank_zero_info(
                    f"SASAuditCallback: a new Trainer; the audit starts a new history (the previous run's "
                    f"{len(self.audited_epochs)} audit(s) are not carried over)."
                )
            self.records, self.probes = AuditRecords(), None
        self._run_trainer = weakref.ref(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The last moment to refuse a bad configuration: validation loaders exist, a resumed
        # manifest is loaded, no training step has run. Writing is audit work (`on_error`).
        if self.probes is not None:
            return
        with isolate_rng():
            self.probes = select_probes(trainer, pl_module, ProbeRequest.of(self))
        with self._failures_reported("while recording the probe set"):
            changed = self.records.compare_manifest(self.probes.manifest(), trainer.current_epoch)
            if changed is not None:
                rank_zero_warn(changed)
                self._write_text(trainer, "audit/probe_change", changed)
            self._write_manifest(trainer)
        if self.cost_warning_share is not None:
            with self._failures_reported("could not estimate its cost"), isolate_rng():
                passes, share = self._audit_passes(trainer), self.cost_warning_share
                self.cost, message, warning = estimate_cost(trainer, pl_module, self.probes, passes, self, share)
                if warning is not None:
                    rank_zero_warn(warning)
                self._write_text(trainer, "audit/cost", message)
        with self._failures_reported("could not locate its Grad-CAM layer"), isolate_rng():
            found = locate_layers(trainer, pl_module, self.probes, self.methods, self.output)
            for method, (layer, how) in found.items():
                self.layers[method] = layer
                self._write_text(trainer, f"audit/{method}/layer", f"{method} explains the layer `{layer}` ({how}).")

    def _audit_passes(self, trainer: pl.Trainer) -> dict[str, tuple[int, bool]]:
        """A rank's passes in the next audit: with the sanity check while it has not run yet."""
        return audit_passes(
            self.methods,
            math.ceil(len(self.probes or ()) / trainer.world_size),
            faithfulness_steps=None if self.faithfulness is None else self.faithfulness.steps,
            intervention_trials=None if self.artifacts is None else self.artifacts.trials,
            sanity_stages=self.sanity_stages if self.sanity is None else 0,
            discovery_passes=self._discovers() * self.discovery.passes(len(self.probes or ())),
        )

    def _discovers(self) -> bool:
        return self.probes is not None and self.discovery.applies(self.probes, self.artifacts is not None)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._audit(trainer, pl_module, trainer.current_epoch)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last_epoch = trainer.current_epoch - 1  # the epoch counter has moved past the last epoch
        if last_epoch >= 0:
            self._audit(trainer, pl_module, last_epoch)

    def _audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        if self.probes is None or epoch in self.audited_epochs:
            return
        # Under DDP every rank audits its shard: forwards must be agreed across ranks.
        together = all_ranks_together() if trainer.world_size > 1 else nullcontext()
        with self._failures_reported(f"at epoch {epoch} failed and was skipped"), isolate_rng(), together:
            self._run_audit(trainer, pl_module, self.probes, epoch)

    @contextmanager
    def _failures_reported(self, outcome: str) -> Iterator[None]:
        """Audit work never kills training by default: warn and go on (``on_error="raise"`` re-raises)."""
        try:
            yield
        except MisconfigurationException:
            raise  # a configuration error is the user's to fix before training, never a warning
        except Exception as error:
            if self.on_error == "raise":
                raise
            rank_zero_warn(f"SASAuditCallback: the audit {outcome} ({describe_error(error)}). Training continues.")

    def _run_audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes, epoch: int) -> None:
        started = time.perf_counter()
        with _audit_progress(self, trainer, epoch):
            result = explain_on_every_rank(
                pl_module,
                probes,
                self.methods,
                _trainer_ranks(trainer, pl_module),
                self.records.previous_masks,
                self.discovery,
                target=self.target,
                warm_start_iterations=self.warm_start_iterations,
                output=self.output,
                artifacts=self.artifacts,
                faithfulness=self.faithfulness,
                sanity_stages=self.sanity_stages if self.sanity is None else 0,
                sanity_seed=self.seed,
            )
        result.seconds = time.perf_counter() - started
        # Every rank holds the gathered result: the records and the decision agree on all ranks.
        scalars = audit_scalars(result, self.records.previous_maps)
        warm_starts = result.masks if self.warm_start_iterations is not None else {}
        self.records.record_audit(epoch, trainer.global_step, scalars, result.maps, warm_starts)
        reported = problems(result, probes.names)
        if result.errors and self.on_error == "raise":
            raise RuntimeError("; ".join(reported))
        if reported:
            rank_zero_warn(f"SASAuditCallback: the audit at epoch {epoch} is incomplete: " + "; ".join(reported) + ".")
        if result.sanity is not None:
            self.sanity, warning, text = sanity_report(result.sanity, epoch)
            if warning is not None:
                rank_zero_warn(warning)
            with self._failures_reported(f"at epoch {epoch} could not write its sanity check"):
                self._write_text(trainer, "audit/sanity", text)
        self._decide(trainer, result, epoch)  # after the sanity check: a method it flags does not vote
        with self._failures_reported(f"at epoch {epoch} ran but could not be written"):
            self._publish(trainer, result, probes, scalars, trainer.global_step, epoch, reported)

    def _decide(self, trainer: pl.Trainer, result: AuditResult, epoch: int) -> None:
        if self.alert_rule is None or self.probes is None:
            return
        verdict = decide(result.evidence(sanity_flagged=(self.sanity or {}).get("flagged") or []), self.alert_rule)
        outcome = shortcut_outcome(
            self.records, verdict, result, self.probes.names, epoch, trainer.global_step, self.alert_rule
        )
        for warning in outcome.warnings:
            rank_zero_warn(warning)
        with self._failures_reported(f"at epoch {epoch} could not write its verdict"):
            for tag, text in outcome.texts:
                self._write_text(trainer, tag, text)
        if outcome.alert and self.stop_on_shortcut:
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.records.state_dict(self.checkpoint_maps)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = AuditRecords.from_state_dict(state_dict)
        self.probes = None  # re-read from the dataset at the next train start, then checked

    @rank_zero_only
    def _publish(self, trainer: pl.Trainer, *audit: Any) -> None:
        """One audit's ``(result, probes, scalars, step, epoch, problems)`` through every logger."""
        self._publisher.publish(trainer.loggers, *audit)

    @rank_zero_only
    def _write_text(self, trainer: pl.Trainer, tag: str, text: str) -> None:
        self._publisher.write_text(trainer.loggers, tag, text, trainer.global_step)

    @rank_zero_only
    def _write_manifest(self, trainer: pl.Trainer) -> None:
        """The manifest, and TensorBoard's chart layout (one chart per score, every method on it)."""
        roi = self.probes is not None and bool(self.probes.roi.any())
        parts = {"roi": roi, "faithfulness": self.faithfulness is not None, "intervention": self.artifacts is not None}
        parts["discovery"] = self._discovers()
        layout = scalar_layout(list(self.methods), **parts)
        self._publisher.write_manifest(trainer.loggers, self.manifest, layout, trainer.global_step)


def _audit_progress(callback: SASAuditCallback, trainer: pl.Trainer, epoch: int) -> AbstractContextManager:
    """A progress bar in model passes on rank 0 (see the callback's ``progress_bar``)."""
    show = callback.progress_bar if callback.progress_bar is not None else trainer.progress_bar_callback is not None
    if not show or not trainer.is_global_zero or callback.probes is None:
        return nullcontext()
    total = sum(count for count, _ in callback._audit_passes(trainer).values())
    return progress_bar(total, f"audit (epoch {epoch})")
