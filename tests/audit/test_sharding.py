"""Shard the probes, gather the shards' audit results: the same as one process on all probes.

The "ranks" are threads of this process whose ``all_gather`` stacks what each thread sends (a
barrier with a timeout: a rank that would wait for ever fails the test instead).
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pytest
import torch
from ddp_sharding_script import COUNT, Flaky, audit_settings, make_probes
from torch import Tensor

from lightning_sas.audit.run import AuditResult, explain, score
from lightning_sas.audit.sharding import gather_result, shard_positions


class ThreadRanks:
    """``world_size`` threads that all-gather by stacking what each one sends."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=20)
        self.sent: list[Tensor | None] = [None] * world_size

    def all_gather(self, rank: int):
        def gather(tensor: Tensor) -> Tensor:
            self.sent[rank] = tensor.clone()
            self.barrier.wait()
            stacked = torch.stack(self.sent)  # type: ignore[arg-type]
            self.barrier.wait()  # nobody sends the next tensor before everyone has this one
            return stacked

        return gather

    def gather(self, shards: list[AuditResult], count: int) -> list[AuditResult]:
        with ThreadPoolExecutor(self.world_size) as pool:
            futures = [
                pool.submit(gather_result, shard, count, self.world_size, self.all_gather(rank))
                for rank, shard in enumerate(shards)
            ]
            return [future.result(timeout=60) for future in futures]


@pytest.fixture(scope="module")
def audit() -> dict:
    """One process on all probes, and each 'rank' of 2 and of 3 on its shard (not gathered yet)."""
    model, probes = Flaky().eval(), make_probes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SaS's advice on these tiny random logits
        whole = score(explain(model, probes, **audit_settings(model, None)), probes.roi)
        shards = {
            world_size: [
                explain(model, probes.subset(shard_positions(COUNT, world_size, rank)), **audit_settings(model, None))
                for rank in range(world_size)
            ]
            for world_size in (2, 3)
        }
    return {"probes": probes, "whole": whole, "shards": shards}


def assert_same_audit(result: AuditResult, expected: AuditResult) -> None:
    close = {"atol": 1e-5, "rtol": 1e-5}
    assert expected.intervention is not None and 0 < expected.intervention.flip_rate < 1  # not a trivial audit
    assert len(set(expected.predictions.tolist())) > 1 and len(expected.flat["gradcam"]) < COUNT
    assert result.errors == expected.errors == {}
    assert set(result.maps) == set(expected.maps) == {"sas", "gradcam", "gradientshap"}
    for name in expected.maps:
        torch.testing.assert_close(result.maps[name], expected.maps[name], **close)
        torch.testing.assert_close(result.roi_share[name], expected.roi_share[name], **close, equal_nan=True)
        torch.testing.assert_close(result.faithfulness[name].deletion, expected.faithfulness[name].deletion, **close)
        torch.testing.assert_close(result.faithfulness[name].insertion, expected.faithfulness[name].insertion, **close)
    torch.testing.assert_close(result.masks["sas"], expected.masks["sas"], **close)
    for field in ("predictions", "targets", "confidences", "logits"):
        torch.testing.assert_close(getattr(result, field), getattr(expected, field), **close)
    assert result.intervention is not None and expected.intervention is not None
    for part in ("eligible", "flipped", "probability_change"):
        torch.testing.assert_close(getattr(result.intervention, part), getattr(expected.intervention, part), **close)
    assert result.intervention.flip_rate == pytest.approx(expected.intervention.flip_rate)
    assert result.sanity is not None and expected.sanity is not None
    for name, per_probe in expected.sanity.per_probe.items():
        torch.testing.assert_close(result.sanity.per_probe[name], per_probe, **close, equal_nan=True)
        torch.testing.assert_close(result.sanity.similarity[name], expected.sanity.similarity[name], **close)
    means, expected_means = result.mean_scores(), expected.mean_scores()
    assert set(means) == set(expected_means)
    for name, scores in expected_means.items():
        assert means[name] == pytest.approx(scores, abs=1e-5), name
    assert result.nonfinite == expected.nonfinite and result.flat == expected.flat


def test_shards_are_strided_and_padded_to_the_same_length() -> None:
    assert [shard_positions(5, 2, rank) for rank in range(2)] == [[0, 2, 4], [1, 3, 3]]
    assert [shard_positions(2, 3, rank) for rank in range(3)] == [[0], [1], [0]]  # more ranks than probes
    assert shard_positions(4, 1, 0) == [0, 1, 2, 3]
    for arguments, message in (((0, 2, 0), "`count` must be a positive integer, got 0"), ((3, 2, 2), r"`rank`")):
        with pytest.raises(ValueError, match=message):
            shard_positions(*arguments)


@pytest.mark.parametrize("world_size", [2, 3])
def test_gathered_shards_are_the_one_process_audit(audit: dict, world_size: int) -> None:
    gathered = ThreadRanks(world_size).gather(audit["shards"][world_size], COUNT)
    for result in gathered:  # every rank holds the whole result
        assert result.predictions.shape == (COUNT,) and result.sanity is not None
        assert result.sanity.per_probe["sas"].shape == (2, COUNT)
        assert_same_audit(score(result, audit["probes"].roi), audit["whole"])


def test_a_part_missing_on_one_rank_is_dropped_on_every_rank_without_waiting(audit: dict) -> None:
    first, second = (replace_parts(shard) for shard in audit["shards"][2])
    second.maps.pop("gradcam")  # as if Grad-CAM had failed on rank 1 only
    second.faithfulness.pop("gradcam")
    second.intervention = None
    first.errors["sas"] = "FailedOnAnotherRank: sas failed on another rank"
    second.errors["sas"] = "RuntimeError: rank 1's own error"
    gathered = ThreadRanks(2).gather([first, second], COUNT)
    for result in gathered:
        assert set(result.maps) == set(result.faithfulness) == {"sas", "gradientshap"} and result.intervention is None
        assert result.errors["sas"] == "RuntimeError: rank 1's own error"  # the real error, on every rank
        assert set(result.errors) == {"sas", "gradcam", "intervention"}  # Grad-CAM's curves went with its maps
        assert result.errors["gradcam"] == "maps/gradcam could not be gathered: missing or different on another rank"
        assert "could not be gathered" in result.errors["intervention"]
        torch.testing.assert_close(result.maps["sas"], audit["whole"].maps["sas"], atol=1e-5, rtol=1e-5)


def test_a_new_per_probe_field_is_gathered_without_changing_the_gatherer(audit: dict) -> None:
    @dataclass
    class Extended(AuditResult):
        difficulty: Tensor | None = None
        per_method: dict[str, Tensor] | None = None

    shards = []
    for rank, shard in enumerate(audit["shards"][2]):
        positions = torch.tensor(shard_positions(COUNT, 2, rank), dtype=torch.float32)
        fields = {name: getattr(shard, name) for name in AuditResult.__dataclass_fields__}
        per_method = {"sas": positions[:, None] * torch.tensor([1.0, -1.0])}
        shards.append(Extended(**fields, difficulty=positions * 10, per_method=per_method))
    for result in ThreadRanks(2).gather(shards, COUNT):
        assert isinstance(result, Extended)
        assert result.difficulty.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
        assert result.per_method["sas"][:, 1].tolist() == [0.0, -1.0, -2.0, -3.0, -4.0]


def test_a_local_result_that_is_not_one_shard_is_refused(audit: dict) -> None:
    with pytest.raises(ValueError, match=r"`local` must hold one shard of 3 probe\(s\) \(5 probes over 2 ranks\)"):
        gather_result(audit["whole"], COUNT, 2, lambda tensor: tensor[None])


def replace_parts(result: AuditResult) -> AuditResult:
    """A shallow copy whose dicts can be changed without touching the fixture."""
    return replace(result, maps=dict(result.maps), faithfulness=dict(result.faithfulness), errors=dict(result.errors))
