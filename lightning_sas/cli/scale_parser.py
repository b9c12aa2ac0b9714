"""The options of ``lightning-sas audit`` for nightly jobs at scale: several checkpoints (the gate),
several processes (Lightning Fabric) and the result cache (:mod:`lightning_sas.nightly`)."""

from __future__ import annotations

import argparse

from lightning_sas.cli.options import devices_count, positive_int

__all__ = ["add_scale_options"]


def add_scale_options(group: argparse._ArgumentGroup) -> None:
    """Several checkpoints (the gate), several processes (Lightning Fabric) and the result cache."""
    group.add_argument(
        "--gate",
        choices=("any", "last"),
        default="any",
        help="with several checkpoints: exit 1 when the alert rule fires on any of them (any, default) or only "
        "on the last by training step (last), e.g. --gate last. An audit that fails still exits 2.",
    )
    group.add_argument(
        "--accelerator",
        default=None,
        metavar="NAME",
        help="Lightning Fabric's accelerator for several processes: cpu, cuda, gpu or auto, e.g. --accelerator "
        "cuda (default: as --device).",
    )
    group.add_argument(
        "--devices",
        type=devices_count,
        default=1,
        metavar="N",
        help="processes on this node, one per device, launched with Lightning Fabric (or started by torchrun / "
        "srun), e.g. --devices 4 (-1: every GPU; default: 1). Checkpoints and probes are shared out between them; "
        "the result is the one process's.",
    )
    group.add_argument(
        "--num-nodes",
        type=positive_int,
        default=1,
        metavar="N",
        help="nodes of the job (torchrun / SLURM start the processes on each), e.g. --num-nodes 2 (default: 1). "
        "--out and the cache must be on a file system every node sees.",
    )
    group.add_argument(
        "--strategy",
        default=None,
        metavar="NAME",
        help="Lightning Fabric's strategy for several processes, e.g. --strategy ddp (default: ddp).",
    )
    group.add_argument(
        "--cache",
        metavar="DIR",
        help="where finished audits are kept by content (checkpoint, probes, settings, versions): a re-run over "
        "unchanged checkpoints reuses them and a job killed half-way resumes, e.g. --cache /shared/sas-cache "
        "(default: $LIGHTNING_SAS_CACHE, else ~/.cache/lightning_sas/audits).",
    )
    group.add_argument(
        "--no-cache",
        action="store_true",
        help="audit every checkpoint again and keep nothing in the cache, e.g. after changing code the key does "
        "not see (a helper module of the model).",
    )
