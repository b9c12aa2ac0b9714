"""Real 2-process gloo runs: the ranks agree on chunks, retries and failures, and a sharded audit
is the audit of one process.

A model whose forward holds a collective deadlocks unless every rank makes the same forward calls.
Each rank asks SaS for a different ``max_batch``; inside ``all_ranks_together()`` they agree on the
smallest, so both finish, with the maps a single process computes with that chunk. An error on one
rank is agreed too: no rank waits for a rank that failed. Each run is under a deadline, so a
deadlock fails the test instead of blocking it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from ddp_agreement_script import ITERATIONS, NUM_MASKS, make_model, probe_images
from ddp_sharding_script import Flaky, audit_settings, make_probes, plain

from lightning_sas.audit.run import explain, score
from lightning_sas.methods import SaS

SCRIPT = Path(__file__).resolve().parents[1] / "ddp_agreement_script.py"
SHARDING_SCRIPT = Path(__file__).resolve().parents[1] / "ddp_sharding_script.py"
WORLD_SIZE = 2
DEADLINE_SECONDS = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(out: Path, script: Path = SCRIPT, saved: str = "rank") -> list[dict]:
    """Start one process per rank; a rank still running after the deadline is a deadlock."""
    port = str(free_port())
    python_path = os.pathsep.join(filter(None, [str(SCRIPT.parent), os.environ.get("PYTHONPATH")]))
    processes = []
    for rank in range(WORLD_SIZE):
        environment = {
            **os.environ,
            "PYTHONPATH": python_path,
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD_SIZE),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(out)],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + DEADLINE_SECONDS
    outputs = []
    try:
        for rank, process in enumerate(processes):
            try:
                output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {rank} still running after {DEADLINE_SECONDS} s: the ranks deadlocked")
            outputs.append(output)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output[-3000:]}"
    return [torch.load(out / f"{saved}{rank}.pt") for rank in range(WORLD_SIZE)]


def require_gloo() -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")


def test_ranks_agree_on_chunks_and_retries(tmp_path: Path) -> None:
    require_gloo()
    results = run_ranks(tmp_path)
    items = 2 * (NUM_MASKS - 1) * 2  # images x interior masks x {insertion, deletion}, per iteration

    # A collective in forward; rank r asked for max_batch=2+r: both forwarded in chunks of 2.
    collective = [result["collective"] for result in results]
    agreed = [4 // 2] * 2 + [2] * (ITERATIONS * items // 2)  # reference forward (images + baselines), then the loop
    assert collective[0]["batch_sizes"] == collective[1]["batch_sizes"] == agreed

    # Only rank 1 ran out of memory (chunk 4); both ranks retried with chunk 2 and ended alike.
    out_of_memory = [result["out_of_memory"] for result in results]
    for rank, result in enumerate(out_of_memory):
        assert result["warnings"] == ["SaS ran out of memory; retrying with max_batch=2."], rank
        final_attempt = 2 + ITERATIONS * items // 2
        assert result["batch_sizes"][-final_attempt:] == [2] * final_attempt, rank
        assert 4 in result["batch_sizes"][:-final_attempt], rank  # the first attempt, with chunk 4
    assert out_of_memory[0]["batch_sizes"] != out_of_memory[1]["batch_sizes"]  # rank 1's failed early

    # Each rank's maps are the ones a single process computes for its images with chunk 2.
    for rank, result in enumerate(results):
        images, targets = probe_images(rank)
        expected = SaS(iterations=ITERATIONS, num_masks=NUM_MASKS, max_batch=2).attribute(make_model(), images, targets)
        for scenario in ("collective", "out_of_memory"):
            maps = result[scenario]["maps"]
            assert maps.shape == (2, 16, 16) and bool(torch.isfinite(maps).all())
            torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0, msg=f"rank {rank}, {scenario}")

    # A non-out-of-memory error on rank 1 inside SaS's chunked attempt: agreed before it is raised.
    assert results[1]["error"] == "ValueError: broken forward: batch of 4 does not fit"
    assert results[0]["error"] == "FailedOnAnotherRank: SaS failed on another rank"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both ranks' gathered audits, and one process's audit of all probes."""
    require_gloo()
    ranks = run_ranks(tmp_path_factory.mktemp("sharding"), SHARDING_SCRIPT, "sharding")
    model, probes = Flaky().eval(), make_probes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SaS's advice on these tiny random logits
        whole = plain(score(explain(model, probes, **audit_settings(model, None)), probes.roi))
    return {"ranks": ranks, "whole": whole}


def assert_close_results(result: dict, expected: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        message = f"{key} differs from the one-process audit"
        torch.testing.assert_close(result[key], expected[key], atol=1e-5, rtol=1e-5, equal_nan=True, msg=message)


def test_a_sharded_audit_over_two_ranks_is_the_one_process_audit(sharded: dict) -> None:
    whole = sharded["whole"]
    assert whole["flip_rate"] is not None and 0 < whole["flip_rate"] < 1  # the intervention flips some
    for rank, result in enumerate(ranks["sharded"] for ranks in sharded["ranks"]):
        assert result["errors"] == {}, rank
        assert set(result["maps"]) == {"sas", "gradcam", "gradientshap"}, rank
        keys = ("maps", "masks", "predictions", "logits", "roi_share", "deletion", "probability_change", "sanity")
        assert_close_results(result, whole, keys)
        assert result["flip_rate"] == pytest.approx(whole["flip_rate"]), rank
        assert set(result["mean_scores"]) == set(whole["mean_scores"]), rank
        for name, scores in whole["mean_scores"].items():
            assert result["mean_scores"][name] == pytest.approx(scores, abs=1e-5), (rank, name)


def test_a_part_failing_on_one_rank_fails_on_both_and_the_rest_stands(sharded: dict) -> None:
    whole = sharded["whole"]
    for rank, result in enumerate(ranks["failing"] for ranks in sharded["ranks"]):
        # Rank 1's own errors, on both ranks (rank 0 raised "failed on another rank" at the same points).
        assert result["errors"] == {
            "fragile": "ValueError: fragile fails on this rank",
            "faithfulness": "RuntimeError: injected fault",
        }, rank
        assert set(result["maps"]) == {"sas", "gradcam", "gradientshap"} and result["deletion"] == {}, rank
        assert_close_results(result, whole, ("maps", "masks", "predictions", "roi_share", "probability_change"))
        assert result["flip_rate"] == pytest.approx(whole["flip_rate"]), rank
