"""SaS quality against cost: which configurations give the paper configuration's answer at a quarter of the passes.

Each variant of :class:`~lightning_sas.methods.SaS` is compared with the reference
``SaS.paper()`` (100 iterations over all 19 interior masks: 3,800 model passes per probe) on
the same probes, against three criteria:

* ground truth: ``roi_share`` (top-|R| share in the planted rectangle of ``RectangleModel``,
  ``tests/models.py``), min over 2 images, at 32, 64 and 224 px and logits ×0.01 and ×100;
  must be >= 0.95;
* faithfulness: deletion and insertion AUC (:func:`lightning_sas.scores.faithfulness.faithfulness_curves`
  at the audit's defaults: 20 steps, blur baseline), mean over the probes of a model; the
  largest ``|AUC - reference AUC|`` over the models must be <= 0.01;
* agreement: Spearman correlation of each map with the reference map of the same probe,
  median over the probes of a model; the smallest median over the models must be >= 0.95.

Models: the ruler demo's biased and clean CNNs (64 px, 4 validation probes each; the demo's
checkpoints from ``python examples/ruler_bias/train.py [--clean]`` if present, else trained
here with its defaults) and a randomly initialised ResNet-18 (2 probes) at 64 px; with
``--resnet``, also at 224 px (``RESNET_PROBES`` probes, one at a time), for the variants named. A variant
"passes" only when all of it was measured, the 224-px ResNet-18 included.

Cost: the reference is 3,800 passes per probe; the 224-px ResNet-18 alone needs about 0.3 s per
pass on two idle CPU cores (20 minutes per probe for the reference). Results are cached per
(variant, case) under ``outputs/sas_quality_cost_cache/`` (git-ignored) and the reference's maps
and AUCs in ``benchmarks/results/sas_quality_cost.reference.pt``, so a rerun only computes what
is missing; ``--maps-only`` fills the cache (run several with disjoint ``--variants`` to use more
cores; ``OMP_NUM_THREADS=1`` per process is much faster than oversubscribed threads). Writes
``benchmarks/results/sas_quality_cost.json`` and ``.png`` (one panel per criterion against
passes per probe) and prints a markdown table.

    python benchmarks/sas_quality_cost.py --bf16 "it50 sub9 lr0.02,it50 K10 lr0.02"
    python benchmarks/sas_quality_cost.py --resnet "paper,it50 sub9 lr0.02"   # + ResNet-18 at 224 px
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples" / "ruler_bias"))

from data import MEAN, STD, generate, make_splits
from model import LesionClassifier
from models import RectangleModel, box_mask
from test_sas import off_centre_box

from lightning_sas.methods import SaS
from lightning_sas.scores.faithfulness import faithfulness_curves
from lightning_sas.scores.metrics import roi_share, spearman

CACHE = ROOT / "outputs" / "sas_quality_cost_cache"
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE_FILE = RESULTS / "sas_quality_cost.reference.pt"
GROUND_TRUTH_AT_LEAST = 0.95
AUC_WITHIN = 0.01
SPEARMAN_AT_LEAST = 0.95
DEMO_PROBES = 4
RESNET_PROBES = 2  # at 224 px; the reference alone is about 20 minutes per probe on 2 CPU cores

# What makes two SaS objects the same configuration (for marking today's defaults in the table).
CONFIGURATION = ("iterations", "num_masks", "lr", "temperature", "tv_weight", "schedule_subset", "lr_schedule", "seed")

# name -> SaS keyword arguments on top of SaS.paper(). "paper" is the reference.
VARIANTS: dict[str, dict] = {
    "paper": {},
    "it50 sub9 lr0.02": {"iterations": 50, "schedule_subset": 9, "lr": 0.02},
    "it50 K10 lr0.02": {"iterations": 50, "num_masks": 10, "lr": 0.02},
    "it25 lr0.04": {"iterations": 25, "lr": 0.04},
    "it50 sub9 cos lr0.03": {"iterations": 50, "schedule_subset": 9, "lr": 0.03, "lr_schedule": "cosine"},
    "it25 cos lr0.06": {"iterations": 25, "lr": 0.06, "lr_schedule": "cosine"},
    "it95 K6 lr0.01": {"iterations": 95, "num_masks": 6},
    "it95 sub5 lr0.01": {"iterations": 95, "schedule_subset": 5},
    "it50 lr0.02": {"iterations": 50, "lr": 0.02},  # 1,900 passes: half, for the curve's shape
    "it25 lr0.01": {"iterations": 25},  # a quarter of the iterations at the paper's step size
    "paper seed 1": {"seed": 1},  # the reference's own seed-to-seed spread: the noise floor
}


@dataclass
class Case:
    """Probes of one model; ``roi`` is set for ground-truth cases, which are not faithfulness cases."""

    name: str
    model: nn.Module
    images: Tensor
    targets: Tensor
    roi: Tensor | None = None
    one_by_one: bool = False


# ---------------------------------------------------------------------------- cases


def ground_truth_cases() -> list[Case]:
    cases = []
    for size in (32, 64, 224):
        box = off_centre_box(size)
        images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        roi = box_mask(size, box).expand(2, -1, -1)
        for scale in (0.01, 100.0):
            model = RectangleModel(size, box, scale).eval()
            cases.append(Case(f"gt{size} x{scale:g}", model, images, torch.ones(2, dtype=torch.long), roi))
    return cases


def demo_model(clean: bool) -> tuple[nn.Module, Tensor]:
    """The ruler demo's model: the demo's own checkpoint if there is one, else trained here with
    train.py's defaults (without the audit); cached either way."""
    import lightning as L
    from torch.utils.data import DataLoader

    name = "clean" if clean else "biased"
    splits = make_splits(n_train=2000, n_val=400, n_counterfactual=400, image_size=64, clean=clean, seed=0)
    model = LesionClassifier(width=16)
    path = CACHE / f"demo_{name}.pt"
    demo_checkpoint = ROOT / "outputs" / "ruler_bias" / name / "version_0" / "checkpoints" / "last.ckpt"
    if path.exists():
        model.load_state_dict(torch.load(path))
    elif demo_checkpoint.exists():  # written by `python examples/ruler_bias/train.py [--clean]`
        model.load_state_dict(torch.load(demo_checkpoint, weights_only=False)["state_dict"])
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    else:
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(
            max_epochs=6,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, DataLoader(splits["train"], batch_size=64, shuffle=True))
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval(), splits["val"].normalised_images()[:DEMO_PROBES]


def model_cases(include_resnet: bool) -> list[Case]:
    cases = []
    for clean in (False, True):
        model, images = demo_model(clean)
        cases.append(Case("demo clean" if clean else "demo biased", model, images, _predictions(model, images)))
    # A standard architecture at a size the CPU study can afford for every variant (2 probes).
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    images = _normalised(generate(2, image_size=64, seed=224)[0])
    cases.append(Case("resnet18 64", model, images, _predictions(model, images)))
    if include_resnet:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=2).eval()
        images = _normalised(generate(2, image_size=224, seed=224)[0][:RESNET_PROBES])
        cases.append(Case("resnet18 224", model, images, _predictions(model, images), one_by_one=True))
    return cases


def _normalised(images: Tensor) -> Tensor:
    return (images - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def _predictions(model: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return model(images).argmax(dim=1)


# ---------------------------------------------------------------------------- measuring


def sas(variant: str, bf16: bool = False) -> SaS:
    # The scale-free objective, as when these figures were measured (SaS's default then).
    return SaS.paper(**VARIANTS[variant], autocast_dtype=torch.bfloat16 if bf16 else None, objective="scale_free")


def run(variant: str, bf16: bool, case: Case, reference: dict) -> dict:
    """Maps, AUCs and seconds of one variant on one case (cached on disk, the reference in results/).

    The 224-px case is computed one probe at a time, each probe cached, so that separate
    processes can share the work and an interrupted run keeps what it finished.
    """
    key = f"{variant}{' bf16' if bf16 else ''} | {case.name}"
    is_reference = variant == "paper" and not bf16
    path = CACHE / (key.replace(" ", "_").replace("|", "").replace("/", "") + ".pt")
    if is_reference and key in reference:
        return reference[key]
    if path.exists():
        return torch.load(path)
    method = sas(variant, bf16)
    if case.one_by_one:
        maps, seconds = [], 0.0
        for index in range(case.images.shape[0]):
            probe_path = path.with_suffix(f".probe{index}.pt")
            if not probe_path.exists():
                started = time.perf_counter()
                probe_map = method.attribute(
                    case.model, case.images[index : index + 1], case.targets[index : index + 1]
                )
                CACHE.mkdir(parents=True, exist_ok=True)
                torch.save({"maps": probe_map, "seconds": time.perf_counter() - started}, probe_path)
                print(f"  {key} probe {index}: {time.perf_counter() - started:.1f} s", flush=True)
            probe = torch.load(probe_path)
            maps.append(probe["maps"])
            seconds += probe["seconds"]
        maps = torch.cat(maps)
    else:
        started = time.perf_counter()
        maps = method.attribute(case.model, case.images, case.targets)
        seconds = time.perf_counter() - started
    result = {"maps": maps, "seconds": seconds, "kwargs": repr(VARIANTS[variant])}
    if case.roi is None:
        curves = faithfulness_curves(case.model, case.images, case.targets, {"sas": maps})["sas"]
        result |= {"deletion_auc": curves.deletion_auc, "insertion_auc": curves.insertion_auc}
    if is_reference:
        # Merged with what is on disk now: another process may have added a case meanwhile.
        reference |= (torch.load(REFERENCE_FILE) if REFERENCE_FILE.exists() else {}) | {key: result}
        RESULTS.mkdir(parents=True, exist_ok=True)
        torch.save(reference, REFERENCE_FILE)
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(result, path)
    print(f"  {key}: {seconds:.1f} s", flush=True)
    return result


def measure(variant: str, bf16: bool, cases: list[Case], reference: dict) -> dict:
    """The three criteria of one variant over the given cases."""
    method = sas(variant, bf16)
    row: dict = {
        "variant": variant + (" bf16" if bf16 else ""),
        "kwargs": {k: str(v) for k, v in VARIANTS[variant].items()} | ({"autocast_dtype": "bfloat16"} if bf16 else {}),
        "passes_per_probe": method.passes_per_probe(),
        "is_default": not bf16
        and all(getattr(method, name) == getattr(SaS(objective="scale_free"), name) for name in CONFIGURATION),
        "ground_truth": {},
        "auc_difference": {},
        "spearman_median": {},
        "seconds_per_probe": {},
    }
    for case in cases:
        result = run(variant, bf16, case, reference)
        ref = run("paper", False, case, reference)
        row["seconds_per_probe"][case.name] = result["seconds"] / case.images.shape[0]
        if case.roi is not None:
            row["ground_truth"][case.name] = roi_share(result["maps"], case.roi).min().item()
            continue
        row["auc_difference"][case.name] = {
            curve: (result[f"{curve}_auc"].mean() - ref[f"{curve}_auc"].mean()).item()
            for curve in ("deletion", "insertion")
        }
        row["spearman_median"][case.name] = statistics.median(spearman(result["maps"], ref["maps"]).tolist())
    gt, auc, rho = row["ground_truth"], row["auc_difference"], row["spearman_median"]
    row["ground_truth_min"] = min(gt.values()) if gt else None
    row["auc_difference_max"] = max(abs(d) for per in auc.values() for d in per.values()) if auc else None
    row["spearman_median_min"] = min(rho.values()) if rho else None
    complete = len(gt) == 6 and "resnet18 224" in auc
    row["complete"] = complete
    row["passes_measured"] = bool(
        len(gt) == 6
        and auc
        and row["ground_truth_min"] >= GROUND_TRUTH_AT_LEAST
        and row["auc_difference_max"] <= AUC_WITHIN
        and row["spearman_median_min"] >= SPEARMAN_AT_LEAST
    )
    row["passes"] = complete and row["passes_measured"]
    return row


def reference_summary(cases: list[Case], reference: dict) -> dict:
    out = {}
    for case in cases:
        ref = run("paper", False, case, reference)
        entry = {"seconds_per_probe": ref["seconds"] / case.images.shape[0]}
        if case.roi is None:
            entry |= {f"{c}_auc_mean": ref[f"{c}_auc"].mean().item() for c in ("deletion", "insertion")}
        else:
            entry["roi_share_min"] = roi_share(ref["maps"], case.roi).min().item()
        out[case.name] = entry
    return out


def bf16_speed(variant: str, cases: list[Case], repeats: int = 3, iterations: int = 10) -> dict:
    """Seconds per model pass, fp32 vs bf16 autocast, of ``variant`` cut to ``iterations``
    iterations: interleaved repeats (median), so both see the same machine load."""
    timings: dict = {}
    for case in cases:
        seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(repeats):
            for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                method = SaS.paper(
                    **(VARIANTS[variant] | {"iterations": iterations}), autocast_dtype=dtype, objective="scale_free"
                )
                started = time.perf_counter()
                method.attribute(case.model, case.images, case.targets)
                elapsed = time.perf_counter() - started
                seconds[label].append(elapsed / (method.passes_per_probe() * case.images.shape[0]))
        fp32, bf16 = statistics.median(seconds["fp32"]), statistics.median(seconds["bf16"])
        timings[case.name] = {"fp32_s_per_pass": fp32, "bf16_s_per_pass": bf16, "speedup": fp32 / bf16}
        print(f"  {case.name}: fp32 {fp32 * 1e3:.2f} ms/pass, bf16 {bf16 * 1e3:.2f} ms/pass, {fp32 / bf16:.2f}x")
    return timings


# ---------------------------------------------------------------------------- report


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("ground_truth_min", "ground truth: min top-|R| share", GROUND_TRUTH_AT_LEAST, "≥"),
        ("auc_difference_max", "faithfulness: max |ΔAUC| vs paper", AUC_WITHIN, "≤"),
        ("spearman_median_min", "agreement: min over models of median Spearman", SPEARMAN_AT_LEAST, "≥"),
    )
    markers = "osD^v<>ph*XP8"
    # Variants of (nearly) the same cost are spread sideways so that every marker stays visible.
    spread = {row["variant"]: 12 * (index - len(rows) / 2) for index, row in enumerate(rows)}
    figure, axes = plt.subplots(1, 3, figsize=(16, 6.2))
    for axis, (field, title, threshold, relation) in zip(axes, panels, strict=True):
        for index, row in enumerate(rows):
            if row[field] is None:
                continue
            color = f"C{index % 10}"
            axis.scatter(
                row["passes_per_probe"] + (spread[row["variant"]] if row["passes_per_probe"] < 2000 else 0),
                row[field],
                marker=markers[index % len(markers)],
                s=60,
                facecolors=color if row["complete"] else "none",
                edgecolors=color,
                label=row["variant"] + (" (default)" if row["is_default"] else ""),
            )
        axis.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"criterion {relation} {threshold}")
        axis.axvline(950, color="grey", linestyle=":", linewidth=1, label="budget: 950 passes")
        axis.set_xlabel("model passes per probe (spread sideways below 2,000 for legibility)")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    figure.suptitle(
        "SaS quality vs model passes per probe (filled: all cases measured, the 224-px ResNet-18 included; "
        "hollow: without it)",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0.13, 1, 1))
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    parser.add_argument("--bf16", default="", help="variants also measured under bf16 autocast (comma-separated)")
    parser.add_argument("--resnet", default="", help="variants also measured on ResNet-18 at 224 px (comma-separated)")
    parser.add_argument("--resnet-only", action="store_true", help="only compute the 224-px ResNet-18 maps (no report)")
    parser.add_argument("--speed", default="", help="time fp32 vs bf16 autocast of this variant (no report)")
    parser.add_argument(
        "--maps-only", action="store_true", help="only compute the variants' maps on the cheap cases (fills the cache)"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    names = [name for name in args.variants.split(",") if name]
    bf16_names = [name for name in args.bf16.split(",") if name]
    resnet_names = set(name for name in args.resnet.split(",") if name)
    reference = torch.load(REFERENCE_FILE) if REFERENCE_FILE.exists() else {}
    cheap = ground_truth_cases() + model_cases(include_resnet=False)
    expensive = model_cases(include_resnet=True)[-1:] if resnet_names else []
    if args.resnet_only:  # fills the cache, e.g. in a second process next to a full run
        for label in sorted(resnet_names):
            name, bf16 = label.removesuffix(" bf16"), label.endswith(" bf16")
            run(name, bf16, expensive[0], reference)
        return
    if args.speed:
        (RESULTS / "sas_quality_cost.speed.json").write_text(
            json.dumps(
                {"variant": args.speed, "threads": torch.get_num_threads(), **bf16_speed(args.speed, cheap[-3:])}
            )
        )
        return
    if args.maps_only:  # a second worker next to a full run; the reference is left to that run
        for name, bf16 in [(n, False) for n in names] + [(n, True) for n in bf16_names]:
            for case in cheap:
                run(name, bf16, case, reference)
        return
    rows = []
    for name, bf16 in [(n, False) for n in names] + [(n, True) for n in bf16_names]:
        label = name + (" bf16" if bf16 else "")
        cases = cheap + (expensive if label in resnet_names or name == "paper" else [])
        print(f"{label}: {sas(name, bf16).passes_per_probe()} passes per probe", flush=True)
        rows.append(measure(name, bf16, cases, reference))
        row = rows[-1]
        print(
            f"  gt min {row['ground_truth_min']:.3f}  |dAUC| max {row['auc_difference_max']:.4f}  "
            f"spearman min-median {row['spearman_median_min']:.3f}  complete={row['complete']} passes={row['passes']}",
            flush=True,
        )
    table = {
        "criteria": {
            "ground_truth_min_at_least": GROUND_TRUTH_AT_LEAST,
            "auc_difference_within": AUC_WITHIN,
            "spearman_median_at_least": SPEARMAN_AT_LEAST,
        },
        "reference": reference_summary(cheap + expensive, reference),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "variants": rows,
    }
    speed = RESULTS / "sas_quality_cost.speed.json"
    if speed.exists():  # from --speed
        table["bf16_speed"] = json.loads(speed.read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sas_quality_cost.json").write_text(json.dumps(table, indent=2))
    plot(rows, RESULTS / "sas_quality_cost.png")
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = [
        "| variant | passes / probe | GT min share | max abs ΔAUC | min median Spearman | all three |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:

        def fmt(value: float | None, digits: int) -> str:
            return "–" if value is None else f"{value:.{digits}f}"

        if row["complete"]:
            verdict = "yes" if row["passes"] else "no"
        else:
            verdict = "yes, without the 224-px ResNet" if row["passes_measured"] else "no"
        name = row["variant"] + (" (default)" if row["is_default"] else "")
        lines.append(
            f"| {name} | {row['passes_per_probe']} | {fmt(row['ground_truth_min'], 3)} | "
            f"{fmt(row['auc_difference_max'], 4)} | {fmt(row['spearman_median_min'], 3)} | {verdict} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
