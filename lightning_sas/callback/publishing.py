"""Publishing one audit through the Trainer's loggers: scalars first, then text, pictures, raw maps.

Every part is tried even when another fails (the failures come back as one
:class:`~lightning_sas.loggers.writing.AuditWriteError`); tags carry the audit's ``name``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_warn

from lightning_sas.audit.run import AuditResult
from lightning_sas.loggers.content import audit_captions, discovery_markdown, render_audit, retag, retag_layout
from lightning_sas.loggers.writing import (
    AuditWriteError,
    describe_error,
    write_layout,
    write_manifest,
    write_pictures,
    write_raw_maps,
    write_scalars,
    write_text,
)
from lightning_sas.probes.probe_set import Probes


class Publisher:
    """Writes an audit named ``name`` (the tag prefix) to loggers; warns once per logger without files.

    Args:
        name: The audit's name (``"audit"``: tags ``audit/...``).
        mean: The input normalisation's mean, to show images in true colour.
        std: Its standard deviation.
        class_names: Names of the classes, for the pictures' labels.
    """

    def __init__(
        self,
        name: str,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        class_names: Sequence[str] | None,
    ) -> None:
        self.name, self.mean, self.std, self.class_names = name, mean, std, class_names
        self._warned: set[int] = set()

    @property
    def raw_maps_folder(self) -> str:
        return "audits" if self.name == "audit" else f"audits/{self.name}"

    def publish(
        self,
        loggers: Sequence[Logger],
        result: AuditResult,
        probes: Probes,
        scalars: Mapping[str, float],
        step: int,
        epoch: int,
        reported: Sequence[str],
    ) -> None:
        """Scalars, the problems, the pictures and the raw maps of one audit.

        Raises:
            AuditWriteError: After every part was tried, naming each part that failed.
        """
        tagged = {retag(tag, self.name): value for tag, value in scalars.items()}
        # Scalars first: they need no directory and are what the curves and alerts show.
        writes: list[tuple[str, Callable[[], object]]] = [("scalars", lambda: write_scalars(loggers, tagged, step))]
        if reported:
            text = "\n".join(f"- {line}" for line in reported)
            writes.append(("problems", lambda: self.write_text(loggers, "audit/problems", text, step)))
        found = discovery_markdown(result, self.class_names)
        if found is not None:
            writes.append(("discovery", lambda: self.write_text(loggers, "audit/discovery", found, step)))
        writes.append(("pictures", lambda: self._pictures(loggers, result, probes, step, f"epoch {epoch}")))
        writes.append(("raw maps", lambda: write_raw_maps(loggers, epoch, result, probes, self.raw_maps_folder)))
        failures = []
        for what, write in writes:
            try:
                write()
            except Exception as error:  # noqa: BLE001 - the other parts still get written
                failures.append(f"{what}: {describe_error(error)}")
        if failures:
            raise AuditWriteError("; ".join(failures))

    def _pictures(self, loggers: Sequence[Logger], result: AuditResult, probes: Probes, step: int, title: str) -> None:
        rendered = render_audit(result, probes, mean=self.mean, std=self.std, class_names=self.class_names, title=title)
        captions = audit_captions(result, probes, self.class_names, title)
        rendered = {retag(tag, self.name): picture for tag, picture in rendered.items()}
        captions = {retag(tag, self.name): caption for tag, caption in captions.items()}
        self._note_skipped(write_pictures(loggers, rendered, step, captions))

    def write_text(self, loggers: Sequence[Logger], tag: str, text: str, step: int) -> None:
        """Markdown ``text`` under ``tag`` (renamed for this audit)."""
        self._note_skipped(write_text(loggers, retag(tag, self.name), text, step))

    def write_manifest(
        self,
        loggers: Sequence[Logger],
        manifest: Sequence[Mapping],
        layout: Mapping[str, Mapping[str, list]],
        step: int,
    ) -> None:
        """The probe manifest and TensorBoard's chart layout."""
        self._note_skipped(write_manifest(loggers, manifest, step, retag("audit/manifest", self.name)))
        write_layout(loggers, retag_layout(layout, self.name))

    def _note_skipped(self, skipped: Sequence[Logger]) -> None:
        """Warn once per logger that cannot take files (it still gets every scalar)."""
        for logger in skipped:
            if id(logger) not in self._warned:
                self._warned.add(id(logger))
                rank_zero_warn(
                    f"SASAuditCallback: {type(logger).__name__} has no local directory, so the audit's pictures "
                    "and text are not written to it (it still gets every scalar). Add a TensorBoardLogger, "
                    "WandbLogger, MLFlowLogger or a logger with a save_dir to see the heatmaps."
                )
