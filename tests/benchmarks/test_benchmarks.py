"""Benchmarks: the naive per-image SaS computes the same maps as the batched one; the speed CLI runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:  # `benchmarks` lives next to `tests`, outside the package
    sys.path.insert(0, str(REPOSITORY))

from models import SmallCNN

from benchmarks import sas_speed
from benchmarks.naive_sas import NaiveSaS
from lightning_sas.methods import SaS
from lightning_sas.scores.metrics import spearman


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Batch-1 forwards of tiny models gain nothing from intra-op threads, and on a shared
    machine the threads' spin-waiting makes the naive version tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("objective", ["scale_free", "paper"])
def test_naive_and_batched_sas_agree_in_rank_order(objective: str) -> None:
    """Same algorithm, two implementations: per-image/bisection/OpenCV/torch.optim.Adam vs batched.

    48 px: the scaled blur kernel is 11, where OpenCV's sigma=0 kernel and the batched
    Gaussian are the same (OpenCV uses fixed binomial kernels for sizes <= 9).
    """
    model = SmallCNN(num_classes=4, channels=4)
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([1, 3])
    batched = SaS.paper(iterations=10, seed=5, objective=objective).attribute(model, images, targets)
    naive_sas = NaiveSaS(iterations=10, seed=5, objective=objective)
    naive = naive_sas.attribute(model, images, targets)
    assert naive.shape == batched.shape == (2, 48, 48)
    # README: "The two agree in rank order (Spearman ≥ 0.99999 between their maps)"; benchmarks/README:
    # "Spearman ≈ 1.0 after 10 iterations on a small CNN at 48 px" (1 - 1.2e-7 measured here).
    assert spearman(naive, batched).min().item() >= 0.99999
    assert naive_sas.forwards == 2 * (2 + 10 * 2 * 19)  # reference forwards + one per insertion/deletion
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert model.training


def test_opencv_baseline_matches_the_batched_blur_from_kernel_11() -> None:
    images = torch.rand(1, 3, 64, 64)
    kernel = SaS().kernel_sizes(64, 64)[1]
    assert kernel >= 11
    torch.testing.assert_close(NaiveSaS()._opencv_blur(images, kernel), SaS().baseline(images), atol=1e-5, rtol=0)


def test_sas_speed_smoke(tmp_path: Path, capsys) -> None:
    output = tmp_path / "speed.jsonl"
    record = sas_speed.main(
        [
            "--model", "small-cnn", "--image-size", "16", "--probes", "2", "--iterations", "2",
            "--warmup-iterations", "1", "--device", "cpu", "--naive", "--naive-images", "1",
            "--header", "--json", str(output),
        ]
    )  # fmt: skip
    stored = json.loads(output.read_text().splitlines()[-1])
    assert stored == json.loads(json.dumps(record))
    for field in (
        "seconds_per_audit",
        "images_per_second",
        "passes_per_second",
        "peak_memory_mib",
        "flops_forward_backward_per_image",
        "achieved_tflops",
        "naive_seconds_per_audit",
        "naive_speedup",
    ):
        assert stored[field] > 0, field
    assert stored["model_passes"] == 2 * 2 * 2 * 19 + 2 * 2
    assert stored["naive_extrapolated"] is True and stored["naive_images"] == 1
    printed = capsys.readouterr().out
    assert printed.startswith("| model |") and "extrap. from 1" in printed
