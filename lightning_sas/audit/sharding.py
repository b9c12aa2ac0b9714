"""Split the probes over DDP ranks and gather the ranks' audit results back into one.

Each rank explains a strided shard (:func:`shard_positions`), padded to the same length on
every rank (all-gathers need equal shapes, and every rank must make the same forward calls);
:func:`gather_result` puts the shards' :class:`~lightning_sas.audit.run.AuditResult` back together
in probe order. The gatherer walks the result's fields (``dataclasses.fields``), so a new
per-probe field is gathered without changes here: every tensor whose probe dimension has the
shard's length is per-probe, in a plain field, a dict of them (``maps``), or a nested
dataclass (``FaithfulnessCurves``, ``InterventionResult``, ``SanityResult``). The probe
dimension is the first, except for ``SanityResult.per_probe`` (``[stages, B]``, whose
``similarity`` is recomputed from the gathered values). Anything else is kept from the rank.

Example:
    >>> shard_positions(5, world_size=2, rank=0), shard_positions(5, world_size=2, rank=1)
    ([0, 2, 4], [1, 3, 3])
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from lightning_sas.audit.run import AuditResult, nonfinite_positions
from lightning_sas.trust.sanity import SanityResult, median_over_probes

#: ``all_gather(tensor) -> [world_size, *tensor.shape]``, e.g. ``LightningModule.all_gather``.
AllGather = Callable[[Tensor], Tensor]
Path = tuple[str, ...]

#: Fields whose tensors have the probes in another dimension than the first.
_PROBE_DIM = {(SanityResult, "per_probe"): 1}
#: Summaries recomputed from the gathered values, never gathered.
_RECOMPUTED = {
    SanityResult: lambda sanity: dataclasses.replace(
        sanity, similarity={name: median_over_probes(values) for name, values in sanity.per_probe.items()}
    )
}
#: Probe positions (not tensors): recomputed from the gathered maps, or left to ``score``.
_POSITIONS = ("nonfinite", "flat")
_NOT_GATHERED = (*_POSITIONS, "errors", "seconds", "discovery", "discovery_skipped")
_ELSEWHERE = "FailedOnAnotherRank: "


def shard_positions(count: int, world_size: int, rank: int) -> list[int]:
    """The probe positions rank ``rank`` explains: strided, padded to ``ceil(count / world_size)``.

    Rank ``r`` takes probes ``r, r + world_size, ...``; a shorter shard repeats its last probe
    (a rank without any probe takes probe ``rank % count``), so every rank has as many.

    Raises:
        ValueError: If ``count`` or ``world_size`` is not a positive integer, or ``rank`` is
            not in ``[0, world_size)``.
    """
    for name, value in (("count", count), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"`rank` must be an integer in [0, {world_size}), got {rank!r}.")
    mine = list(range(rank, count, world_size)) or [rank % count]
    return mine + [mine[-1]] * (math.ceil(count / world_size) - len(mine))


def gather_result(local: AuditResult, count: int, world_size: int, all_gather: AllGather) -> AuditResult:
    """Every rank's shard result (see :func:`shard_positions`) as one result over all probes.

    Call it on every rank, with the same arguments but ``local``. Parts present on some ranks
    only (or with other shapes) are dropped on all of them, with an ``errors`` entry (after
    :func:`~lightning_sas.audit.run.explain`'s agreement this does not happen, but no rank ever
    waits for another). ``errors`` are merged over the ranks (a rank's own error is kept over
    another rank's "failed on another rank"). The result is unscored: call
    :func:`~lightning_sas.audit.run.score` with all probes' ROIs.

    Args:
        local: This rank's :func:`~lightning_sas.audit.run.explain` result on its shard.
        count: The number of probes over all ranks.
        world_size: The number of ranks.
        all_gather: Gathers a tensor from every rank: ``[world_size, *shape]``.

    Returns:
        The result for probes ``0 .. count - 1``, in order; ``seconds`` is this rank's.

    Raises:
        ValueError: If ``local`` does not hold one shard's probes.
    """
    per_rank = len(shard_positions(count, world_size, 0))
    if int(local.predictions.shape[0]) != per_rank:
        raise ValueError(
            f"`local` must hold one shard of {per_rank} probe(s) ({count} probes over {world_size} ranks), "
            f"got {int(local.predictions.shape[0])}."
        )
    if world_size == 1:
        return local
    device = local.predictions.device
    leaves = dict(_leaves(local, (), 0, per_rank))
    described = {"leaves": [[list(path), *_shape(leaf, dim)] for path, (leaf, dim) in leaves.items()]}
    everyone = _gather_json({**described, "errors": local.errors}, all_gather, world_size, device)
    common, dropped = _agreed_leaves(local, [entry["leaves"] for entry in everyone])
    order = _probe_order(count, world_size, per_rank, device)
    gathered = {path: _gather_leaf(*leaves[path], all_gather, order) for path in common}
    errors = _merged_errors([entry["errors"] for entry in everyone], dropped)
    rebuilt = {
        item.name: _rebuild(getattr(local, item.name), (item.name,), gathered, dropped)
        for item in dataclasses.fields(local)
        if item.name not in _NOT_GATHERED
    }
    for name, value in rebuilt.items():
        if value is _DROPPED and _required(local, name):
            raise RuntimeError(f"the ranks' audit results cannot be gathered: `{name}` differs between ranks.")
    values = {name: (None if value is _DROPPED else value) for name, value in rebuilt.items()}
    nonfinite = {name: nonfinite_positions(maps) for name, maps in values["maps"].items()}
    return dataclasses.replace(local, **values, errors=errors, nonfinite=nonfinite, flat={})


# ---------------------------------------------------------------------------- helpers

_DROPPED = object()


def _leaves(value: Any, path: Path, dim: int, per_rank: int) -> Iterator[tuple[Path, tuple[Tensor, int]]]:
    """``(path, (tensor, probe dimension))`` of every per-probe tensor in ``value``."""
    if isinstance(value, Tensor):
        if value.dim() > dim and value.shape[dim] == per_rank:
            yield path, (value, dim)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)), dim, per_rank)  # the field's probe dimension
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            if path or item.name not in _NOT_GATHERED:
                inner = _PROBE_DIM.get((type(value), item.name), 0)
                yield from _leaves(getattr(value, item.name), (*path, item.name), inner, per_rank)


def _shape(leaf: Tensor, dim: int) -> list[Any]:
    """What must match across ranks: the other dimensions, the dtype and the probe dimension."""
    return [[size for axis, size in enumerate(leaf.shape) if axis != dim], str(leaf.dtype), dim]


def _part(local: AuditResult, path: Path) -> Path:
    """The unit that is gathered or dropped whole: a dict field's entry, else the field."""
    return path[:2] if isinstance(getattr(local, path[0]), dict) and len(path) > 1 else path[:1]


def _agreed_leaves(local: AuditResult, described: list[list[list[Any]]]) -> tuple[list[Path], set[Path]]:
    """``(leaves to gather, in the same order on every rank; parts dropped everywhere)``."""
    per_rank = [{json.dumps(entry) for entry in leaves} for leaves in described]
    everywhere = set.intersection(*per_rank)
    anywhere = set.union(*per_rank)
    dropped = {_part(local, tuple(json.loads(entry)[0])) for entry in anywhere - everywhere}
    # A method without maps has no masks, curves, ... either.
    methods = {part[1] for part in dropped if part[0] == "maps"}
    dropped |= {
        (item.name, method)
        for item in dataclasses.fields(local)
        for method in methods
        if isinstance(getattr(local, item.name), dict)
    }
    kept = sorted(entry for entry in everywhere if _part(local, tuple(json.loads(entry)[0])) not in dropped)
    return [tuple(json.loads(entry)[0]) for entry in kept], dropped


def _gather_json(value: Any, all_gather: AllGather, world_size: int, device: torch.device) -> list[Any]:
    """``value`` (JSON data) from every rank: two all-gathers (the lengths, the padded bytes)."""
    data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8, device=device)
    lengths = all_gather(torch.tensor([data.numel()], device=device)).reshape(world_size).tolist()
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    rows = all_gather(padded).reshape(world_size, -1).cpu()
    return [json.loads(bytes(row[:length].tolist()).decode()) for row, length in zip(rows, lengths, strict=True)]


def _probe_order(count: int, world_size: int, per_rank: int, device: torch.device) -> Tensor:
    """For probe ``p``, where it is in the gathered ``[world_size * per_rank]`` rows."""
    positions = [p for rank in range(world_size) for p in shard_positions(count, world_size, rank)]
    first = {}
    for row, position in enumerate(positions):
        first.setdefault(position, row)
    return torch.tensor([first[p] for p in range(count)], device=device)


def _gather_leaf(leaf: Tensor, dim: int, all_gather: AllGather, order: Tensor) -> Tensor:
    """One per-probe tensor from every rank, in probe order, on the leaf's device and dtype."""
    # Bool through uint8: not every backend gathers bool.
    sent = leaf.movedim(dim, 0).to(device=order.device, dtype=torch.uint8 if leaf.dtype == torch.bool else None)
    everyone = all_gather(sent.contiguous())
    rows = everyone.reshape(-1, *sent.shape[1:])[order]
    return rows.to(device=leaf.device, dtype=leaf.dtype).movedim(0, dim)


def _merged_errors(per_rank: list[dict[str, str]], dropped: set[Path]) -> dict[str, str]:
    """Every rank's errors (a rank's own message wins over "failed on another rank"), and one per
    dropped part: a method's maps under the method's name, any other part under its field's."""
    merged: dict[str, str] = {}
    for errors in per_rank:
        for part, message in errors.items():
            if part not in merged or (merged[part].startswith(_ELSEWHERE) and not message.startswith(_ELSEWHERE)):
                merged[part] = message
    methods = {part[1] for part in dropped if part[0] == "maps"}
    for part in sorted(dropped):
        if part[0] != "maps" and len(part) == 2 and part[1] in methods:
            continue  # went with the method's maps: reported once, under the method
        name = part[1] if part[0] == "maps" else part[0]
        merged.setdefault(name, f"{'/'.join(part)} could not be gathered: missing or different on another rank")
    return merged


def _rebuild(value: Any, path: Path, gathered: dict[Path, Tensor], dropped: set[Path]) -> Any:
    """``value`` with its per-probe tensors replaced by the gathered ones (``_DROPPED`` if dropped)."""
    if path in dropped:
        return _DROPPED
    if isinstance(value, Tensor):
        return gathered.get(path, value)  # not per-probe: this rank's
    if isinstance(value, dict):
        items = {key: _rebuild(item, (*path, str(key)), gathered, dropped) for key, item in value.items()}
        return {key: item for key, item in items.items() if item is not _DROPPED}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            item.name: _rebuild(getattr(value, item.name), (*path, item.name), gathered, dropped)
            for item in dataclasses.fields(value)
        }
        rebuilt = dataclasses.replace(value, **changes)
        recompute = _RECOMPUTED.get(type(value))
        return recompute(rebuilt) if recompute is not None else rebuilt
    return value


def _required(local: AuditResult, name: str) -> bool:
    """Whether the field has no default (it cannot be left out)."""
    item = next(item for item in dataclasses.fields(local) if item.name == name)
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
