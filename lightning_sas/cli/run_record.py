"""What identifies a command-line audit in its ``summary.json``: versions, command line, inputs, settings."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lightning_sas.cli.audit_inputs import AuditInputs
    from lightning_sas.methods import AttributionMethod

__all__ = ["run_record"]


def run_record(
    args: argparse.Namespace,
    inputs: AuditInputs,
    model_class: type,
    device: torch.device,
    methods: Mapping[str, AttributionMethod],
    command: list[str],
    checkpoint: Path,
) -> dict[str, Any]:
    """The run's record, copied to the top level of ``summary.json``."""
    import lightning
    import torch

    import lightning_sas

    return {
        "lightning_sas": lightning_sas.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "command": command,
        "checkpoint": str(checkpoint),
        "model": args.model,
        "model_class": model_class.__qualname__,
        "output": args.output,
        "device": str(device),
        "image_size": list(inputs.image_size),
        "channels": args.channels,
        "mean": inputs.mean,
        "std": inputs.std,
        "target": args.target,
        "method_settings": {name: repr(method) for name, method in methods.items()},
    }
