"""The probe set as data: reading dataset items, the probe set and its manifest (``probe_set``),
probe folders on disk (``folder``, ``labels``, ``artifact_folder``, ``images``, ``errors``), a probe
folder as a Dataset for the training callback (``folder_dataset``), the manifest a checkpoint
recorded (``checkpoint_manifest``), exporting a Dataset to a probe folder (``export``,
``export_artifacts``, ``export_folder``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ProbeFolderDataset"]

if TYPE_CHECKING:
    from lightning_sas.probes.folder_dataset import ProbeFolderDataset

# Imported on first use (PEP 562): the command line imports probe modules without torch.
_LAZY = {"ProbeFolderDataset": "lightning_sas.probes.folder_dataset"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_sas.probes' has no attribute {name!r}")
