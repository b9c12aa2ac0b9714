"""How fast is a nightly audit of many checkpoints on 1 process and on 2, and what does a cached re-run cost?

Writes ``--checkpoints`` Lightning checkpoints of a small CNN (``benchmarks/nightly_scale_model.py``,
random weights per seed, saved at increasing steps) and ``--probes`` probe images, then runs

1. ``lightning-sas audit`` over every checkpoint on one process (torch's default threads: every core);
2. the same with ``--accelerator cpu --devices 2`` (Lightning gives each process cores / 2 threads:
   the same total);
3. the one-process command again over the same cache: every audit reused.

Each as a new process (the command a nightly job runs), wall-clock from start to exit. The two
combined summaries must agree (same exit status, same verdicts, per-probe ROI shares within 1e-5).

    python benchmarks/nightly_scale.py --checkpoints 8 --probes 32 --out benchmarks/results/nightly_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from nightly_scale_model import IMAGE_SIZE, ScaleClassifier, write_probes


def write_checkpoints(folder: Path, count: int) -> None:
    """``count`` checkpoints of differently seeded models, saved as if at steps 100, 200, ..."""
    import lightning

    folder.mkdir(parents=True)
    for number in range(count):
        torch.manual_seed(number)
        model = ScaleClassifier()
        torch.save(
            {
                "state_dict": model.state_dict(),
                "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "global_step": 100 * (number + 1),
                "epoch": number,
            },
            folder / f"epoch={number}-step={100 * (number + 1)}.ckpt",
        )


def run_audit(work: Path, out: str, cache: Path, *extra: str) -> tuple[float, int]:
    command = [
        sys.executable, "-m", "lightning_sas", "audit", "--checkpoint", str(work / "runs"),
        "--model", "nightly_scale_model:ScaleClassifier", "--probe", str(work / "probes" / "images"),
        "--masks", str(work / "probes" / "masks"), "--image-size", str(IMAGE_SIZE), "--device", "cpu",
        "--methods", "sas,gradcam", "--sas-iterations", "20", "--faithfulness-steps", "10",
        "--discovery", "never", "--out", str(work / out), "--cache", str(cache), *extra,
    ]  # fmt: skip
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    seconds = time.perf_counter() - started
    if process.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{process.stderr}")
    return seconds, process.returncode


def _scores(folder: Path) -> list:
    combined = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    scores = []
    for row in combined["checkpoints"]:
        single = json.loads((folder / row["folder"] / "summary.json").read_text(encoding="utf-8"))
        scores.append((row["name"], row["exit_status"], [probe["roi_share"] for probe in single["probes"]]))
    return scores


def agree(first: list, second: list, tolerance: float = 1e-5) -> bool:
    """Same checkpoints, exit statuses and per-probe ROI shares (within ``tolerance``)."""
    if [(name, status) for name, status, _ in first] != [(name, status) for name, status, _ in second]:
        return False
    for (_, _, probes_a), (_, _, probes_b) in zip(first, second, strict=True):
        for shares_a, shares_b in zip(probes_a, probes_b, strict=True):
            for method, value in shares_a.items():
                other = shares_b[method]
                if (value is None) != (other is None) or (value is not None and abs(value - other) > tolerance):
                    return False
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--probes", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nightly_scale_"))
    try:
        write_checkpoints(work / "runs", args.checkpoints)
        write_probes(work / "probes", args.probes)
        one, status_one = run_audit(work, "one", work / "cache_one")
        two, status_two = run_audit(work, "two", work / "cache_two", "--accelerator", "cpu", "--devices", "2")
        cached, status_cached = run_audit(work, "cached", work / "cache_one")
        results = {
            "command": " ".join(
                ["python", "benchmarks/nightly_scale.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "checkpoints": args.checkpoints,
            "probes": args.probes,
            "image_size": IMAGE_SIZE,
            "seconds_one_process": round(one, 1),
            "seconds_two_processes": round(two, 1),
            "throughput_ratio": round(one / two, 2),
            "seconds_cached_rerun": round(cached, 1),
            "same_exit_status": status_one == status_two == status_cached,
            "same_scores": agree(_scores(work / "one"), _scores(work / "two")),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
