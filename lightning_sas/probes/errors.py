"""The error of probe and artifact folders on disk (:mod:`lightning_sas.probes.folder`,
:mod:`lightning_sas.probes.artifact_folder`, :mod:`lightning_sas.probes.labels`)."""

from __future__ import annotations

__all__ = ["ProbeFolderError"]


class ProbeFolderError(ValueError):
    """A probe folder or labels file that cannot be used; the message names the file and the problem."""
