"""Which alert rule separates models that use a shortcut from models that don't?

Trains many small seeded models, biased and clean, on two kinds of shortcut, and records for
every run:

- the ground truth: the counterfactual accuracy drop (accuracy on a validation split with the
  artifact's bias minus accuracy on a split with the bias swapped): did the model use it?
- per method (SaS, Grad-CAM): the mean ``roi_share`` over probes with an ROI, its lift over
  chance (``roi_share / (|R| / HW)`` per probe, averaged), ``roi_share`` with the ROI dilated
  by the method's cell size, ``roi_mass``;
- the intervention flip rate (artifact pasted onto probes predicted as the other class).

Shortcut kinds (each with artifacts of different sizes):

- ``ruler``: the ruler-bias demo's rulers (3-9% of the image) on procedural lesions;
- ``patch``: a coloured square in a random corner of the same lesions, side drawn per run
  from 10-25% of the image side (1-6% of the area).

Biased runs draw the artifact rate of the "malignant" class from [0.6, 0.95] and of the
"benign" class from [0.02, 0.2]; clean runs give both classes the same rate.

    python benchmarks/alert_study.py --runs 12 --out benchmarks/results/alert_study.json
    python benchmarks/alert_study.py --analyse benchmarks/results/alert_study.json

The first command trains ``runs`` biased and ``runs`` clean models per kind and appends each
run to the JSON file as it finishes (so an interrupted study resumes where it stopped); the
second prints the confusion tables of the candidate rules (Markdown).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "ruler_bias"))

from data import MEAN, STD, generate
from model import LesionClassifier

from lightning_sas.audit import run_audit
from lightning_sas.intervention import Artifacts, intervene
from lightning_sas.methods import GradCAM, SaS
from lightning_sas.metrics import roi_share
from lightning_sas.probes import Probes, stratified_indices

KINDS = ("ruler", "patch")
#: Counterfactual accuracy drop from which a run counts as "uses the shortcut".
USES_SHORTCUT_DROP = 0.10


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def patch_split(
    count: int, size: int, side: int, rate_malignant: float, rate_benign: float, seed: int, colour: torch.Tensor
):
    """Lesions without rulers, with a coloured square in a random corner at the given rates."""
    images, labels, _ = generate(count, image_size=size, p_ruler_malignant=0.0, p_ruler_benign=0.0, seed=seed)
    rng = np.random.default_rng(seed + 7)
    rates = np.where(labels.numpy() == 1, rate_malignant, rate_benign)
    has = torch.from_numpy(rng.random(count) < rates)
    corners = rng.integers(0, 4, count)
    masks = torch.zeros(count, size, size)
    for index in torch.nonzero(has).flatten().tolist():
        y = 1 if corners[index] < 2 else size - side - 1
        x = 1 if corners[index] % 2 == 0 else size - side - 1
        masks[index, y : y + side, x : x + side] = 1
    images = torch.where(masks[:, None] > 0, colour.view(1, 3, 1, 1), images)
    return images, labels, masks


def make_data(kind: str, biased: bool, seed: int, size: int, n_train: int, n_val: int) -> dict:
    rng = np.random.default_rng(10_000 + seed)
    high, low = float(rng.uniform(0.6, 0.95)), float(rng.uniform(0.02, 0.2))
    if not biased:
        high = low = (high + low) / 2
    rates = {"train": (high, low), "val": (high, low), "counterfactual": (low, high)}
    counts = {"train": n_train, "val": n_val, "counterfactual": n_val}
    seeds = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint32)
    side = int(round(size * rng.uniform(0.10, 0.25)))
    colour = torch.tensor(rng.uniform(0, 1, 3), dtype=torch.float32)
    splits = {}
    for (split, count), split_seed in zip(counts.items(), seeds, strict=True):
        if kind == "ruler":
            images, labels, masks = generate(
                count,
                image_size=size,
                p_ruler_malignant=rates[split][0],
                p_ruler_benign=rates[split][1],
                seed=int(split_seed),
            )
        else:
            images, labels, masks = patch_split(count, size, side, *rates[split], int(split_seed), colour)
        splits[split] = (normalise(images), labels, masks)
    return {"splits": splits, "rate_high": high, "rate_low": low, "patch_side": side if kind == "patch" else None}


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> LesionClassifier:
    torch.manual_seed(seed)
    model = LesionClassifier(width=12)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(labels) / 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=6e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(64):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(dim=1) == labels).float().mean())


def dilate(roi: torch.Tensor, cell: int) -> torch.Tensor:
    if cell <= 1:
        return roi
    kernel = cell + 1 - cell % 2  # odd, at least the cell size
    return F.max_pool2d(roi[:, None].float(), kernel, stride=1, padding=kernel // 2)[:, 0] > 0


def one_run(kind: str, biased: bool, seed: int, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    data = make_data(kind, biased, seed, args.image_size, args.train_size, args.val_size)
    train_images, train_labels, train_masks = data["splits"]["train"]
    model = train(train_images, train_labels, args.epochs, seed)
    val_images, val_labels, val_masks = data["splits"]["val"]
    cf_images, cf_labels, _ = data["splits"]["counterfactual"]
    val_acc, cf_acc = accuracy(model, val_images, val_labels), accuracy(model, cf_images, cf_labels)

    # Probes: stratified over (class, has artifact), like a reviewer would pick them.
    has = val_masks.flatten(1).any(dim=1)
    strata = (val_labels * 2 + has.long()).tolist()
    chosen = sorted(stratified_indices(strata, args.probes, seed))
    probes = Probes(
        val_images[chosen], val_labels[chosen], val_masks[chosen] > 0, [f"val[{i}]" for i in chosen], chosen
    )
    methods = {"sas": SaS(iterations=args.sas_iterations), "gradcam": GradCAM()}
    result = run_audit(model, probes, methods)
    with_roi = probes.has_roi
    chance = probes.roi.flatten(1).float().mean(dim=1)
    scores: dict[str, dict] = {}
    for name, maps in result.maps.items():
        share = result.roi_share[name][with_roi]
        cell = max(1, round(args.image_size / 8)) if name == "gradcam" else 1  # Grad-CAM's map is 8x8 here
        dilated = roi_share(maps, dilate(probes.roi, cell))[with_roi]
        scores[name] = {
            "roi_share": float(share.mean()),
            "lift": float((share / chance[with_roi]).mean()),
            "roi_share_dilated": float(dilated.mean()),
            "roi_mass": float(result.roi_mass[name][with_roi].mean()),
        }
    # Artifacts: full-size examples cut from training images with the artifact (any class).
    source = torch.nonzero(train_masks.flatten(1).any(dim=1)).flatten()[:32]
    artifacts = Artifacts(
        target_class=1, patches=train_images[source], masks=train_masks[source] > 0, trials=4, seed=seed
    )
    effect = intervene(model, probes.images, artifacts)
    return {
        "kind": kind,
        "biased": biased,
        "seed": seed,
        "rate_high": data["rate_high"],
        "rate_low": data["rate_low"],
        "patch_side": data["patch_side"],
        "roi_area": float(chance[with_roi].mean()),
        "probes_with_roi": int(with_roi.sum()),
        "val_acc": val_acc,
        "counterfactual_acc": cf_acc,
        "drop": val_acc - cf_acc,
        "methods": scores,
        "flip_rate": effect.flip_rate,
        "probability_change": effect.mean_probability_change,
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- analysis


def candidate_rules() -> dict[str, callable]:
    """Rules to compare: each maps a run record to alert yes/no."""

    def best(run: dict, score: str) -> float:
        return max(method[score] for method in run["methods"].values())

    rules = {
        "roi_share > 0.5 (any method; the old rule)": lambda run: best(run, "roi_share") > 0.5,
        "roi_mass > 0.5 (any method)": lambda run: best(run, "roi_mass") > 0.5,
        "dilated roi_share > 0.5 (any method)": lambda run: best(run, "roi_share_dilated") > 0.5,
    }
    for lift in (2, 3, 4, 5, 6, 8, 10):
        rules[f"lift > {lift} (any method)"] = lambda run, lift=lift: best(run, "lift") > lift
    rules["SaS lift > 5"] = lambda run: run["methods"]["sas"]["lift"] > 5
    for flip in (0.1, 0.25, 0.5):
        rules[f"flip_rate > {flip}"] = lambda run, flip=flip: run["flip_rate"] > flip
    for lift in (4, 8, 10):
        rules[f"lift > {lift} or flip_rate > 0.25"] = lambda run, lift=lift: (
            best(run, "lift") > lift or run["flip_rate"] > 0.25
        )
    return rules


def analyse(runs: list[dict]) -> str:
    lines = []
    kinds = sorted({run["kind"] for run in runs})
    uses = [run for run in runs if run["biased"] and run["drop"] >= USES_SHORTCUT_DROP]
    clean = [run for run in runs if not run["biased"]]
    lines.append(
        f"{len(runs)} runs: {sum(r['biased'] for r in runs)} biased ({len(uses)} use the shortcut: counterfactual drop "
        f">= {USES_SHORTCUT_DROP}), {len(clean)} clean. "
        "Recall on runs that use the shortcut; false alarms on clean runs.\n"
    )
    header = (
        "| rule | "
        + " | ".join(f"{kind}: recall | {kind}: false alarms" for kind in kinds)
        + " | all: recall | all: false alarms |"
    )
    lines += [header, "|" + "---|" * (1 + 2 * len(kinds) + 2)]
    for name, rule in candidate_rules().items():
        cells = []
        for group in [*kinds, None]:
            positives = [r for r in uses if group is None or r["kind"] == group]
            negatives = [r for r in clean if group is None or r["kind"] == group]
            hit = sum(rule(r) for r in positives)
            false = sum(rule(r) for r in negatives)
            cells += [f"{hit}/{len(positives)}", f"{false}/{len(negatives)}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("\nPer run (kind, biased, drop, best lift, SaS/Grad-CAM roi_share, flip rate):\n")
    lines.append(
        "| kind | biased | drop | ROI area | SaS roi_share | SaS lift "
        "| Grad-CAM roi_share | Grad-CAM lift | flip rate |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for run in sorted(runs, key=lambda r: (r["kind"], not r["biased"], -r["drop"])):
        sas, cam = run["methods"]["sas"], run["methods"]["gradcam"]
        lines.append(
            f"| {run['kind']} | {'yes' if run['biased'] else 'no'} | {run['drop']:.2f} | {run['roi_area']:.3f} | "
            f"{sas['roi_share']:.2f} | {sas['lift']:.1f} | {cam['roi_share']:.2f} | {cam['lift']:.1f} "
            f"| {run['flip_rate']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=12, help="biased and clean runs per shortcut kind")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=1200)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--sas-iterations", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "alert_study.json")
    parser.add_argument("--analyse", type=Path, help="print the confusion tables of a finished study and exit")
    args = parser.parse_args()
    if args.analyse:
        print(analyse(json.loads(args.analyse.read_text())["runs"]))
        return
    torch.set_num_threads(1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(args.out.read_text()) if args.out.is_file() else {"settings": {}, "runs": []}
    record["settings"] = {key: str(value) for key, value in vars(args).items() if key != "analyse"}
    done = {(run["kind"], run["biased"], run["seed"]) for run in record["runs"]}
    for seed in range(args.runs):
        for kind in KINDS:
            for biased in (True, False):
                if (kind, biased, seed) in done:
                    continue
                run = one_run(kind, biased, seed, args)
                record["runs"].append(run)
                args.out.write_text(json.dumps(record, indent=1))
                print(
                    f"{kind:5s} {'biased' if biased else 'clean ':6s} seed {seed:2d}: drop {run['drop']:+.2f} "
                    f"SaS {run['methods']['sas']['roi_share']:.2f} (lift {run['methods']['sas']['lift']:.1f}) "
                    f"Grad-CAM {run['methods']['gradcam']['roi_share']:.2f} flip {run['flip_rate']:.2f} "
                    f"{run['seconds']:.0f} s",
                    flush=True,
                )
    print(analyse(record["runs"]))


if __name__ == "__main__":
    main()
