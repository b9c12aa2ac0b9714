"""Does the nightly audit flag the demo's biased checkpoint and pass the clean one, on fresh probes?

Trains the ruler-bias demo's biased and clean models once (demo settings unless told
otherwise), then for each of ``--seeds`` fresh probe sets (16 images the models never saw,
rulers on 75% of both classes, masks, labels, and ruler examples for the intervention, written
with :mod:`lightning_sas.probes.export`) runs ``lightning-sas audit`` at its defaults on both
checkpoints, with and without the ruler examples, and records the exit code (1 = shortcut
found, 0 = none) with the scores behind it.

    python benchmarks/nightly_study.py --seeds 5 --out benchmarks/results/nightly_study.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "ruler_bias"))

import train
from data import CLASS_NAMES, MEAN, STD, make_splits

from lightning_sas.cli.main import main as cli_main
from lightning_sas.probes.export import export_probes
from lightning_sas.probes.export_artifacts import export_artifacts

#: Ruler rate of both classes in the fresh probe sets (nightly probe sets carry it on both).
PROBE_RULER_RATE = 0.75


def export_fresh(out: Path, seed: int, image_size: int, count: int) -> Path:
    fresh = make_splits(
        n_train=200,
        n_val=200,
        n_counterfactual=1,
        image_size=image_size,
        p_ruler_malignant=PROBE_RULER_RATE,
        p_ruler_benign=PROBE_RULER_RATE,
        seed=seed,
    )
    export_probes(
        fresh["val"], out, count=count, seed=seed, mean=MEAN, std=STD, class_names=CLASS_NAMES, item_keys={"mask": 2}
    )
    with_ruler = fresh["train"].has_ruler.nonzero().flatten()[:16]
    images, masks = fresh["train"].normalised_images()[with_ruler], fresh["train"].ruler_masks[with_ruler] > 0
    export_artifacts(images, masks, out / "artifacts", mean=MEAN, std=STD)
    return out


def audit(checkpoint: str, probes: Path, out: Path, image_size: int, with_artifacts: bool) -> dict:
    artifacts = ["--artifacts", str(probes / "artifacts"), "--artifact-class", "malignant"] if with_artifacts else []
    arguments = [
        "audit", "--checkpoint", checkpoint, "--model", "model:LesionClassifier",
        "--probe", str(probes), "--masks", str(probes / "masks"), "--labels", str(probes / "labels.csv"),
        *artifacts, "--class-names", ",".join(CLASS_NAMES), "--image-size", str(image_size),
        "--mean", *map(str, MEAN), "--std", *map(str, STD), "--device", "cpu", "--overwrite", "--out", str(out),
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(arguments)
    summary = json.loads((out / "summary.json").read_text())
    return {"exit": code, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "nightly_study.json")
    parser.add_argument("--work", type=Path, default=Path("outputs/nightly_study"))
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="32 px, 3 epochs (a smoke run)")
    args = parser.parse_args()
    image_size = 64
    settings = ["--quiet", "--out", str(args.work / "runs")]
    if args.quick:
        image_size = 32
        settings += ["--image-size", "32", "--train-size", "800", "--val-size", "200", "--epochs", "3",
                     "--sas-iterations", "10", "--width", "8"]  # fmt: skip
    started = time.perf_counter()
    runs = {"biased": train.run(settings), "clean": train.run([*settings, "--clean"])}
    rows = []
    for seed in range(1, args.seeds + 1):
        probes = export_fresh(args.work / f"probes_{seed}", 1000 + seed, image_size, args.probes)
        for name, run in runs.items():
            for with_artifacts in (False, True):
                folder = args.work / f"audit_{name}_{seed}_{'artifacts' if with_artifacts else 'maps'}"
                result = audit(run["checkpoint"], probes, folder, image_size, with_artifacts)
                summary = result["summary"]
                methods = summary["methods"]
                rows.append(
                    {
                        "seed": seed,
                        "run": name,
                        "artifacts": with_artifacts,
                        "exit": result["exit"],
                        "sas_roi_enrichment": methods["sas"]["roi_enrichment"],
                        "gradcam_roi_enrichment": methods["gradcam"]["roi_enrichment"],
                        "sas_roi_lift": methods["sas"].get("roi_lift"),
                        "flip_rate": (summary.get("intervention") or {}).get("flip_rate"),
                        "reasons": summary["verdict"]["reasons"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    record = {
        "settings": {"image_size": image_size, "probes": args.probes, "probe_ruler_rate": PROBE_RULER_RATE},
        "runs": {name: {k: run[k] for k in ("val_acc", "counterfactual_acc")} for name, run in runs.items()},
        "audits": rows,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    for with_artifacts in (False, True):
        chosen = [row for row in rows if row["artifacts"] is with_artifacts]
        flagged = sum(row["exit"] == 1 for row in chosen if row["run"] == "biased")
        passed = sum(row["exit"] == 0 for row in chosen if row["run"] == "clean")
        label = "with ruler examples" if with_artifacts else "masks only"
        print(
            f"{label}: biased flagged on {flagged}/{args.seeds} fresh probe sets; clean passed on {passed}/{args.seeds}"
        )
    print("| seed | run | artifacts | exit | SaS roi_enrichment | Grad-CAM roi_enrichment | SaS lift | flip rate |")
    print("|---|---|---|---|---|---|---|---|")

    def number(value: float | None, digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    for row in rows:
        print(
            f"| {row['seed']} | {row['run']} | {'yes' if row['artifacts'] else 'no'} | {row['exit']} "
            f"| {number(row['sas_roi_enrichment'])} | {number(row['gradcam_roi_enrichment'])} "
            f"| {number(row['sas_roi_lift'], 1)} | {number(row['flip_rate'])} |"
        )


if __name__ == "__main__":
    main()
