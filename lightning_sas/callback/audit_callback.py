"""SASAuditCallback: explain a fixed probe set every N epochs while the model trains.

At the end of every N-th training epoch (after validation), the callback explains a fixed
probe set of validation images on the module's device and in its precision, and logs:

- ``audit/grid/<method>``: per method, a row per probe: image | heatmap overlay, labelled
  with the true class, the predicted class and the confidence;
- ``audit/probe_<NN>``: per probe, image | one overlay per method (TensorBoard's step
  slider walks one probe through the epochs);
- scalars ``audit/<method>/roi_share``, ``audit/<method>/roi_lift`` (roi_share over its
  chance level) and ``audit/<method>/roi_mass`` (when probes carry ROI masks);
  ``audit/<method>/deletion_auc``, ``audit/<method>/insertion_auc`` and
  ``audit/<method>/insertion_minus_deletion`` (faithfulness); ``audit/<method>/agreement``
  (rank correlation with the previous audit's maps: drift);
  ``audit/intervention/flip_rate`` and ``audit/intervention/probability_change`` (with
  ``artifacts``); ``audit/<method>/sanity_similarity`` (first audit only);
  ``audit/seconds``;
- text ``audit/manifest`` (the probe set, once), ``audit/cost`` (the cost estimate, once,
  before training), ``audit/alert`` (the first shortcut alert), ``audit/problems``
  (methods that failed, probes whose output or map was not finite), ``audit/sanity`` (the
  randomisation check's table, once), ``audit/probe_change`` (a resumed run whose probes
  changed);
- raw maps as ``audits/epoch=<E>.npz`` under the first logger's directory.

The same lives on the callback as plain data: :attr:`history` (one dict of the scalars
above per audit, with ``epoch`` and ``step``), :attr:`alerts` (per alert: epoch, step,
the criteria crossed, the reasons, the scores, the probes leaning on the ROI most),
:attr:`verdicts`, :attr:`sanity`, :attr:`cost` and :attr:`manifest`; ``state_dict`` keeps
them for resume.

Cost: an audit's time is its model passes. SaS costs ``iterations × 2 × schedule_subset``
passes per probe (950 at its defaults, 3,800 for ``SaS.paper()``), Grad-CAM one, faithfulness ``2 + 2 (steps − 1)``
per method (forward only), the sanity check ``stages + 1`` audits' worth once. On a CPU a
default SaS audit of 16 probes of a ResNet-50 at 224 px takes hours; use
``methods=(SaS(iterations=30), "gradcam")``, fewer probes, a larger ``every_n_epochs``,
or the training GPU. The callback measures one pass before training and says what an
audit will cost (see ``cost_warning_share``).

Steps are ``trainer.global_step``. Every logger gets the scalars through ``log_metrics``
and the rest in its own form (:mod:`lightning_sas.loggers.writing`): TensorBoard images,
text and a custom-scalars layout (one chart per score, every method on it); W&B
``wandb.Image`` with captions, the manifest as a ``wandb.Table``, text in the run
summary; MLflow stepped images (``log_image``) and text artifacts; other loggers PNG
and Markdown files under their directory (a logger without one gets the scalars only,
with one warning). Scalars are written before pictures, and every
logger is written even when another fails. The audit never runs during the sanity check,
``validate``, ``test`` or ``predict``, and runs once more at the end of ``fit`` if the
last epoch was not audited.

The training run does not notice the audit: model state, gradients, BatchNorm statistics
and all random number generators are exactly as without it. Whatever fails in the
callback's hooks after the probe set is chosen (a method, rendering, a logger) is
reported with a warning and training continues (``on_error="warn"``) unless
``on_error="raise"``. A method that fails loses only its own results.

The probe set is chosen once, before the first training step, from the validation dataset
(or the ``probe`` Dataset): deterministic for ``seed`` and stratified over classes. Each
probe is what ``validation_step`` would receive: the item is collated with the validation
loader's ``collate_fn`` and passed through the batch hooks (``on_before_batch_transfer``,
``transfer_batch_to_device``, ``on_after_batch_transfer``, the datamodule's where it
overrides them), so a module that normalises there is audited on normalised inputs.
Items may be ``image``, ``(image, label, ...)`` (further elements such as a file name or
metadata are ignored; a file name is shown with the probe) or a mapping (keys ``"image"``,
``"label"``, ``"mask"``); labels a class index or a one-hot vector. An ROI mask (``H×W``,
0/1: a region that must not drive the decision, e.g. a ruler) is read from mapping items'
``"mask"`` key, and from tuple items only where ``item_keys`` puts it (``{"mask": 2}``): a
third element may as well be the lesion's own mask. The module's ``forward(images)`` returns
class logits ``[B, num_classes]``, a single binary logit ``[B]`` / ``[B, 1]``, or a
tuple/list/dict from which ``output`` picks them.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from typing_extensions import override

from lightning_sas.audit.cost import TIMED_PROBES, AuditCost, audit_passes, estimate_audit
from lightning_sas.audit.run import AuditResult, explain, problems, resolve_methods, score
from lightning_sas.audit.sharding import gather_result, shard_positions
from lightning_sas.audit.verdict import AlertRule, decide
from lightning_sas.callback.arguments import (
    check_choices,
    check_cost_share,
    check_probe,
    check_types,
    faithfulness_option,
    sanity_stages_option,
)
from lightning_sas.callback.messages import alert_report, cost_report, sanity_report, verdict_record
from lightning_sas.callback.probe_selection import ProbeRequest, select_probes
from lightning_sas.callback.publishing import Publisher
from lightning_sas.loggers.writing import (
    audit_scalars,
    describe_error,
    scalar_layout,
)
from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.gradcam import GradCAM
from lightning_sas.probes.probe_set import Probes
from lightning_sas.probes.probe_set import item_keys as checked_item_keys
from lightning_sas.runtime.distributed import all_ranks_together, failing_together
from lightning_sas.runtime.model_state import attribution_mode
from lightning_sas.runtime.outputs import ClassifierOutput, OutputSelector, check_output_selector
from lightning_sas.runtime.progress import reporting
from lightning_sas.scores.faithfulness import Faithfulness
from lightning_sas.trust.intervention import Artifacts
from lightning_sas.trust.sanity import SanityResult
from lightning_sas.validation import check_normalization


class SASAuditCallback(Callback):
    r"""Audit the model every ``every_n_epochs`` epochs with SaS and Grad-CAM, logged for review.

    What it logs, what it costs, how probes are read and what a failure does: see this
    module's docstring (and the README's tables).

    Args:
        probe: How many validation images to pick (``int``), the indices into the validation
            dataset to use, or a ``Dataset`` to take the probes from (all its items, or
            ``probe_count`` of them).
        probe_count: With ``probe=<Dataset>``: audit this many of its items, chosen as from
            the validation data (seeded, balanced over classes); ``None``: all of them.
        every_n_epochs: Audit every this many training epochs.
        methods: Method names (``"sas"``, ``"gradcam"``) or method objects (anything with
            ``.attribute(model, images, targets)`` and a ``name``).
        target: Explain the model's prediction (``"pred"``) or the true label (``"label"``).
        mean: The input normalisation's mean, to show images in true colour: one value for
            every channel or one per channel.
        std: The input normalisation's standard deviation, likewise.
        seed: Seed of the probe selection.
        on_error: ``"warn"``: a failing audit (or a failing write) is reported with a
            rank-zero warning and training continues; ``"raise"``: the error propagates.
        alert_rule: When to raise a shortcut alert (:class:`~lightning_sas.audit.verdict.AlertRule`,
            shared with the CLI): by default a method's mean lift over chance on the ROI, or the
            intervention's flip rate when ``artifacts`` are given, above thresholds chosen from
            measured error rates (README, "Alert study"). ``None`` disables alerts.
        shortcut_threshold: Also alert when a method's mean ``roi_share`` (absolute) exceeds
            this value (the rule of earlier versions); ``None`` (default) leaves it out.
        stop_on_shortcut: Stop training cleanly (``trainer.should_stop``) at the first alert.
        class_names: Names of the classes, for labels in the pictures.
        artifacts: Examples of a suspected artifact and its class
            (:class:`~lightning_sas.trust.intervention.Artifacts`): every audit pastes them onto the
            probes of the other classes and logs ``audit/intervention/flip_rate`` and
            ``audit/intervention/probability_change``; the alert rule uses the flip rate.
        faithfulness: Score every method's maps with deletion / insertion curves
            (``audit/<method>/deletion_auc``, ``insertion_auc``, ``insertion_minus_deletion``):
            ``True`` (default: 20 steps towards the SaS blur), ``False``, or a
            :class:`~lightning_sas.scores.faithfulness.Faithfulness` with other settings.
        cost_warning_share: Before the first training step the callback times one model pass
            on the probes, estimates an audit's time from the methods' pass counts (logged as
            text ``audit/cost`` and kept in :attr:`cost`), and warns when one audit would take
            more than this share of the training time between two audits. ``None``: no estimate
            and no check (``math.inf``: estimate, never warn).
        progress_bar: Show a progress bar (in model passes) during each audit; ``None``
            follows the Trainer (shown when it has a progress bar).
        sanity: Run the model-parameter randomisation sanity check once per fit, at the first
            audit (:mod:`lightning_sas.trust.sanity`): ``True`` (4 stages), a number of stages, or
            ``False``. It costs about ``stages + 1`` audits' worth of method passes, once. A
            method whose maps do not depend on the weights is flagged (warning, text
            ``audit/sanity``, scalar ``audit/<method>/sanity_similarity``; kept in
            :attr:`sanity`).
        warm_start_iterations: If set, methods that can warm-start (SaS) start each audit after
            the first from the previous audit's state for the same probe and run this many
            iterations instead of their own (see the README for the measured trade-off).
        output: Where the logits are in the module's output: ``None`` (the output is the
            logits), an index (tuple/list outputs), a key (dict outputs) or a callable.
        item_keys: Where the fields ``"image"``, ``"label"`` and ``"mask"`` (or ``"roi"``) are:
            a key of mapping items or a position in tuple items, e.g.
            ``{"image": "pixels", "mask": "ruler_mask"}`` or ``{"mask": 2}``.
        batch_hooks: Pass each probe through the collate function and the batch hooks, as
            validation does (``False``: read the dataset items as they are).
        name: The audit's name: the prefix of its TensorBoard tags (``"<name>/..."``) and part
            of its checkpoint key. Two callbacks in one Trainer (e.g. Grad-CAM every epoch and
            SaS every 5) need different names.
        checkpoint_maps: Keep the last audit's maps (float16) and SaS masks in the callback's
            checkpoint state, so that drift scores and warm starts carry over a resume. They
            cost ``probes × H × W × 2`` bytes per method (≈ 1.6 MB for 16 probes of 224² per
            method; ≈ 13 MB with all eight methods); ``False``
            keeps only the small records (manifest, history, alerts), and a resumed run
            starts drift and warm starts afresh.

    Raises:
        ValueError: If an argument is invalid (the message names it and its value).
        TypeError: If ``output`` is neither ``None``, an int, a str nor a callable.
        MisconfigurationException: At ``setup`` if the Trainer has no logger; before the first
            training step if there is no validation data and no probe Dataset, the validation
            data is an ``IterableDataset``, ``probe`` asks for more images than the validation
            set has, or ``mean``/``std`` do not fit the images' channels.

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
    ) -> None:
        check_probe(probe, probe_count)
        check_choices(
            name=name,
            every_n_epochs=every_n_epochs,
            target=target,
            on_error=on_error,
            shortcut_threshold=shortcut_threshold,
            warm_start_iterations=warm_start_iterations,
        )
        self.methods = resolve_methods(methods)  # unknown names fail here, at construction
        self.probe = probe
        self.every_n_epochs = every_n_epochs
        self.target = target
        self.mean, self.std = check_normalization(mean, std)
        self.seed = seed
        self.on_error = on_error
        check_types(alert_rule, artifacts)
        if alert_rule is not None and shortcut_threshold is not None:
            alert_rule = replace(alert_rule, max_roi_share=shortcut_threshold)
        self.alert_rule = alert_rule
        self.shortcut_threshold = shortcut_threshold
        self.stop_on_shortcut = stop_on_shortcut
        self.artifacts = artifacts
        faithfulness = faithfulness_option(faithfulness)
        self.faithfulness = faithfulness or None
        check_cost_share(cost_warning_share)
        self.cost_warning_share = cost_warning_share
        self.progress_bar = progress_bar
        self.cost: AuditCost | None = None
        sanity = sanity_stages_option(sanity)
        self.sanity_stages = sanity
        #: The sanity check's outcome (plain data), once it ran: stages, per-stage similarity
        #: per method, flagged methods, threshold, epoch.
        self.sanity: dict[str, Any] | None = None
        self.class_names = None if class_names is None else list(class_names)
        self.warm_start_iterations = warm_start_iterations
        self.output = check_output_selector(output)
        self.item_keys = checked_item_keys(item_keys)
        self.probe_count = probe_count
        self.batch_hooks = bool(batch_hooks)
        self.name = name
        self.checkpoint_maps = bool(checkpoint_maps)

        self.probes: Probes | None = None
        self.manifest: list[dict] = []
        self.alerts: list[dict] = []
        self.verdicts: list[dict] = []
        self._cannot_tell_warned: set[str] = set()
        self.audited_epochs: list[int] = []
        self.probe_changes: list[dict] = []
        self.history: list[dict[str, float]] = []
        self._previous_maps: dict[str, Tensor] = {}
        self._previous_masks: dict[str, Tensor] = {}
        self._loaded_manifest: list[dict] | None = None
        self._publisher = Publisher(name, self.mean, self.std, self.class_names)
        #: Per Grad-CAM method, the dotted name of the layer it explains (set before training).
        self.layers: dict[str, str] = {}
        self._run_trainer: weakref.ref[pl.Trainer] | None = None  # the Trainer of the run audited so far

    @property
    @override
    def state_key(self) -> str:
        # Only where the probes come from: a resumed run keeps its saved probe set and history
        # whatever else changed (`every_n_epochs`, methods, seed, probe count: the manifest wins
        # and a changed count is reported).
        source = f"dataset:{type(self.probe).__qualname__}" if isinstance(self.probe, Dataset) else "validation"
        if self.name == "audit":  # the key of checkpoints written before `name` existed
            return self._generate_state_key(probes=source)
        return self._generate_state_key(probes=source, name=self.name)

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
        if self._run_trainer is not None and self._run_trainer() is not trainer:
            # A new Trainer is a new run: the last run's audited epochs would otherwise skip this
            # run's audits. A checkpoint given to `fit(ckpt_path=...)` is loaded after `setup`.
            if self.audited_epochs:
                rank_zero_info(
                    f"SASAuditCallback: a new Trainer; the audit starts a new history (the previous run's "
                    f"{len(self.audited_epochs)} audit(s) are not carried over)."
                )
            self._reset_run()
        self._run_trainer = weakref.ref(trainer)

    def _reset_run(self) -> None:
        """Forget what a previous ``fit`` audited (probes are chosen again at the next train start)."""
        self.probes = None
        self.manifest, self.alerts, self.verdicts = [], [], []
        self.audited_epochs, self.probe_changes, self.history = [], [], []
        self.sanity = None
        self._cannot_tell_warned = set()
        self._previous_maps, self._previous_masks = {}, {}
        self._loaded_manifest = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The validation dataloaders exist from here on (and a resumed manifest is loaded), and
        # no training step has run yet: the last moment to refuse a bad configuration. A bad
        # probe set is a configuration error and fails here; writing the manifest is audit
        # work and follows `on_error`.
        if self.probes is None:
            with isolate_rng():
                self.probes = select_probes(trainer, pl_module, self._probe_request())
            with self._failures_reported("while recording the probe set"):
                self._check_manifest(trainer)
            with self._failures_reported("could not estimate its cost"), isolate_rng():
                self._estimate_cost(trainer, pl_module)
            with self._failures_reported("could not locate its Grad-CAM layer"), isolate_rng():
                self._record_layers(trainer, pl_module)

    def _probe_request(self) -> ProbeRequest:
        return ProbeRequest(
            probe=self.probe,
            probe_count=self.probe_count,
            seed=self.seed,
            keys=self.item_keys,
            batch_hooks=self.batch_hooks,
            mean=self.mean,
            std=self.std,
            target=self.target,
            output=self.output,
            resumed=self._loaded_manifest,
        )

    def _record_layers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say which layer each Grad-CAM explains (text ``audit/<method>/layer``; kept in :attr:`layers`).

        A given layer that is not in the model fails here, before any training step, with the
        nearest valid names; the automatic choice is located once and reused by the audits.
        """
        grad_cams = {name: method for name, method in self.methods.items() if isinstance(method, GradCAM)}
        if not grad_cams or self.probes is None:
            return
        images = trainer.precision_plugin.convert_input(self.probes.images[:2].to(pl_module.device))
        with attribution_mode(pl_module) as model, trainer.precision_plugin.forward_context():
            classifier = ClassifierOutput.wrap(model, self.output)
            for name, method in grad_cams.items():
                try:
                    self.layers[name] = method.layer_name(classifier, images)
                except ValueError as error:
                    if method.target_layer is None:
                        raise  # the automatic search failed: audit work, reported per `on_error`
                    # A given layer is only looked up: a name not in the model is a configuration error.
                    raise MisconfigurationException(f"SASAuditCallback: method {name!r}: {error}") from error
        for name, layer in self.layers.items():
            how = "given" if grad_cams[name].target_layer is not None else "chosen automatically"
            self._write_text(trainer, f"audit/{name}/layer", f"{name} explains the layer `{layer}` ({how}).")

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
                # Drift and warm starts against other images would be meaningless.
                self._previous_maps, self._previous_masks = {}, {}
                self.manifest = manifest
                self._write_text(trainer, "audit/probe_change", message)
        self.manifest = manifest
        self._write_manifest(trainer)

    def _audit_passes(self, num_probes: int) -> dict[str, tuple[int, bool]]:
        """The passes of the next audit: with the sanity check while it has not run yet."""
        return audit_passes(
            self.methods,
            num_probes,
            faithfulness_steps=None if self.faithfulness is None else self.faithfulness.steps,
            intervention_trials=None if self.artifacts is None else self.artifacts.trials,
            sanity_stages=self.sanity_stages if self.sanity is None else 0,
        )

    def _estimate_cost(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say what an audit will cost before the first one is paid for, and warn if it is a lot."""
        if self.probes is None or self.cost_warning_share is None:
            return
        images = trainer.precision_plugin.convert_input(self.probes.images[:TIMED_PROBES].to(pl_module.device))
        per_rank = math.ceil(len(self.probes) / trainer.world_size)
        with trainer.precision_plugin.forward_context():
            self.cost = estimate_audit(pl_module, images, self._audit_passes(per_rank), self.output)
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        batches = trainer.num_training_batches
        training_images = None
        if isinstance(batch_size, int) and isinstance(batches, int | float) and math.isfinite(batches):
            training_images = batches * batch_size * self.every_n_epochs
        self.cost, message, warning = cost_report(self.cost, len(self.probes), training_images, self.cost_warning_share)
        if warning is not None:
            rank_zero_warn(warning)
        self._write_text(trainer, "audit/cost", message)

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
        # Under DDP every rank audits its shard: forwards must be agreed across ranks.
        together = all_ranks_together() if trainer.world_size > 1 else nullcontext()
        with self._failures_reported(f"at epoch {epoch} failed and was skipped"), isolate_rng(), together:
            self._run_audit(trainer, pl_module, epoch)

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

    def _run_audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        started = time.perf_counter()
        with self._progress(trainer, epoch):
            result = self._explain_sharded(trainer, pl_module)
        result.seconds = time.perf_counter() - started
        # Every rank holds the gathered result: bookkeeping and the shortcut decision happen on
        # all of them, so they agree on what was audited and on `should_stop`.
        scalars = audit_scalars(result, self._previous_maps)
        self.audited_epochs.append(epoch)
        self._previous_maps.update({name: maps.detach().cpu() for name, maps in result.maps.items()})
        if self.warm_start_iterations is not None:
            self._previous_masks.update({name: mask.detach().cpu() for name, mask in result.masks.items()})
        self.history.append({"epoch": float(epoch), "step": float(trainer.global_step), **scalars})
        reported = problems(result, self.probes.names if self.probes else [])
        if result.errors and self.on_error == "raise":
            raise RuntimeError("; ".join(reported))
        if reported:
            rank_zero_warn(f"SASAuditCallback: the audit at epoch {epoch} is incomplete: " + "; ".join(reported) + ".")
        if result.sanity is not None:
            self._record_sanity(trainer, result.sanity, epoch)
        # After the sanity check: a method it flags does not vote, from this audit on.
        self._check_shortcut(trainer, result, epoch)
        with self._failures_reported(f"at epoch {epoch} ran but could not be written"):
            self._publish(trainer, result, scalars, epoch, reported)

    def _record_sanity(self, trainer: pl.Trainer, sanity: SanityResult, epoch: int) -> None:
        """Keep the sanity check's outcome, warn about flagged methods, and say it in TensorBoard."""
        self.sanity, warning, text = sanity_report(sanity, epoch)
        if warning is not None:
            rank_zero_warn(warning)
        with self._failures_reported(f"at epoch {epoch} could not write its sanity check"):
            self._write_text(trainer, "audit/sanity", text)

    @contextmanager
    def _progress(self, trainer: pl.Trainer, epoch: int) -> Iterator[None]:
        """A progress bar in model passes on rank 0 (see ``progress_bar``)."""
        show = self.progress_bar if self.progress_bar is not None else trainer.progress_bar_callback is not None
        if not show or not trainer.is_global_zero or self.probes is None:
            yield
            return
        per_rank = math.ceil(len(self.probes) / trainer.world_size)
        total = sum(count for count, _ in self._audit_passes(per_rank).values())
        bar = tqdm(total=total, desc=f"audit (epoch {epoch})", unit="pass", leave=False, dynamic_ncols=True)
        try:
            with reporting(bar.update):
                yield
        finally:
            bar.close()

    def _explain_sharded(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> AuditResult:
        """Each rank explains its share of the probes; everyone gets all results back."""
        probes = self.probes
        if probes is None:
            raise RuntimeError("SASAuditCallback: no probe set was selected before the audit.")
        device, count = pl_module.device, len(probes)
        mine = shard_positions(count, trainer.world_size, trainer.global_rank)
        # Any failure in here raises on every rank: none waits in a collective.
        with failing_together(device, "the audit"):
            # Methods that read the whole probe set (GradientSHAP's background) see all of it,
            # not the rank's shard: the maps do not depend on the number of ranks.
            everything = trainer.precision_plugin.convert_input(probes.images.to(device))
            bound = {
                name: method.bind_probe_set(everything) if hasattr(method, "bind_probe_set") else method
                for name, method in self.methods.items()
            }
            shard = probes.subset(mine).to(device)
            shard.images = trainer.precision_plugin.convert_input(shard.images)
            initial_states = {name: mask[mine].to(device) for name, mask in self._previous_masks.items()}
            with trainer.precision_plugin.forward_context():
                local = explain(
                    pl_module,
                    shard,
                    bound,
                    self.target,
                    initial_states=initial_states,
                    warm_start_iterations=self.warm_start_iterations,
                    output=self.output,
                    artifacts=self.artifacts,
                    faithfulness=self.faithfulness,
                    sanity_stages=self.sanity_stages if self.sanity is None else 0,
                    sanity_seed=self.seed,
                )
        return score(gather_result(local, count, trainer.world_size, pl_module.all_gather), probes.roi)

    @rank_zero_only
    def _publish(
        self, trainer: pl.Trainer, result: AuditResult, scalars: dict[str, float], epoch: int, reported: list[str]
    ) -> None:
        if self.probes is not None:
            self._publisher.publish(trainer.loggers, result, self.probes, scalars, trainer.global_step, epoch, reported)

    # ------------------------------------------------------------------ shortcut alerts

    def _check_shortcut(self, trainer: pl.Trainer, result: AuditResult, epoch: int) -> None:
        if self.alert_rule is None or self.probes is None:
            return
        flagged = (self.sanity or {}).get("flagged") or []
        verdict = decide(result.evidence(sanity_flagged=flagged), self.alert_rule)
        self.verdicts.append(verdict_record(verdict, epoch, trainer.global_step))
        if verdict.status == "cannot tell" and verdict.not_checkable:
            reasons = "; ".join(verdict.not_checkable.values())
            if reasons not in self._cannot_tell_warned:
                self._cannot_tell_warned.add(reasons)
                message = (
                    f"SASAuditCallback: the audit at epoch {epoch} cannot tell whether the model uses a shortcut: "
                    f"{reasons}."
                )
                rank_zero_warn(message)
                with self._failures_reported(f"at epoch {epoch} could not write its verdict"):
                    self._write_text(trainer, "audit/verdict", message)
        if not verdict.alert:
            return
        alert, message = alert_report(
            verdict, result, self.probes.names, epoch, trainer.global_step, self.alert_rule.min_roi_pixels
        )
        first = not self.alerts
        self.alerts.append(alert)
        rank_zero_warn(message)
        if first:
            with self._failures_reported(f"at epoch {epoch} could not write its alert"):
                self._write_text(trainer, "audit/alert", message)
        if self.stop_on_shortcut:
            trainer.should_stop = True

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "alerts": self.alerts,
            "sanity": self.sanity,
            "audited_epochs": self.audited_epochs,
            "probe_changes": self.probe_changes,
            "history": self.history,
            "previous_maps": (
                {name: maps.half() for name, maps in self._previous_maps.items()} if self.checkpoint_maps else {}
            ),
            "previous_masks": self._previous_masks if self.checkpoint_maps else {},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_manifest = list(state_dict.get("manifest", [])) or None
        self.alerts = list(state_dict.get("alerts", []))
        self.sanity = state_dict.get("sanity")
        self.audited_epochs = list(state_dict.get("audited_epochs", []))
        self.probe_changes = list(state_dict.get("probe_changes", []))
        self.history = list(state_dict.get("history", []))
        self._previous_maps = {name: maps.float() for name, maps in state_dict.get("previous_maps", {}).items()}
        self._previous_masks = dict(state_dict.get("previous_masks", {}))
        self.probes = None  # re-read from the dataset at the next train start, then checked

    @rank_zero_only
    def _write_text(self, trainer: pl.Trainer, tag: str, text: str) -> None:
        self._publisher.write_text(trainer.loggers, tag, text, trainer.global_step)

    @rank_zero_only
    def _write_manifest(self, trainer: pl.Trainer) -> None:
        """The manifest, and TensorBoard's chart layout (one chart per score, every method on it)."""
        layout = scalar_layout(
            list(self.methods),
            roi=self.probes is not None and bool(self.probes.roi.any()),
            faithfulness=self.faithfulness is not None,
            intervention=self.artifacts is not None,
        )
        self._publisher.write_manifest(trainer.loggers, self.manifest, layout, trainer.global_step)
