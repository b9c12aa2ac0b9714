"""Which alert rule separates models that use a shortcut from models that don't?

Trains many small seeded models, biased and clean, on two kinds of shortcut, audits each one
as a nightly run would (a probe set with the artifact on both classes), and records per run:

- the ground truth: the counterfactual accuracy drop (accuracy on a validation split with the
  artifact's bias minus accuracy on a split with the bias swapped): did the model use it?
- per method and variant (every registered method at its defaults, SaS with both objectives,
  IG and GradientSHAP with both sign policies), per probe: ``roi_share``, the ROI's pixels,
  whether the map was flat (no evidence); from these the analysis computes the pooled
  enrichment (:func:`lightning_sas.scores.metrics.roi_enrichment`, the rule's statistic) and the old
  mean lift;
- the intervention flip rate (artifacts pasted onto probes not predicted as their class).

Shortcut kinds (each with artifacts of different sizes):

- ``ruler``: the ruler-bias demo's rulers (3-9% of the image) on procedural lesions;
- ``patch``: a coloured square in a random corner of the same lesions, side drawn per run
  from 10-25% of the image side (1-6% of the area).

Biased runs draw the artifact rate of the "malignant" class from [0.6, 0.95] and of the
"benign" class from [0.02, 0.2]; clean runs give both classes the same rate. Probe sets carry
the artifact on 75% of both classes, as nightly probe sets do.

Thresholds are chosen on the runs with an even seed and reported on the runs with an odd seed
(95% Wilson intervals): ``--analyse`` prints both.

    python benchmarks/alert_study.py --runs 24 --shard 0 --shards 2 &
    python benchmarks/alert_study.py --runs 24 --shard 1 --shards 2 &
    python benchmarks/alert_study.py --analyse benchmarks/results/alert_study.json

Each shard appends its runs to its own JSON file as they finish (an interrupted study resumes
where it stopped); ``--analyse`` reads every ``alert_study*.json`` beside the path it is given.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "ruler_bias"))

from data import MEAN, STD, generate
from model import LesionClassifier

from lightning_sas.audit.run import run_audit
from lightning_sas.audit.verdict import DEFAULT_MIN_ROI_PIXELS, AlertRule, Evidence, decide
from lightning_sas.methods import (
    LIME,
    GradCAM,
    GradientSHAP,
    IntegratedGradients,
    Occlusion,
    Saliency,
    SaS,
    SmoothGrad,
)
from lightning_sas.probes.probe_set import Probes, stratified_indices
from lightning_sas.scores.metrics import flat_maps
from lightning_sas.trust.intervention import Artifacts, intervene

KINDS = ("ruler", "patch")
#: Counterfactual accuracy drop from which a run counts as "uses the shortcut".
USES_SHORTCUT_DROP = 0.10
#: Artifact rate of both classes in the probe split (nightly probe sets carry it on both).
PROBE_ARTIFACT_RATE = 0.75
#: ROIs smaller than this many pixels are not scored (the rule's default).
MIN_ROI_PIXELS = DEFAULT_MIN_ROI_PIXELS


def variants() -> dict[str, Callable[[], object]]:
    """Every method at its defaults, plus the variants the study compares (name -> factory)."""
    return {
        "sas": SaS,
        "sas_paper_objective": lambda: SaS(objective="paper"),
        "gradcam": GradCAM,
        "saliency": Saliency,
        "smoothgrad": SmoothGrad,
        "ig": IntegratedGradients,
        "ig_absolute": lambda: IntegratedGradients(sign="absolute"),
        "gradientshap": GradientSHAP,
        "gradientshap_absolute": lambda: GradientSHAP(sign="absolute"),
        "occlusion": Occlusion,
        "lime": LIME,
    }


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


def split_plan(biased: bool, seed: int, n_train: int, n_val: int) -> tuple:
    """One run's draws, shared by the studies: ``(rng, high, low, rates, counts, seeds)`` -- the
    artifact rates of the two classes, each split's rates, sizes and seed; ``rng`` goes on drawing
    the run's other choices."""
    rng = np.random.default_rng(10_000 + seed)
    high, low = float(rng.uniform(0.6, 0.95)), float(rng.uniform(0.02, 0.2))
    if not biased:
        high = low = (high + low) / 2
    rates = {
        "train": (high, low),
        "val": (high, low),
        "counterfactual": (low, high),
        "probe": (PROBE_ARTIFACT_RATE, PROBE_ARTIFACT_RATE),
    }
    counts = {"train": n_train, "val": n_val, "counterfactual": n_val, "probe": n_val}
    seeds = np.random.SeedSequence(seed).generate_state(4, dtype=np.uint32)
    return rng, high, low, rates, counts, seeds


def make_data(kind: str, biased: bool, seed: int, size: int, n_train: int, n_val: int) -> dict:
    rng, high, low, rates, counts, seeds = split_plan(biased, seed, n_train, n_val)
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


def one_run(kind: str, biased: bool, seed: int, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    data = make_data(kind, biased, seed, args.image_size, args.train_size, args.val_size)
    train_images, train_labels, train_masks = data["splits"]["train"]
    model = train(train_images, train_labels, args.epochs, seed)
    val_images, val_labels, _ = data["splits"]["val"]
    cf_images, cf_labels, _ = data["splits"]["counterfactual"]
    val_acc, cf_acc = accuracy(model, val_images, val_labels), accuracy(model, cf_images, cf_labels)

    # Probes: from the probe split (artifact on both classes), stratified over (class, has artifact).
    probe_images, probe_labels, probe_masks = data["splits"]["probe"]
    has = probe_masks.flatten(1).any(dim=1)
    strata = (probe_labels * 2 + has.long()).tolist()
    chosen = sorted(stratified_indices(strata, args.probes, seed))
    probes = Probes(
        probe_images[chosen], probe_labels[chosen], probe_masks[chosen] > 0, [f"probe[{i}]" for i in chosen], chosen
    )
    methods = {name: factory() for name, factory in variants().items()}
    result = run_audit(model, probes, methods)
    method_records = {}
    for name, maps in result.maps.items():
        method_records[name] = {
            "roi_share": [float(v) for v in result.roi_share[name]],
            "flat": [bool(v) for v in flat_maps(maps)],
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
        "image_pixels": args.image_size**2,
        "labels": probes.labels.tolist(),
        "predictions": result.predictions.tolist(),
        "roi_pixels": [int(v) for v in probes.roi.flatten(1).sum(dim=1)],
        "val_acc": val_acc,
        "counterfactual_acc": cf_acc,
        "drop": val_acc - cf_acc,
        "methods": method_records,
        "errors": result.errors,
        "flip_rate": effect.flip_rate,
        "eligible": int(effect.eligible.sum()),
        "probability_change": effect.mean_probability_change,
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- analysis


def enrichment(run: dict, method: str) -> float:
    """The rule's statistic for one run and method, as :func:`lightning_sas.audit.verdict.decide` computes
    it (probes with an ROI of at least ``min_roi_pixels``, maps that are not flat), NaN if none count."""
    record = run["methods"][method]
    # Flat maps score NaN in the audit (these runs recorded their share and the flag apart).
    shares = [math.nan if flat else share for share, flat in zip(record["roi_share"], record["flat"], strict=True)]
    evidence = Evidence(image_pixels=run["image_pixels"], roi_pixels=run["roi_pixels"], roi_share={method: shares})
    verdict = decide(evidence, AlertRule(min_enrichment=0.0, min_flip_rate=None, min_roi_pixels=MIN_ROI_PIXELS))
    return verdict.scores.get(method, {}).get("roi_enrichment", math.nan)


def mean_lift(run: dict, method: str) -> float:
    """The old statistic: the mean over probes with an ROI of ``roi_share / (|R| / P)``."""
    pixels = torch.tensor(run["roi_pixels"], dtype=torch.float32)
    share = torch.tensor(run["methods"][method]["roi_share"])
    return float((share / (pixels / run["image_pixels"]))[pixels > 0].mean())


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(hits: int, total: int) -> str:
    low, high = wilson(hits, total)
    return f"{hits}/{total} ({hits / max(total, 1):.0%}, [{low:.0%}, {high:.0%}])"


def groups(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(runs that use the shortcut, clean runs)."""
    uses = [run for run in runs if run["biased"] and run["drop"] >= USES_SHORTCUT_DROP]
    return uses, [run for run in runs if not run["biased"]]


#: No enrichment threshold below this: a map a tenth of the way from chance to "every top pixel on
#: the ROI" is the least the rule calls evidence, however quiet the study's clean runs were (a prior,
#: not a measurement: it keeps a method whose clean runs sat at chance from alerting at chance + 0.02
#: on data the study never saw).
MIN_ENRICHMENT_THRESHOLD = 0.1


def clean_ceiling(statistic: Callable[[dict], float], runs: list[dict], step: float, floor: float = 0.0) -> float:
    """The lowest multiple of ``step`` (at least ``floor``) that no clean run of ``runs`` exceeds:
    alerting above it gives no false alarm on these runs."""
    _, clean = groups(runs)
    highest = max((statistic(run) for run in clean), default=-math.inf)
    return round(max(step, floor, math.ceil(highest / step - 1e-9) * step), 4)


def confusion(
    alert: Callable[[dict], bool], runs: list[dict], kinds: list[str | None]
) -> list[tuple[int, int, int, int]]:
    """Per kind (``None``: all): (hits, positives, false alarms, negatives)."""
    uses, clean = groups(runs)
    rows = []
    for kind in kinds:
        positives = [r for r in uses if kind is None or r["kind"] == kind]
        negatives = [r for r in clean if kind is None or r["kind"] == kind]
        rows.append((sum(map(alert, positives)), len(positives), sum(map(alert, negatives)), len(negatives)))
    return rows


def table_row(name: str, cells: list[tuple[int, int, int, int]]) -> str:
    return f"| {name} | " + " | ".join(f"{rate(h, p)} | {rate(f, n)}" for h, p, f, n in cells) + " |"


def finite(value: float) -> float:
    return -math.inf if math.isnan(value) else value


#: Which variant of a method the rule uses is chosen on the selection half: name -> candidates.
CHOICES = {
    "sas": ("sas", "sas_paper_objective"),
    "ig": ("ig", "ig_absolute"),
    "gradientshap": ("gradientshap", "gradientshap_absolute"),
}
ENRICHMENT_STEP = 0.02
FLIP_STEP = 0.05


def choose_rule(selection: list[dict], methods: list[str]) -> dict:
    """Everything the rule needs, chosen on ``selection`` alone: per variant its threshold (no
    false alarm on the selection's clean runs), which variant of each method votes (the higher
    selection recall; the default on a tie), and the flip-rate threshold."""
    uses, _ = groups(selection)
    thresholds = {
        m: clean_ceiling(lambda r, m=m: finite(enrichment(r, m)), selection, ENRICHMENT_STEP, MIN_ENRICHMENT_THRESHOLD)
        for m in methods
    }

    def recall(m: str) -> int:
        return sum(finite(enrichment(r, m)) > thresholds[m] for r in uses)

    chosen = {}
    for method in methods:
        family = next((name for name, options in CHOICES.items() if method in options), method)
        if family in chosen:
            continue
        options = CHOICES.get(family, (method,))
        chosen[family] = max(options, key=lambda m: (recall(m), m == options[0]))
    flip = clean_ceiling(lambda r: finite(r["flip_rate"]), selection, FLIP_STEP)
    return {"thresholds": thresholds, "voters": chosen, "flip": flip, "recall": {m: recall(m) for m in methods}}


def analyse(runs: list[dict]) -> str:
    kinds = sorted({run["kind"] for run in runs})
    selection = [run for run in runs if run["seed"] % 2 == 0]
    held_out = [run for run in runs if run["seed"] % 2 == 1]
    methods = [m for m in variants() if all(m in run["methods"] for run in runs)]
    lines = []
    for label, part in (("selection (even seeds)", selection), ("held-out (odd seeds)", held_out)):
        uses, clean = groups(part)
        lines.append(
            f"{label}: {len(part)} runs, {sum(r['biased'] for r in part)} biased ({len(uses)} use the shortcut: "
            f"counterfactual drop >= {USES_SHORTCUT_DROP}), {len(clean)} clean."
        )
    rule = choose_rule(selection, methods)
    thresholds, voters, flip = rule["thresholds"], rule["voters"], rule["flip"]
    columns = [*kinds, None]
    header = "| criterion | " + " | ".join(f"{k or 'all'}: recall | {k or 'all'}: false alarms" for k in columns) + " |"
    separator = "|" + "---|" * (1 + 2 * len(columns))

    def map_alert(run: dict, names: Iterable[str] = tuple(voters.values())) -> bool:
        return any(finite(enrichment(run, m)) > thresholds[m] for m in names)

    default_pair = (voters["sas"], voters["gradcam"])

    def flip_alert(run: dict) -> bool:
        return finite(run["flip_rate"]) > flip

    lines += ["", "Chosen on the selection half:", "", f"- voters: {json.dumps(voters)}"]
    lines += [f"- enrichment thresholds: {json.dumps({m: thresholds[m] for m in methods})}"]
    lines += [f"- selection recall per variant: {json.dumps(rule['recall'])}", f"- flip-rate threshold: {flip}"]
    for label, part in (("Held-out", held_out), ("Selection", selection)):
        rows = [header, separator]
        for method in methods:
            marker = " (votes)" if method in voters.values() else ""
            rows.append(
                table_row(
                    f"{method} enrichment > {thresholds[method]:g}{marker}",
                    confusion(lambda r, m=method: finite(enrichment(r, m)) > thresholds[m], part, columns),
                )
            )
        for method in ("sas", "gradcam"):
            lift = clean_ceiling(lambda r, m=method: mean_lift(r, m), selection, 1.0)
            rows.append(
                table_row(
                    f"{method} mean lift > {lift:g} (old statistic)",
                    confusion(lambda r, m=method, t=lift: mean_lift(r, m) > t, part, columns),
                )
            )
        rows.append(
            table_row(
                "SaS or Grad-CAM enrichment (the default methods, without artifacts)",
                confusion(lambda r: map_alert(r, default_pair), part, columns),
            )
        )
        rows.append(
            table_row(
                "SaS or Grad-CAM enrichment, or the flip rate (the default methods, with artifacts)",
                confusion(lambda r: map_alert(r, default_pair) or flip_alert(r), part, columns),
            )
        )
        rows.append(
            table_row("any of the 8 methods' enrichment (without artifacts)", confusion(map_alert, part, columns))
        )
        rows.append(table_row(f"flip_rate > {flip:g}", confusion(flip_alert, part, columns)))
        rows.append(
            table_row(
                "any of the 8 methods' enrichment, or the flip rate (with artifacts)",
                confusion(lambda r: map_alert(r) or flip_alert(r), part, columns),
            )
        )
        lines += ["", f"{label} recall and false alarms (95% Wilson intervals):", "", *rows]
    return "\n".join(lines)


def load_runs(path: Path) -> list[dict]:
    runs: list[dict] = []
    for file in sorted(path.parent.glob(path.stem + "*.json")):
        runs += json.loads(file.read_text())["runs"]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=24, help="biased and clean runs per shortcut kind (seeds)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=1200)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--shard", type=int, default=0, help="this process runs the seeds with seed %% shards == shard")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "alert_study.json")
    parser.add_argument("--analyse", type=Path, help="print the tables of a finished study and exit")
    args = parser.parse_args()
    if args.analyse:
        print(analyse(load_runs(args.analyse)))
        return
    torch.set_num_threads(1)
    out = args.out if args.shards == 1 else args.out.with_name(f"{args.out.stem}.shard{args.shard}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(out.read_text()) if out.is_file() else {"settings": {}, "runs": []}
    record["settings"] = {key: str(value) for key, value in vars(args).items() if key not in ("analyse", "out")}
    done = {(run["kind"], run["biased"], run["seed"]) for run in record["runs"]}
    for seed in range(args.shard, args.runs, args.shards):
        for kind in KINDS:
            for biased in (True, False):
                if (kind, biased, seed) in done:
                    continue
                run = one_run(kind, biased, seed, args)
                record["runs"].append(run)
                out.write_text(json.dumps(record, indent=1))
                print(
                    f"{kind:5s} {'biased' if biased else 'clean ':6s} seed {seed:2d}: drop {run['drop']:+.2f} "
                    f"SaS {enrichment(run, 'sas'):.2f} Grad-CAM {enrichment(run, 'gradcam'):.2f} "
                    f"flip {run['flip_rate']:.2f} {run['seconds']:.0f} s",
                    flush=True,
                )
    print(analyse(load_runs(args.out)))


if __name__ == "__main__":
    main()
