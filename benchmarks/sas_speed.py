"""How fast is one SaS audit? Seconds, throughput, memory, FLOP/s; optionally against the naive version.

Run from the repository root, e.g.::

    python benchmarks/sas_speed.py --model resnet18 --image-size 64 --probes 8 --device cpu --header
    python benchmarks/sas_speed.py --model resnet50 --image-size 224 --probes 16 --device cuda --autocast bf16
    python benchmarks/sas_speed.py --model resnet18 --image-size 64 --probes 8 --naive --naive-images 1

One Markdown table row is printed (with its header under ``--header``), then one JSON line;
``--json PATH`` also appends the JSON line to PATH. See ``benchmarks/README.md`` for what every
number means.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.naive_sas import NaiveSaS
from lightning_sas.methods import SaS
from lightning_sas.scores.metrics import spearman

NUM_CLASSES = 10
#: Dense bf16 tensor-core peak in TFLOP/s, matched against ``torch.cuda.get_device_name()``
#: in order (first match wins). Override with ``--peak-tflops``.
PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H200",), 989.0),
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (("GH200",), 989.0),
    (("A100",), 312.0),
    (("L40S",), 362.0),
    (("L4",), 121.0),
)
TABLE_COLUMNS = (
    "model",
    "image",
    "probes",
    "iterations",
    "device",
    "autocast",
    "max_batch",
    "SaS s/audit",
    "probe img/s",
    "model passes/s",
    "peak mem MiB",
    "TFLOP/s",
    "% of peak",
    "naive s/audit",
    "speed-up",
)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU ×3 with pooling and a linear head: a model whose cost is mostly overhead."""

    def __init__(self, num_classes: int = NUM_CLASSES, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * channels, 4 * channels, 3, padding=1),
            nn.BatchNorm2d(4 * channels),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * channels, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def build_model(name: str) -> nn.Module:
    """A randomly initialised classifier with ``NUM_CLASSES`` outputs (seeded by the caller)."""
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=NUM_CLASSES)
    if name == "resnet50":
        return torchvision.models.resnet50(num_classes=NUM_CLASSES)
    if name == "small-cnn":
        return SmallCNN()
    raise ValueError(f"Unknown model {name!r}.")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but CUDA is not available.")
    return torch.device(name)


def peak_bf16_tflops(device: torch.device, override: float | None) -> float | None:
    """The card's dense bf16 peak from :data:`PEAK_BF16_TFLOPS` (or ``override``); ``None`` on CPU/unknown."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    for keys, peak in PEAK_BF16_TFLOPS:
        if all(key in name for key in keys):
            return peak
    return None


def model_flops(model: nn.Module, image: Tensor, autocast_dtype: torch.dtype | None) -> tuple[int, int]:
    """``(forward, forward + input-gradient backward)`` FLOPs of one image, as SaS runs the model.

    SaS back-propagates to the input only (parameters frozen), so the backward is counted the
    same way: parameters without ``requires_grad``, the image with it. Counted with
    :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions).
    """
    grad_flags = [(param, param.requires_grad) for param in model.parameters()]
    was_training = model.training
    model.eval()
    for param, _ in grad_flags:
        param.requires_grad_(False)
    autocast = torch.autocast(
        device_type=image.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
    )
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, autocast:
            model(image)
        forward = counter.get_total_flops()
        probe = image.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            with autocast:
                score = model(probe)[:, 0].float().sum()
            score.backward()  # only the image needs a gradient (autograd.grad trips FlopCounterMode's hooks)
        return forward, counter.get_total_flops()
    finally:
        model.train(was_training)
        for param, required in grad_flags:
            param.requires_grad_(required)


def synchronize(device: torch.device) -> None:
    """Wait for the device (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Tensor], device: torch.device) -> tuple[float, Tensor]:
    """Wall seconds of ``run()``; on CUDA measured with events between two synchronisations."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = run()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0, result
    begin = time.perf_counter()
    result = run()
    return time.perf_counter() - begin, result


def max_rss_mib() -> float:
    """The process's peak resident set size so far (``ru_maxrss``: KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("resnet18", "resnet50", "small-cnn"), default="resnet18")
    parser.add_argument("--image-size", type=int, default=64, help="Square image side in pixels.")
    parser.add_argument("--probes", type=int, default=8, help="Probe images per audit (one SaS call).")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--iterations", type=int, default=SaS.paper().iterations, help="SaS Adam steps.")
    parser.add_argument("--num-masks", type=int, default=SaS.paper().num_masks, help="SaS schedule length K.")
    parser.add_argument("--max-batch", type=int, default=None, help="SaS max_batch (default: SaS picks).")
    parser.add_argument("--autocast", choices=("bf16", "none"), default="none")
    parser.add_argument("--repeat", type=int, default=1, help="Timed SaS runs; the median is reported.")
    parser.add_argument(
        "--warmup-iterations", type=int, default=2, help="Iterations of the untimed warm-up SaS run (same inputs)."
    )
    parser.add_argument("--naive", action="store_true", help="Also time the naive per-image SaS on the same inputs.")
    parser.add_argument(
        "--naive-images",
        type=int,
        default=None,
        help="Time the naive version on the first N probes only and extrapolate linearly per image.",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="Override the card's peak TFLOP/s.")
    parser.add_argument("--profile", action="store_true", help="Print a torch.profiler table of one extra SaS run.")
    parser.add_argument("--profile-rows", type=int, default=20)
    parser.add_argument("--header", action="store_true", help="Print the Markdown table header first.")
    parser.add_argument("--json", type=Path, default=None, help="Append the JSON line to this file.")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads for the run (default: torch's choice)."
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("image_size", "probes", "iterations", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.naive_images is not None and not 1 <= args.naive_images <= args.probes:
        parser.error("--naive-images must be between 1 and --probes")
    return args


def markdown_row(record: dict[str, Any]) -> str:
    """The record as one Markdown table row in :data:`TABLE_COLUMNS` order."""

    def number(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    naive = record.get("naive_seconds_per_audit")
    if naive is not None and record["naive_images"] < record["probes"]:
        naive_text = f"{naive:.1f} (extrap. from {record['naive_images']})"
    else:
        naive_text = number(naive, 1)
    cells = [
        record["model"],
        str(record["image_size"]),
        str(record["probes"]),
        str(record["iterations"]),
        record["device_name"],
        record["autocast"],
        str(record["max_batch"] if record["max_batch"] is not None else "auto"),
        number(record["seconds_per_audit"], 2),
        number(record["images_per_second"], 3),
        number(record["passes_per_second"], 1),
        number(record["peak_memory_mib"], 0) + (" (RSS)" if record["peak_memory_kind"] == "cpu_max_rss" else ""),
        number(record["achieved_tflops"], 3),
        number(record["percent_of_peak"], 1),
        naive_text,
        number(record.get("naive_speedup"), 1) + ("×" if record.get("naive_speedup") is not None else ""),
    ]
    return "| " + " | ".join(cells) + " |"


def markdown_header() -> str:
    """Header and separator lines of the Markdown table."""
    return "| " + " | ".join(TABLE_COLUMNS) + " |\n|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the Markdown row and the JSON line, and return the record.

    Args:
        argv: Command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The JSON record (also printed, and appended to ``--json``).
    """
    args = parse_args(argv)
    device = resolve_device(args.device)
    autocast_dtype = torch.bfloat16 if args.autocast == "bf16" else None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.model).to(device).eval()
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.probes, 3, args.image_size, args.image_size, generator=generator).to(device)
    targets = (torch.arange(args.probes) % NUM_CLASSES).to(device)
    # The full schedule every iteration, as the naive implementation does: the timing compares per pass.
    method = SaS.paper(
        iterations=args.iterations, num_masks=args.num_masks, max_batch=args.max_batch, autocast_dtype=autocast_dtype
    )
    warmup = SaS.paper(
        iterations=max(1, args.warmup_iterations),
        num_masks=args.num_masks,
        max_batch=args.max_batch,
        autocast_dtype=autocast_dtype,
    )
    forward_flops, forward_backward_flops = model_flops(model, images[:1], autocast_dtype)

    rss_before = max_rss_mib()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    warmup.attribute(model, images, targets)  # excluded: allocator, kernels selection, first-call costs
    seconds: list[float] = []
    maps = None
    for _ in range(args.repeat):
        elapsed, maps = timed(lambda: method.attribute(model, images, targets), device)
        seconds.append(elapsed)
    if device.type == "cuda":
        peak_memory, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
        memory_delta = None
    else:
        peak_memory, peak_kind = max_rss_mib(), "cpu_max_rss"
        memory_delta = peak_memory - rss_before

    seconds_per_audit = statistics.median(seconds)
    interior = args.num_masks - 1
    optimised_passes = args.iterations * args.probes * 2 * interior
    reference_forwards = 2 * args.probes  # images and their blurred baselines, forward only
    total_flops = optimised_passes * forward_backward_flops + reference_forwards * forward_flops
    achieved_tflops = total_flops / seconds_per_audit / 1e12
    peak = peak_bf16_tflops(device, args.peak_tflops)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"cpu ({torch.get_num_threads()} threads)"
    record: dict[str, Any] = {
        "model": args.model,
        "image_size": args.image_size,
        "probes": args.probes,
        "iterations": args.iterations,
        "num_masks": args.num_masks,
        "device": device.type,
        "device_name": device_name,
        "autocast": args.autocast,
        "max_batch": args.max_batch,
        "repeat": args.repeat,
        "warmup_iterations": max(1, args.warmup_iterations),
        "seconds_per_audit": seconds_per_audit,
        "seconds_all_runs": seconds,
        "images_per_second": args.probes / seconds_per_audit,
        "model_passes": optimised_passes + reference_forwards,
        "passes_per_second": (optimised_passes + reference_forwards) / seconds_per_audit,
        "peak_memory_mib": peak_memory,
        "peak_memory_kind": peak_kind,
        "cpu_max_rss_increase_mib": memory_delta,
        "flops_forward_per_image": forward_flops,
        "flops_forward_backward_per_image": forward_backward_flops,
        "flops_per_audit": total_flops,
        "achieved_tflops": achieved_tflops,
        "peak_tflops_bf16_dense": peak,
        "percent_of_peak": None if peak is None else 100.0 * achieved_tflops / peak,
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
    }

    if args.naive:
        record.update(_run_naive(args, model, images, targets, maps, autocast_dtype, device, seconds_per_audit))

    if args.profile:
        _print_profile(method, model, images, targets, device, args.profile_rows)

    if args.header:
        print(markdown_header())
    print(markdown_row(record))
    line = json.dumps(record)
    print(line)
    if args.json is not None:
        with args.json.open("a") as handle:
            handle.write(line + "\n")
    return record


def _run_naive(
    args: argparse.Namespace,
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    batched_maps: Tensor | None,
    autocast_dtype: torch.dtype | None,
    device: torch.device,
    seconds_per_audit: float,
) -> dict[str, Any]:
    """Time :class:`NaiveSaS` on the first ``--naive-images`` probes, extrapolated to all probes."""
    count = args.naive_images or args.probes
    naive = NaiveSaS(iterations=args.iterations, num_masks=args.num_masks, autocast_dtype=autocast_dtype)
    NaiveSaS(iterations=1, num_masks=args.num_masks, autocast_dtype=autocast_dtype).attribute(
        model, images[:1], targets[:1]
    )  # warm-up, excluded
    elapsed, naive_maps = timed(lambda: naive.attribute(model, images[:count], targets[:count]), device)
    naive_per_audit = elapsed / count * args.probes
    agreement = spearman(naive_maps, batched_maps[:count]) if batched_maps is not None else None
    return {
        "naive_images": count,
        "naive_seconds_measured": elapsed,
        "naive_seconds_per_audit": naive_per_audit,
        "naive_extrapolated": count < args.probes,
        "naive_speedup": naive_per_audit / seconds_per_audit,
        "naive_host_syncs": naive.host_syncs,
        "naive_model_forwards": naive.forwards,
        "naive_spearman_min": None if agreement is None else float(agreement.min()),
    }


def _print_profile(
    method: SaS, model: nn.Module, images: Tensor, targets: Tensor, device: torch.device, rows: int
) -> None:
    """One more SaS run under :mod:`torch.profiler`; prints the ops sorted by self time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        method.attribute(model, images, targets)
        synchronize(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=rows), file=sys.stderr)


if __name__ == "__main__":
    main()
