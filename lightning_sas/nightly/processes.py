"""Several processes, devices and nodes for one audit job, with Lightning Fabric.

``lightning-sas audit --devices 2`` launches the processes itself (Fabric's launcher starts the
same command again per device); under ``torchrun``, SLURM (``srun``) or ``fabric run`` the
launcher has started them already and Fabric only joins them. Every process reads the same
inputs; rank 0 decides which checkpoints still need an audit (the cache's misses, so all ranks
work from one list even while entries appear), and :func:`share_work` splits them:

* ``world_size`` at a time, one per rank: each rank audits whole checkpoints on its own (no
  collectives, the fastest split);
* the remainder (fewer than ``world_size``), one at a time by all ranks together, each rank
  explaining a share of the probes (:func:`~lightning_sas.audit.sharded_run.explain_on_every_rank`).

Either way a checkpoint's audit is the one a single process makes; rank 0 writes the combined
results once every rank is done.

Example:
    >>> share_work(list("abcde"), world_size=2, rank=1)
    (['b', 'd'], ['e'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from lightning.fabric import Fabric

    from lightning_sas.audit.sharded_run import Ranks

__all__ = ["Processes", "launched_by_a_launcher", "share_work", "start_processes"]

Item = TypeVar("Item")

#: Environment variables through which a launcher (torchrun, SLURM, Fabric's own) tells a process its place.
_LAUNCHER_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS")


def share_work(items: Sequence[Item], world_size: int, rank: int) -> tuple[list[Item], list[Item]]:
    """``(this rank's own items, items for all ranks together)``: ``world_size`` at a time, one per
    rank, in order; the last ``len(items) % world_size`` together."""
    alone = len(items) - len(items) % world_size
    return list(items[rank:alone:world_size]), list(items[alone:])


def launched_by_a_launcher() -> bool:
    """Whether a launcher started this process as one of several (torchrun, SLURM with several tasks)."""
    return any(int(os.environ.get(name, "1") or "1") > 1 for name in _LAUNCHER_VARIABLES)


@dataclass
class Processes:
    """The processes of one audit job: one (``fabric is None``) or a Fabric group."""

    fabric: Fabric | None = None

    @property
    def world_size(self) -> int:
        return 1 if self.fabric is None else self.fabric.world_size

    @property
    def rank(self) -> int:
        return 0 if self.fabric is None else self.fabric.global_rank

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that decides, prints and writes the combined results."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """This process's device under Fabric; ``None`` for one process (``--device`` decides)."""
        return None if self.fabric is None else self.fabric.device

    def ranks(self, device: torch.device) -> Ranks:
        """The processes as the sharded audit sees them (all of them explain one checkpoint together)."""
        from lightning_sas.audit.sharded_run import Ranks

        if self.fabric is None:
            return Ranks(1, 0, lambda tensor: tensor.unsqueeze(0), device)
        return Ranks(self.world_size, self.rank, _all_gather, device, self.fabric.strategy.precision)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        return value if self.fabric is None else self.fabric.broadcast(value, src=0)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a picklable object), in rank order, on every rank."""
        if self.fabric is None:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.fabric is not None:
            self.fabric.barrier()

    def close(self) -> None:
        """Leave the process group, so that its communication threads do not outlive the
        interpreter's teardown (which aborts the process, status -6, at random)."""
        import torch.distributed as dist

        if self.fabric is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def start_processes(
    accelerator: str, devices: str | int, num_nodes: int, strategy: str | None, *, own_command: bool
) -> Processes:
    """One process, or a Fabric group when more than one device, node or a launcher asks for it.

    Args:
        accelerator: Fabric's ``accelerator`` (``cpu``, ``cuda``, ``gpu``, ``auto``, ...).
        devices: Fabric's ``devices`` (a count, ``-1``, ``"auto"`` or a list such as ``"0,1"``).
        num_nodes: Fabric's ``num_nodes``.
        strategy: Fabric's ``strategy``; ``None``: ``ddp`` for several processes.
        own_command: Whether this process was started by the command line itself (``sys.argv`` is
            the audit's command), so that Fabric's launcher can start it again per device.

    Raises:
        ValueError: If Fabric refuses the combination (its message), or the processes would have
            to be launched from a caller whose command line is not the audit's.
    """
    several = str(devices) not in ("1", "auto") or num_nodes > 1 or strategy is not None or launched_by_a_launcher()
    if not several:
        return Processes()
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy or "auto")
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        raise ValueError(" ".join(str(error).split())) from None
    if fabric.world_size > 1 and not launched_by_a_launcher() and not own_command:
        raise ValueError(
            "several processes are started by running the command again per device, so they must be launched "
            "from the command line (lightning-sas audit ..., or torchrun), not from main() inside another program"
        )
    fabric.launch()
    return Processes(fabric)


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``[world_size, *tensor.shape]``: every rank's ``tensor`` (no autograd: maps are results, not losses)."""
    import torch
    import torch.distributed as dist

    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.stack(gathered)
