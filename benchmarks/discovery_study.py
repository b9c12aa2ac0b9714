"""How often does shortcut discovery find a shortcut it was not told about, and how often does it
cry wolf? (issue 22)

Discovery (:func:`lightning_sas.trust.discovery.discover`) looks for a localised shortcut without
artifact masks or artifact examples, at two levels of side information:

- ``object``: the object masks (here the lesion segmentations) are known: evidence outside the
  object is suspect;
- ``none``: nothing but the model, the probes and their maps.

The study trains many small seeded models, biased and clean, on seven shortcut kinds
(:mod:`shortcut_kinds`: ``ruler``, ``patch``, ``ink``, ``vignette``, ``text``, ``bandaid`` and the
non-local control ``colour_cast``), as ``alert_study`` does (its data rates, ``train``, the
counterfactual ground truth, the even/odd seed split and the Wilson intervals are reused by
import), and caches per run everything discovery needs, so that the expensive part (training and
the attribution maps) is done once and the analysis can be re-run as the algorithm changes:

    outputs/discovery_study/<kind>-<biased|clean>-<seed>.pt
        state_dict, images (normalised probes), labels, predictions, confidences, object_masks
        (lesions), artifact_masks, maps {sas, gradcam, occlusion}, val_acc, counterfactual_acc,
        drop, rate_high, rate_low, style, settings, seconds (and per part)

Biased runs draw the artifact rate of the "malignant" class from [0.6, 0.95] and of the "benign"
class from [0.02, 0.2] (alert_study's draws: the same rates per seed); clean runs give both
classes their mean. A run "uses the shortcut" when its accuracy on a validation split with the
bias drops by >= 0.10 on a split with the bias swapped. Probe sets: 64 probes, 32 per class, 24 of
them with the artifact (75% of both classes, as nightly probe sets).

    python benchmarks/discovery_study.py --runs-per-cell 8 --shard 0 --shards 2 --out outputs/discovery_study
    python benchmarks/discovery_study.py --runs-per-cell 8 --shard 1 --shards 2 --out outputs/discovery_study
    python benchmarks/discovery_study.py --analyse --out outputs/discovery_study

``--analyse`` runs discovery on every cached run (per level and method; the records are cached
under ``<out>/analysis-<hash of discovery.py>.json``, so an unchanged algorithm is not re-run),
chooses decision rules on the even seeds and reports them on the odd seeds, and writes
``benchmarks/results/discovery_study.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "ruler_bias"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from alert_study import PROBE_ARTIFACT_RATE, USES_SHORTCUT_DROP, accuracy, normalise, split_plan, train, wilson
from model import LesionClassifier
from shortcut_kinds import KINDS, LOCAL_KINDS, draw_style, render

from lightning_sas.audit.run import AuditResult, run_audit
from lightning_sas.methods import GradCAM, Occlusion, SaS
from lightning_sas.probes.probe_set import Probes

DEFAULT_OUT = ROOT / "outputs" / "discovery_study"
RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("sas", "gradcam", "occlusion")
LEVELS = ("object", "none")
#: False-alarm rate the rules may reach on the selection half, per level.
MAX_FALSE_ALARMS = {"object": 0.05, "none": 0.10}


def method_objects(sas_iterations: int | None) -> dict[str, object]:
    sas = SaS() if sas_iterations is None else SaS(iterations=sas_iterations)
    return {"sas": sas, "gradcam": GradCAM(), "occlusion": Occlusion()}


# ----------------------------------------------------------------------------- data and one run


def make_data(kind: str, biased: bool, seed: int, size: int, n_train: int, n_val: int) -> dict:
    """The four splits of one run (normalised images, labels, object masks, artifact masks), as
    ``alert_study.make_data`` makes them: the same rate draws per seed, the same split seeds."""
    _, high, low, rates, counts, seeds = split_plan(biased, seed, n_train, n_val)
    # One look per run (colour, size range), shared by its splits.
    style = draw_style(kind, np.random.default_rng([seed, KINDS.index(kind), 22]))
    splits = {}
    for (split, count), split_seed in zip(counts.items(), seeds, strict=True):
        images, labels, objects, artifacts = render(kind, count, size, *rates[split], int(split_seed), style)
        splits[split] = (normalise(images), labels, objects > 0, artifacts > 0)
    return {"splits": splits, "rate_high": high, "rate_low": low, "style": style}


def choose_probes(labels: torch.Tensor, has: torch.Tensor, count: int, seed: int) -> list[int]:
    """``count`` probes, half per class, ``PROBE_ARTIFACT_RATE`` of each class with the artifact."""
    rng = np.random.default_rng([seed, 64])
    per_class = count // 2
    with_artifact = int(round(PROBE_ARTIFACT_RATE * per_class))
    chosen: list[int] = []
    for label in (0, 1):
        for flag, take in ((True, with_artifact), (False, per_class - with_artifact)):
            pool = torch.nonzero((labels == label) & (has == flag)).flatten().numpy()
            if len(pool) < take:
                raise ValueError(
                    f"probe split has {len(pool)} images of class {label} with artifact={flag}, {take} needed"
                )
            chosen += rng.choice(pool, take, replace=False).tolist()
    return sorted(chosen)


def probe_record(
    probes: Probes, chosen: list[int], result: AuditResult, objects: torch.Tensor, artifacts: torch.Tensor
) -> dict:
    """The cache's probe fields of one run: the probes, their indices in the split, what the model
    predicted (``result``: the last ``run_audit``), and their object and artifact masks."""
    return {
        "images": probes.images.clone(),
        "labels": probes.labels.clone(),
        "indices": chosen,
        "predictions": result.predictions.clone(),
        "confidences": result.confidences.clone(),
        "object_masks": objects[chosen].clone(),
        "artifact_masks": artifacts[chosen].clone(),
    }


def run_name(kind: str, biased: bool, seed: int) -> str:
    return f"{kind}-{'biased' if biased else 'clean'}-{seed}"


def one_run(kind: str, biased: bool, seed: int, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    data = make_data(kind, biased, seed, args.image_size, args.train_size, args.val_size)
    generated = time.perf_counter()
    train_images, train_labels, _, _ = data["splits"]["train"]
    model = train(train_images, train_labels, args.epochs, seed)
    trained = time.perf_counter()
    val_images, val_labels, _, _ = data["splits"]["val"]
    cf_images, cf_labels, _, _ = data["splits"]["counterfactual"]
    val_acc, cf_acc = accuracy(model, val_images, val_labels), accuracy(model, cf_images, cf_labels)

    probe_images, probe_labels, probe_objects, probe_artifacts = data["splits"]["probe"]
    chosen = choose_probes(probe_labels, probe_artifacts.flatten(1).any(dim=1), args.probes, seed)
    probes = Probes(
        probe_images[chosen], probe_labels[chosen], probe_artifacts[chosen], [f"probe[{i}]" for i in chosen], chosen
    )
    audited = time.perf_counter()
    # One audit per method, to time each; the maps are the same as one audit with all three.
    maps, errors, method_seconds = {}, {}, {}
    for name, method in method_objects(args.sas_iterations).items():
        before = time.perf_counter()
        result = run_audit(model, probes, {name: method})
        method_seconds[f"maps_{name}"] = time.perf_counter() - before
        maps.update({key: value.detach().clone() for key, value in result.maps.items()})
        errors.update(result.errors)
    finished = time.perf_counter()
    return {
        "kind": kind,
        "biased": biased,
        "seed": seed,
        "state_dict": {key: value.clone() for key, value in model.state_dict().items()},
        **probe_record(probes, chosen, result, probe_objects, probe_artifacts),
        "maps": maps,
        "errors": errors,
        "val_acc": val_acc,
        "counterfactual_acc": cf_acc,
        "drop": val_acc - cf_acc,
        "rate_high": data["rate_high"],
        "rate_low": data["rate_low"],
        "style": data["style"],
        "settings": {
            "image_size": args.image_size,
            "train_size": args.train_size,
            "val_size": args.val_size,
            "epochs": args.epochs,
            "probes": args.probes,
            "sas_iterations": args.sas_iterations or 95,
            "width": 12,
            "torch_threads": torch.get_num_threads(),
        },
        "seconds": finished - started,
        "seconds_parts": {
            "data": generated - started,
            "train": trained - generated,
            "accuracy": audited - trained,
            "maps": finished - audited,
            **method_seconds,
        },
    }


def run_study(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = range(args.first_seed, args.first_seed + args.runs_per_cell)
    kinds = args.kinds or list(KINDS)
    for seed in seeds:
        if seed % args.shards != args.shard:
            continue
        for kind in kinds:
            for biased in (True, False):
                path = args.out / f"{run_name(kind, biased, seed)}.pt"
                if path.exists():
                    continue
                run = one_run(kind, biased, seed, args)
                temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                torch.save(run, temporary)
                os.replace(temporary, path)
                parts = " ".join(f"{k} {v:.1f}" for k, v in run["seconds_parts"].items())
                print(
                    f"{kind:11s} {'biased' if biased else 'clean ':6s} seed {seed:2d}: val {run['val_acc']:.2f} "
                    f"drop {run['drop']:+.2f}  {run['seconds']:.1f} s ({parts})"
                    + (f"  errors {run['errors']}" if run["errors"] else ""),
                    flush=True,
                )


def choose_natural_probes(labels: torch.Tensor, count: int, seed: int) -> list[int]:
    """``count`` probes, half per class, drawn at random: the artifact comes at the split's own
    rates (the bias the model was trained on), as in a probe set taken from the validation data."""
    rng = np.random.default_rng([seed, 65])
    chosen: list[int] = []
    for label in (0, 1):
        pool = torch.nonzero(labels == label).flatten().numpy()
        chosen += rng.choice(pool, count // 2, replace=False).tolist()
    return sorted(chosen)


def natural_run(trained: dict, args: argparse.Namespace) -> dict:
    """The run ``trained`` (a main-study cache entry: same model, same data) audited on probes
    from its validation split, which carries the training bias, instead of the probe split."""
    started = time.perf_counter()
    settings = trained["settings"]
    data = make_data(
        trained["kind"],
        trained["biased"],
        trained["seed"],
        settings["image_size"],
        settings["train_size"],
        settings["val_size"],
    )
    images, labels, objects, artifacts = data["splits"]["val"]
    chosen = choose_natural_probes(labels, settings["probes"], trained["seed"])
    probes = Probes(images[chosen], labels[chosen], artifacts[chosen], [f"val[{i}]" for i in chosen], chosen)
    model = load_model(trained)
    methods = {
        name: method for name, method in method_objects(settings["sas_iterations"]).items() if name in args.methods
    }
    result = run_audit(model, probes, methods)
    return {
        **{
            key: trained[key]
            for key in (
                "kind",
                "biased",
                "seed",
                "state_dict",
                "val_acc",
                "counterfactual_acc",
                "drop",
                "rate_high",
                "rate_low",
                "style",
                "settings",
            )
        },
        **probe_record(probes, chosen, result, objects, artifacts),
        "maps": {key: value.detach().clone() for key, value in result.maps.items()},
        "errors": dict(result.errors),
        "probe_source": "val",
        "seconds": time.perf_counter() - started,
        "seconds_parts": {"maps": time.perf_counter() - started},
    }


def run_natural(args: argparse.Namespace) -> None:
    """Audit every run of the main cache ``args.natural_probes`` again on natural-rate probes."""
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted(args.natural_probes.glob("*.pt"), key=lambda p: (int(p.stem.rsplit("-", 1)[1]), p.stem)):
        seed = int(path.stem.rsplit("-", 1)[1])
        target = args.out / path.name
        if seed % args.shards != args.shard or target.exists():
            continue
        run = natural_run(torch.load(path, weights_only=False), args)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        torch.save(run, temporary)
        os.replace(temporary, target)
        with_artifact = run["artifact_masks"].flatten(1).any(dim=1)
        print(
            f"{path.stem}: {run['seconds']:.1f} s; probes with the artifact: class 1 "
            f"{int(with_artifact[run['labels'] == 1].sum())}/32, "
            f"class 0 {int(with_artifact[run['labels'] == 0].sum())}/32",
            flush=True,
        )


# ----------------------------------------------------------------------------- discovery on the cache


def load_model(run: dict) -> LesionClassifier:
    model = LesionClassifier(width=run["settings"].get("width", 12))
    model.load_state_dict(run["state_dict"])
    return model.eval()


def _float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def overlap(candidate: object, run: dict) -> dict:
    """How well a candidate's masks (on its source probes) cover the true artifact there: mean
    IoU, the share of its pixels on the artifact, and the share of the artifact it covers."""
    masks = getattr(candidate, "masks", None)
    sources = list(getattr(candidate, "sources", []))
    if masks is None or not sources:
        return {"iou": None, "precision": None, "coverage": None}
    masks = masks.bool().cpu()
    truth = run["artifact_masks"][sources].bool()
    intersection = (masks & truth).flatten(1).sum(dim=1).float()
    union = (masks | truth).flatten(1).sum(dim=1).float()
    return {
        "iou": float((intersection / union.clamp_min(1)).mean()),
        "precision": float(intersection.sum() / masks.sum().clamp_min(1)),
        "coverage": float(intersection.sum() / truth.sum().clamp_min(1)),
        "sources_with_artifact": float(truth.flatten(1).any(dim=1).float().mean()),
    }


#: Read when a candidate has no ``to_dict`` (a stand-in module).
CANDIDATE_FIELDS = (
    "class_index",
    "area",
    "recurrence",
    "consistency",
    "outside_object",
    "flip_rate",
    "probability_change",
    "control_flip_rate",
    "trials",
)


def discovery_records(run: dict, discover: Callable, methods: tuple[str, ...] = METHODS) -> dict:
    """Per level and method, every candidate's fields (and its overlap with the artifact)."""
    model = load_model(run)
    has = run["artifact_masks"].flatten(1).any(dim=1)
    record: dict = {}
    for level in LEVELS:
        for method in methods:
            if method not in run["maps"]:
                continue
            started = time.perf_counter()
            try:
                found = discover(
                    model,
                    run["images"],
                    run["maps"][method],
                    run["predictions"],
                    object_masks=run["object_masks"] if level == "object" else None,
                    seed=run["seed"],
                    **({"labels": run["labels"]} if "labels" in inspect.signature(discover).parameters else {}),
                )
            except Exception as error:  # noqa: BLE001 - one failure must not lose the study
                record[f"{level}/{method}"] = {"error": f"{type(error).__name__}: {error}"}
                continue
            candidates = []
            for candidate in found.candidates:
                if hasattr(candidate, "to_dict"):
                    fields = {k: v for k, v in candidate.to_dict().items() if k not in ("sources", "places")}
                    fields = {k: (_float(v) if isinstance(v, float) else v) for k, v in fields.items()}
                    fields["places"] = len(getattr(candidate, "places", []))
                else:
                    fields = {name: _float(getattr(candidate, name, None)) for name in CANDIDATE_FIELDS}
                    fields["box"] = [float(v) for v in getattr(candidate, "box", ())]
                fields["sources"] = len(getattr(candidate, "sources", []))
                fields.update(overlap(candidate, run))
                candidates.append(fields)
            share = getattr(found, "outside_share", None)
            extra: dict = {
                "outside_enrichment": _float(getattr(found, "outside_enrichment", None)),
                "object_enrichment": _float(getattr(found, "object_enrichment", None)),
                "strategies": {
                    str(key): {"clusters": value.clusters, "eigengap": _float(value.eigengap)}
                    for key, value in sorted(getattr(found, "strategies", {}).items())
                },
            }
            if share is not None:
                share = share.float().cpu()
                extra |= {
                    "outside_share_mean": _float(share.nanmean()),
                    "outside_share_with_artifact": _float(share[has].nanmean()) if has.any() else None,
                    "outside_share_without_artifact": _float(share[~has].nanmean()) if (~has).any() else None,
                }
            record[f"{level}/{method}"] = {
                "candidates": candidates,
                **extra,
                "seconds": time.perf_counter() - started,
            }
    return record


def run_summary(run: dict) -> dict:
    return {
        "kind": run["kind"],
        "biased": run["biased"],
        "seed": run["seed"],
        "drop": run["drop"],
        "val_acc": run["val_acc"],
        "counterfactual_acc": run["counterfactual_acc"],
        "rate_high": run["rate_high"],
        "rate_low": run["rate_low"],
        "seconds": run["seconds"],
        "seconds_parts": run.get("seconds_parts", {}),
        "settings": run.get("settings", {}),
        "map_errors": run["errors"],
        # Share of each class's probes with the artifact.
        "artifact_share": {
            str(label): float(run["artifact_masks"][run["labels"] == label].flatten(1).any(dim=1).float().mean())
            for label in (0, 1)
        },
        "probe_accuracy": float((run["predictions"] == run["labels"]).float().mean()),
    }


def discovery_module(path: Path | None = None):
    """``lightning_sas.trust.discovery``, or a stand-in with the same API from a file (for tests)."""
    if path is None:
        from lightning_sas.trust import discovery

        return discovery
    specification = importlib.util.spec_from_file_location("discovery_stand_in", path)
    module = importlib.util.module_from_spec(specification)
    sys.modules[specification.name] = module  # dataclasses look their module up
    specification.loader.exec_module(module)
    return module


def analysis_records(out: Path, refresh: bool = False, stand_in: Path | None = None) -> tuple[list[dict], str]:
    """Discovery on every cached run, cached per version (source hash) of the discovery module."""
    discovery = discovery_module(stand_in)
    # The module and the package files it builds on (a change in any of them re-runs discovery).
    files = [Path(discovery.__file__)]
    if stand_in is None:
        package = ROOT / "lightning_sas"
        files = sorted((package / "trust" / "discovery").glob("*.py")) + [package / "scores" / "object_evidence.py"]
    source = b"".join(path.read_bytes() for path in files if path.exists())
    version = hashlib.sha256(source).hexdigest()[:12]
    cache = out / f"analysis-{version}.json"
    records = {} if refresh or not cache.exists() else json.loads(cache.read_text())
    torch.set_num_threads(1)
    paths = sorted(out.glob("*.pt"))
    for number, path in enumerate(paths):
        if path.stem in records:
            continue
        run = torch.load(path, weights_only=False)
        started = time.perf_counter()
        records[path.stem] = {**run_summary(run), "discovery": discovery_records(run, discovery.discover)}
        print(f"[{number + 1}/{len(paths)}] {path.stem}: {time.perf_counter() - started:.1f} s", flush=True)
        if number % 5 == 4:
            cache.write_text(json.dumps(records))
    cache.write_text(json.dumps(records))
    return list(records.values()), version


# ----------------------------------------------------------------------------- decision rules


def uses(run: dict) -> bool:
    """Ground truth: a biased run whose counterfactual accuracy drop is at least 0.10."""
    return run["biased"] and run["drop"] >= USES_SHORTCUT_DROP


def candidates_of(run: dict, level: str, methods: tuple[str, ...]) -> list[dict]:
    """The candidates of ``methods`` at ``level``, each method's most suspicious first."""
    found = []
    for method in methods:
        entry = run["discovery"].get(f"{level}/{method}", {})
        found += [{**c, "method": method} for c in entry.get("candidates", [])]
    return found


def _value(candidate: dict, name: str, default: float) -> float:
    value = candidate.get(name)
    return default if value is None else value


#: Rule families. Each rule alerts when some candidate (of the rule's methods) passes every active
#: condition; ``None`` switches a condition off.
#:
#: - ``flip``: ``flip_rate > flip``, ``control_flip_rate <= control``, ``outside_object >= outside``
#:   (the brief's rule; ``outside`` only with object masks);
#: - ``flip+contrast``: the same and ``contrast >= contrast`` (consistency minus other-class
#:   similarity: a present-or-absent thing, not the object every image has);
#: - ``flip+recurrence``: ``flip`` and ``recurrence >= recurrence`` (found in that share of the
#:   probes predicted as its class: a shortcut recurs, a stray region does not);
#: - ``flip+errors``: ``flip_rate > flip``, ``flip_rate - control_flip_rate >= margin`` (a non-local cue
#:   flips its control as much), ``recurrence >= recurrence`` and ``source_accuracy <= errors`` (the
#:   probes where the region appears are labelled as its class no more often than that: it goes with
#:   the model's errors where the probes break its link with the label; the object goes with the label);
#:   ``outside`` as in ``flip``;
#: - ``suspicion``: the module's own ordering score ``suspicion > suspicion``;
#: - ``enrichment`` (object masks only, no candidates): the pooled ``outside_enrichment`` of some
#:   method's maps ``> enrichment`` -- the baseline "is the top evidence off the object?".
FAMILIES = ("flip", "flip+contrast", "flip+recurrence", "flip+errors", "suspicion", "enrichment")
THRESHOLD = {
    "flip": "flip",
    "flip+contrast": "flip",
    "flip+recurrence": "flip",
    "flip+errors": "flip",
    "suspicion": "suspicion",
    "enrichment": "enrichment",
}
GRIDS = {
    "flip": [round(0.05 * i, 2) for i in range(20)],
    "suspicion": [round(0.02 * i, 2) for i in range(46)],
    "enrichment": [round(0.02 * i, 2) for i in range(50)],
}
CONTROL_GRID = [None, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
OUTSIDE_GRID = {"object": [None, 0.25, 0.5, 0.75, 0.9], "none": [None]}
CONTRAST_GRID = [0.0, 0.1, 0.2, 0.3, 0.5, 0.75]
RECURRENCE_GRID = [0.1, 0.2, 0.3, 0.5]
MARGIN_GRID = [0.0, 0.1, 0.2, 0.3]
ERRORS_GRID = [0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]


def conditions(family: str, level: str) -> list[dict]:
    """Every combination of the family's conditions other than its threshold."""
    if family in ("suspicion", "enrichment"):
        return [{}]
    if family == "flip+errors":
        return [
            {"outside": outside, "recurrence": recurrence, "margin": margin, "errors": errors}
            for outside, recurrence, margin, errors in itertools.product(
                OUTSIDE_GRID[level], RECURRENCE_GRID, MARGIN_GRID, ERRORS_GRID
            )
        ]
    contrasts = CONTRAST_GRID if family == "flip+contrast" else [None]
    recurrences = RECURRENCE_GRID if family == "flip+recurrence" else [None]
    return [
        {"control": control, "outside": outside, "contrast": contrast, "recurrence": recurrence}
        for control, outside, contrast, recurrence in itertools.product(
            CONTROL_GRID, OUTSIDE_GRID[level], contrasts, recurrences
        )
    ]


def passes(candidate: dict, condition: dict) -> bool:
    control, outside, contrast = condition.get("control"), condition.get("outside"), condition.get("contrast")
    recurrence = condition.get("recurrence")
    margin, errors = condition.get("margin"), condition.get("errors")
    flip = _value(candidate, "flip_rate", -math.inf)
    return (
        (control is None or _value(candidate, "control_flip_rate", 1.0) <= control)
        and (margin is None or flip - _value(candidate, "control_flip_rate", 1.0) >= margin)
        and (errors is None or _value(candidate, "source_accuracy", math.inf) <= errors)
        and (outside is None or _value(candidate, "outside_object", 0.0) >= outside)
        and (contrast is None or _value(candidate, "contrast", -math.inf) >= contrast)
        and (recurrence is None or _value(candidate, "recurrence", 0.0) >= recurrence)
    )


def score(run: dict, level: str, methods: tuple[str, ...], family: str, condition: dict) -> tuple[float, dict | None]:
    """The run's statistic under a rule without its threshold, and the candidate that gives it:
    the rule alerts iff the statistic exceeds the threshold (-inf: nothing to alert on)."""
    if family == "enrichment":
        values = [run["discovery"].get(f"{level}/{m}", {}).get("outside_enrichment") for m in methods]
        values = [v for v in values if v is not None]
        return (max(values) if values else -math.inf), None
    best, chosen = -math.inf, None
    key = "suspicion" if family == "suspicion" else "flip_rate"
    for candidate in candidates_of(run, level, methods):
        value = _value(candidate, key, -math.inf)
        if value > best and passes(candidate, condition):
            best, chosen = value, candidate
    return best, chosen


def alerts(run: dict, level: str, methods: tuple[str, ...], rule: dict) -> bool:
    return score(run, level, methods, rule["family"], rule)[0] > rule[THRESHOLD[rule["family"]]]


def alerting_candidate(run: dict, level: str, methods: tuple[str, ...], rule: dict) -> dict | None:
    """The most suspicious candidate that satisfies the rule (None for none, or an enrichment rule)."""
    key = THRESHOLD[rule["family"]]
    if rule["family"] == "enrichment":
        return None
    field = "suspicion" if rule["family"] == "suspicion" else "flip_rate"
    for candidate in candidates_of(run, level, methods):
        if _value(candidate, field, -math.inf) > rule[key] and passes(candidate, rule):
            return candidate
    return None


def choose_rule(selection: list[dict], level: str, methods: tuple[str, ...], family: str) -> dict:
    """The family's rule with the highest recall on ``selection``'s runs that use a localised
    shortcut, among those whose false-alarm rate on all its clean runs is at most
    ``MAX_FALSE_ALARMS[level]``. Ties: fewer false alarms; then fewer active conditions; then the
    condition set whose best thresholds span the widest interval (the most robust), and the middle
    of that interval."""
    positives = [r for r in selection if uses(r) and r["kind"] in LOCAL_KINDS]
    negatives = [r for r in selection if not r["biased"]]
    limit = MAX_FALSE_ALARMS[level] * len(negatives)
    grid = GRIDS[THRESHOLD[family]]
    options = []
    for condition in conditions(family, level):
        positive = np.array([score(r, level, methods, family, condition)[0] for r in positives])
        negative = np.array([score(r, level, methods, family, condition)[0] for r in negatives])
        active = sum(value is not None for value in condition.values())
        for threshold in grid:
            false_alarms = int((negative > threshold).sum())
            if false_alarms <= limit:
                hits = int((positive > threshold).sum())
                options.append(((hits, -false_alarms, -active), condition, threshold))
    if not options:
        return {"family": family, **conditions(family, level)[0], THRESHOLD[family]: math.inf, "selection": None}
    best = max(option[0] for option in options)
    tied: dict[str, list] = {}
    for key, condition, threshold in options:
        if key == best:
            tied.setdefault(json.dumps(condition), []).append(threshold)
    condition_key, thresholds = max(tied.items(), key=lambda item: (len(item[1]), item[0]))
    thresholds.sort()
    rule = {"family": family, **json.loads(condition_key), THRESHOLD[family]: thresholds[(len(thresholds) - 1) // 2]}
    rule["selection"] = [best[0], len(positives), -best[1], len(negatives)]
    return rule


def describe(rule: dict) -> str:
    family = rule["family"]
    parts = [f"{THRESHOLD[family]} > {rule[THRESHOLD[family]]:g}"]
    for name in ("control", "outside", "contrast", "recurrence", "margin", "errors"):
        if rule.get(name) is not None:
            text = {"margin": "flip - control", "errors": "source_accuracy"}.get(name, name)
            parts.append(f"{text} {'<=' if name in ('control', 'errors') else '>='} {rule[name]:g}")
    return ", ".join(parts)


def rate(hits: int, total: int) -> str:
    if total == 0:
        return "–"
    low, high = wilson(hits, total)
    return f"{hits}/{total} {hits / total:.0%} [{low:.0%}, {high:.0%}]"


RULE_SETS: dict[str, tuple[str, ...]] = {
    "sas": ("sas",),
    "gradcam": ("gradcam",),
    "occlusion": ("occlusion",),
    "sas+gradcam": ("sas", "gradcam"),
    "any": METHODS,
}


def held_out_cells(held_out: list[dict], level: str, methods: tuple[str, ...], rule: dict, kinds: list[str]) -> dict:
    """Per kind (and ``all``, ``colour_cast``): (hits, runs that use the shortcut, false alarms, clean runs).
    ``all``: recall over the localised kinds, false alarms over every clean run (colour_cast's too)."""
    cells = {}
    for kind in [*kinds, "all", "colour_cast"]:
        if kind == "all":
            positives = [r for r in held_out if uses(r) and r["kind"] in LOCAL_KINDS]
            negatives = [r for r in held_out if not r["biased"]]
        else:
            positives = [r for r in held_out if uses(r) and r["kind"] == kind]
            negatives = [r for r in held_out if not r["biased"] and r["kind"] == kind]
        hits = sum(alerts(r, level, methods, rule) for r in positives)
        false_alarms = sum(alerts(r, level, methods, rule) for r in negatives)
        cells[kind] = [hits, len(positives), false_alarms, len(negatives)]
    return cells


def analyse(records: list[dict], version: str) -> tuple[str, dict]:
    selection = [r for r in records if r["seed"] % 2 == 0]
    held_out = [r for r in records if r["seed"] % 2 == 1]
    available = {key.split("/")[1] for r in records for key in r["discovery"] if "error" not in r["discovery"][key]}
    lines = [
        f"Discovery version (sha256 of `lightning_sas/trust/discovery/*.py` and "
        f"`lightning_sas/scores/object_evidence.py`): `{version}`.",
        "",
    ]
    for label, part in (("Selection (even seeds)", selection), ("Held-out (odd seeds)", held_out)):
        n_uses = sum(map(uses, part))
        n_biased = sum(r["biased"] for r in part)
        lines.append(
            f"- {label}: {len(part)} runs, {n_biased} biased ({n_uses} use the shortcut: counterfactual drop >= "
            f"{USES_SHORTCUT_DROP}), {len(part) - n_biased} clean."
        )
    counts = []
    for kind in KINDS:
        of_kind = [r for r in records if r["kind"] == kind]
        counts.append(f"{kind} {sum(map(uses, of_kind))}/{sum(r['biased'] for r in of_kind)}")
    lines.append("- Biased runs that use the shortcut, per kind (all seeds): " + ", ".join(counts) + ".")
    errors = [
        (r["kind"], r["biased"], r["seed"], key, v["error"])
        for r in records
        for key, v in r["discovery"].items()
        if "error" in v
    ]
    if errors:
        lines.append(f"- {len(errors)} discovery calls failed, e.g. {errors[:3]}")
    kinds = [k for k in LOCAL_KINDS if any(r["kind"] == k for r in records)]
    summary: dict = {"version": version, "max_false_alarms": MAX_FALSE_ALARMS, "rules": {}}
    for level in LEVELS:
        lines += [
            "",
            f"## {'Object masks' if level == 'object' else 'Nothing'}: rules chosen for the best recall at false "
            f"alarms <= {MAX_FALSE_ALARMS[level]:.0%} on the selection half",
            "",
            "Recall: share of the runs that use a localised shortcut on which the rule alerts; FA (false "
            "alarms): share of the clean runs (all seven kinds, colour_cast's included) on which it alerts; "
            "95% Wilson intervals. colour_cast (non-local): alerts on its biased runs that use the cast, and "
            "on its clean runs.",
            "",
        ]
        main = [
            "| rule (chosen on the selection half) | selection: recall | selection: FA | held-out: recall "
            "(localised kinds) | held-out: FA (all clean runs) | colour_cast: alerts on runs that use it | "
            "colour_cast: FA |",
            "|---|---|---|---|---|---|---|",
        ]
        detail = [
            "| rule | " + " | ".join(kinds) + " |",
            "|---|" + "---|" * len(kinds),
        ]
        for family in FAMILIES:
            if family == "enrichment" and level != "object":
                continue
            for name, methods in RULE_SETS.items():
                if not set(methods) <= available:
                    continue
                rule = choose_rule(selection, level, methods, family)
                cells = held_out_cells(held_out, level, methods, rule, kinds)
                summary["rules"][f"{level}/{family}/{name}"] = {**rule, "held_out": cells}
                sel = rule["selection"]
                label = f"{family} [{name}]: {describe(rule)}"
                main.append(
                    f"| {label} | "
                    + (f"{rate(sel[0], sel[1])} | {rate(sel[2], sel[3])}" if sel else "no rule fits | –")
                    + f" | {rate(*cells['all'][:2])} | {rate(*cells['all'][2:])} | "
                    f"{rate(*cells['colour_cast'][:2])} | {rate(*cells['colour_cast'][2:])} |"
                )
                detail.append(
                    f"| {family} [{name}] | "
                    + " | ".join(f"{rate(*cells[k][:2])}; FA {rate(*cells[k][2:])}" for k in kinds)
                    + " |"
                )
        lines += main
        lines += ["", "Per kind, held-out: recall; false alarms (FA) on that kind's clean runs:", "", *detail]
        lines += ["", statistics_table(records, level)]
        lines += ["", localisation_table(records, level, summary)]
        lines += ["", colour_cast_table(records, level)]
    lines += [
        "",
        "## The package's default rule (`AlertRule()`) on SaS maps: the verdicts",
        "",
        "What `lightning-sas audit` and the callback decide with discovery alone (exit 1 / 2 / 0). Without "
        "object masks the default rule has two tests (`DiscoveryThresholds`): with labels, a region that flips "
        "the other classes and goes with the model's errors is a shortcut, and one that passes only the "
        "control test while its probes are labelled as its class leaves the verdict at 'cannot tell'; the "
        "thresholds of each test are the selection half's `flip+errors [sas]` and `flip+recurrence [sas]` "
        "rules above, rounded; their combination was not tuned.",
    ]
    for level in LEVELS:
        for label, part in (("held-out (odd seeds)", held_out), ("selection (even seeds)", selection)):
            lines += [
                "",
                f"{'Object masks' if level == 'object' else 'Nothing'}, {label}:",
                "",
                outcome_table(part, level),
            ]
    return "\n".join(lines), summary


def statistics_table(runs: list[dict], level: str) -> str:
    """Per kind and method: the statistics the rules threshold, on the runs that use the shortcut
    and on the clean runs (all seeds)."""
    rows = [
        "The statistics (all seeds; median [min, max] over runs; 'max flip': the largest flip rate of any "
        "candidate; 'top': the most suspicious candidate; no candidate counts as 0, as -1 for contrast):",
        "",
        "| kind | method | uses: max flip | clean: max flip | uses: top suspicion | clean: top suspicion | "
        "uses: top control | clean: top control | uses: top contrast | clean: top contrast |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def spread(values: list[float]) -> str:
        return f"{np.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]" if values else "–"

    def top(run: dict, method: str, key: str, default: float) -> float:
        found = candidates_of(run, level, (method,))
        return _value(found[0], key, default) if found else default

    for kind in KINDS:
        positives = [r for r in runs if uses(r) and r["kind"] == kind]
        negatives = [r for r in runs if not r["biased"] and r["kind"] == kind]
        if not positives and not negatives:
            continue
        for method in METHODS:
            cells = [
                spread([score(r, level, (method,), "flip", {})[0] for r in group]).replace("-inf", "none")
                for group in (positives, negatives)
            ]
            for key, default in (("suspicion", 0.0), ("control_flip_rate", 0.0), ("contrast", -1.0)):
                cells += [spread([top(r, method, key, default) for r in group]) for group in (positives, negatives)]
            rows.append(f"| {kind} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def localisation_table(runs: list[dict], level: str, summary: dict) -> str:
    """Per kind and method, for the runs that use the shortcut: how well the top candidate and
    the candidate the method's chosen flip rule alerts on overlap the true artifact (all seeds)."""
    rows = [
        "Localisation on the runs that use the shortcut (all seeds; median over runs): 'top' = the most "
        "suspicious candidate; 'alert' = the most suspicious candidate that the method's chosen `flip+contrast` "
        "rule accepts (number of runs with one in brackets). IoU: mean over the candidate's source probes of "
        "IoU(region, artifact mask); precision: share of its pixels on the artifact; class = 1: the candidate "
        "pushes the class the artifact was correlated with.",
        "",
        "| kind | method | runs | with a candidate | top IoU | top precision | top class = 1 | alert IoU | "
        "alert precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def median(values: list[dict], key: str) -> str:
        numbers = [v[key] for v in values if v.get(key) is not None]
        return f"{np.median(numbers):.2f}" if numbers else "–"

    for kind in KINDS:
        positives = [r for r in runs if uses(r) and r["kind"] == kind]
        if not positives:
            continue
        for method in METHODS:
            rule = summary["rules"].get(f"{level}/flip+contrast/{method}")
            tops = [c[0] for r in positives if (c := candidates_of(r, level, (method,)))]
            alerted = [a for r in positives if rule and (a := alerting_candidate(r, level, (method,), rule))]
            right = sum(1 for c in tops if c.get("class_index") == 1)
            rows.append(
                f"| {kind} | {method} | {len(positives)} | {len(tops)} | {median(tops, 'iou')} | "
                f"{median(tops, 'precision')} | {right}/{len(tops)} | {median(alerted, 'iou')} ({len(alerted)}) | "
                f"{median(alerted, 'precision')} |"
            )
    return "\n".join(rows)


def colour_cast_table(runs: list[dict], level: str) -> str:
    """What discovery claims on the non-local control (all seeds): the top candidate's area,
    flip and control flip rates, per method, on the colour_cast runs that use it and the clean ones."""
    rows = [
        "The non-local control, colour_cast (all seeds; median [min, max] over runs of the top candidate; "
        "a localised method should find no region that flips more than its control):",
        "",
        "| runs | method | with a candidate | area | flip rate | control flip rate | flip - control |",
        "|---|---|---|---|---|---|---|",
    ]

    def spread(values: list[float]) -> str:
        return f"{np.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]" if values else "–"

    for label, group in (
        ("uses", [r for r in runs if r["kind"] == "colour_cast" and uses(r)]),
        ("clean", [r for r in runs if r["kind"] == "colour_cast" and not r["biased"]]),
    ):
        for method in METHODS:
            tops = [c[0] for r in group if (c := candidates_of(r, level, (method,)))]
            flips = [_value(c, "flip_rate", 0.0) for c in tops]
            controls = [_value(c, "control_flip_rate", 0.0) for c in tops]
            areas = [_value(c, "area", 0.0) for c in tops]
            margins = [f - c for f, c in zip(flips, controls, strict=True)]
            rows.append(
                f"| {label} ({len(group)}) | {method} | {len(tops)} | {spread(areas)} | "
                f"{spread(flips)} | {spread(controls)} | {spread(margins)} |"
            )
    return "\n".join(rows)


#: The candidate fields kept in ``discovery_study.json`` (top 3 per run, level and method; the
#: analysis cache in the output folder keeps every field of every candidate).
JSON_CANDIDATE_FIELDS = (
    "class_index",
    "sources",
    "box",
    "area",
    "recurrence",
    "consistency",
    "other_class_similarity",
    "contrast",
    "outside_object",
    "flip_rate",
    "control_flip_rate",
    "source_accuracy",
    "probability_change",
    "suspicion",
    "iou",
    "precision",
    "coverage",
)


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def default_outcome(run: dict, level: str, method: str = "sas") -> str | None:
    """The verdict the package's default rule (``AlertRule()``) reaches on the run's ``method`` maps
    at ``level`` with discovery alone (``decide`` itself): ``"shortcut"``, ``"cannot tell"`` or
    ``"no shortcut"``; ``None`` when discovery did not run there."""
    from lightning_sas.audit.verdict import AlertRule, DiscoveryEvidence, Evidence, decide

    entry = run["discovery"].get(f"{level}/{method}")
    if entry is None or "error" in entry:
        return None
    # The records keep a count of sources; the verdict's messages count a list.
    candidates = [{**c, "sources": range(c["sources"])} for c in entry["candidates"]]
    found = DiscoveryEvidence(candidates=candidates, object_masks=level == "object", method=method)
    evidence = Evidence(image_pixels=1, roi_pixels=[], roi_share={}, discovery=found)  # no ROI, no artifacts
    return decide(evidence, AlertRule()).status


OUTCOMES = ("shortcut", "cannot tell", "no shortcut")


def outcome_table(runs: list[dict], level: str) -> str:
    """Per kind: how the default rule's verdicts split on the runs that use the shortcut and on the clean runs."""
    lines = [
        "| kind | uses the shortcut: shortcut / cannot tell / no shortcut "
        "| clean: shortcut / cannot tell / no shortcut |",
        "|---|---|---|",
    ]

    def split(group: list[dict]) -> str:
        found = [default_outcome(r, level) for r in group]
        found = [f for f in found if f is not None]
        if not found:
            return "–"
        return (
            " / ".join(f"{found.count(o)}" for o in OUTCOMES)
            + f" of {len(found)} ({rate(found.count('shortcut'), len(found))} alert)"
        )

    for kind in [*[k for k in KINDS if any(r["kind"] == k for r in runs)], "all localised"]:
        local = kind == "all localised"
        of_kind = [r for r in runs if (r["kind"] in LOCAL_KINDS if local else r["kind"] == kind)]
        clean = [r for r in runs if not r["biased"]] if local else [r for r in of_kind if not r["biased"]]
        lines.append(
            f"| {kind}{' (clean: all kinds)' if local else ''} | {split([r for r in of_kind if uses(r)])} "
            f"| {split(clean)} |"
        )
    return "\n".join(lines)


def natural_section(runs: list[dict], summary: dict, natural_out: Path) -> str:
    """The rules chosen on the main study's selection half, applied to every run audited again on
    natural-rate probes (``--natural-probes``): nothing was chosen on these runs."""
    available = {key.split("/")[1] for r in runs for key in r["discovery"] if "error" not in r["discovery"][key]}
    kinds = [k for k in LOCAL_KINDS if any(r["kind"] == k for r in runs)]
    share = {label: [r["artifact_share"][label] for r in runs if r.get("artifact_share")] for label in ("1", "0")}
    lines = [
        "## Natural-rate probes: the same models and rules, probes drawn at the training bias's rates",
        "",
        "The main study's probes put the artifact on 75% of *both* classes, so a shortcut model's errors show. "
        "A probe set taken from validation data carries the training bias instead. Every run above (the same "
        "model) was audited again on 64 probes from its validation split, 32 per class drawn at random, with "
        f"{'/'.join(sorted(available))} maps (`--natural-probes`, cache `{display(natural_out)}`); the rules are "
        "the ones chosen above, nothing was chosen on these runs, so all seeds are reported.",
        "",
        f"Probes with the artifact (median over runs): class 1 {np.median(share['1']):.0%}, class 0 "
        f"{np.median(share['0']):.0%}."
        if share["1"]
        else "",
    ]
    for level in LEVELS:
        lines += [
            "",
            f"The default rule's verdicts, {'object masks' if level == 'object' else 'nothing'} (all seeds):",
            "",
            outcome_table(runs, level),
        ]
    lines += [
        "",
        "Every rule chosen above (recall and false alarms as above, all seeds):",
        "",
        "| level | rule | recall (localised kinds) | FA (all clean runs) | colour_cast: alerts on runs that use it | "
        + " | ".join(kinds)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(kinds),
    ]
    for key, rule in summary["rules"].items():
        level, family, name = key.split("/")
        if family == "enrichment" or not set(RULE_SETS[name]) <= available:
            continue
        cells = held_out_cells(runs, level, RULE_SETS[name], rule, kinds)
        lines.append(
            f"| {level} | {family} [{name}]: {describe(rule)} | {rate(*cells['all'][:2])} "
            f"| {rate(*cells['all'][2:])} | "
            f"{rate(*cells['colour_cast'][:2])} | "
            + " | ".join(f"{rate(*cells[k][:2])}; FA {rate(*cells[k][2:])}" for k in kinds)
            + " |"
        )
    return "\n".join(lines)


def analyse_main(args: argparse.Namespace) -> None:
    records, version = analysis_records(args.out, refresh=args.refresh, stand_in=args.discovery_file)
    text, summary = analyse(records, version)
    natural: list[dict] = []
    if args.natural:
        natural, _ = analysis_records(args.natural, refresh=args.refresh, stand_in=args.discovery_file)
        text += "\n\n" + natural_section(natural, summary, args.natural)
    print(text)
    settings = sorted({json.dumps(r.get("settings", {}), sort_keys=True) for r in records})
    parts = sorted({key for r in records for key in r.get("seconds_parts", {})})

    def seconds(values: list[float]) -> str:
        return f"median {np.median(values):.1f} s, range {min(values):.1f}-{max(values):.1f} s" if values else "–"

    timing = [f"- whole run: {seconds([r['seconds'] for r in records])}"]
    timing += [
        f"- {key}: {seconds([r['seconds_parts'][key] for r in records if key in r.get('seconds_parts', {})])}"
        for key in parts
    ]
    discovery_seconds = [e["seconds"] for r in records for e in r["discovery"].values() if "seconds" in e]
    timing.append(f"- one `discover` call (analysis): {seconds(discovery_seconds)}")
    header = [
        "# Discovery study (issue 22)",
        "",
        "How often discovery (`lightning_sas.trust.discovery.discover`) finds a localised shortcut it was not "
        "told about, and how often it alerts on a clean model, at two levels of side information (object "
        "masks / nothing). Design: `benchmarks/discovery_study.py`'s docstring; the shortcut kinds: "
        "`benchmarks/shortcut_kinds.py` (`--preview` draws them). Generated by `--analyse`.",
        "",
        "Commands (the cache of trained models and maps lives in `outputs/discovery_study/`, git-ignored; "
        "the study ran as one process, `--shards 1`, seeds in order so both halves fill up together):",
        "",
        "```",
        f"python benchmarks/discovery_study.py --runs-per-cell {args.runs_per_cell} --sas-iterations "
        f"{records[0].get('settings', {}).get('sas_iterations', 95) if records else 95} --out {display(args.out)}",
        *(
            f"python benchmarks/discovery_study.py --natural-probes {display(args.out)} --methods sas --shard {shard} "
            f"--shards 2 --out {display(args.natural)}"
            for shard in ((0, 1) if args.natural else ())
        ),
        f"python benchmarks/discovery_study.py --analyse --out {display(args.out)}"
        + (f" --natural {display(args.natural)}" if args.natural else ""),
        "```",
        "",
        "Run settings: " + "; ".join(f"`{s}`" for s in settings) + ".",
        "",
        "Seconds per run (1 torch thread, on 2 cores shared with other jobs, so the spread is load):",
        "",
        *timing,
        "",
        "Design in short: per shortcut kind and seed, a biased run (artifact rate of the 'malignant' class "
        "drawn from [0.6, 0.95], of the 'benign' class from [0.02, 0.2]) and a clean run (both at their mean); "
        "32-px procedural lesions, `alert_study.train` (LesionClassifier(width=12), 1,200 images, 6 epochs); "
        "ground truth: the accuracy drop from a validation split with the bias to one with the bias swapped "
        "(>= 0.10: 'uses the shortcut'). 64 probes from a fresh split, 32 per class, 24 of each class with the "
        "artifact (75%). Maps: SaS (50 iterations instead of 95: 95 took about 40 s per run alone on this "
        "shared machine; other settings at their defaults), Grad-CAM and Occlusion at their defaults, "
        "explaining the predicted class. Discovery at its defaults, `seed` = the run's seed, once with the "
        "lesion masks as object masks and once without.",
        "",
        "Rules: each family below is a threshold on one statistic plus optional conditions, chosen on the even "
        "seeds (the selection half) to maximise recall over the localised kinds' runs that use the shortcut at "
        "a false-alarm rate over all clean runs of at most 5% (object masks) / 10% (nothing); ties go to fewer "
        "false alarms, then fewer conditions, then the condition set with the widest interval of equally good "
        "thresholds, at its middle. Reported on the odd seeds (the held-out half). Each (kind, biased/clean) "
        "cell has only 4 held-out runs: the per-kind intervals are wide; read the pooled columns first.",
        "",
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "discovery_study.md").write_text("\n".join(header) + "\n" + text + "\n")

    def small(value: object) -> object:
        if isinstance(value, float):
            return round(value, 3)
        if isinstance(value, list):
            return [small(v) for v in value]
        return value

    slim = [
        {
            **{k: small(v) for k, v in r.items() if k not in ("discovery", "settings", "seconds_parts")},
            "discovery": {
                key: {
                    **{k: small(v) for k, v in entry.items() if k not in ("candidates", "strategies")},
                    # Rows of values in the order of ``candidate_fields`` (top 3).
                    "candidates": [
                        [small(c.get(k)) for k in JSON_CANDIDATE_FIELDS] for c in entry.get("candidates", [])[:3]
                    ],
                }
                for key, entry in r["discovery"].items()
            },
            "default_verdict": {level: default_outcome(r, level) for level in LEVELS},
        }
        for r in records
    ]
    settings_list = [json.loads(text) for text in settings]
    record = {**summary, "run_settings": settings_list, "candidate_fields": list(JSON_CANDIDATE_FIELDS), "runs": slim}
    record["natural_runs"] = [
        {
            **{key: small(r[key]) for key in ("kind", "biased", "seed", "drop", "artifact_share", "probe_accuracy")},
            "default_verdict": {level: default_outcome(r, level) for level in LEVELS},
        }
        for r in natural
    ]
    (args.results / "discovery_study.json").write_text(json.dumps(record, separators=(",", ":")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-per-cell", type=int, default=8, help="seeds per (kind, biased) cell")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="*", choices=KINDS, help="only these kinds (default: all)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=1200)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--sas-iterations", type=int, default=None, help="SaS iterations (default: SaS's own)")
    parser.add_argument("--shard", type=int, default=0, help="this process runs the seeds with seed %% shards == shard")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--analyse", action="store_true", help="run discovery on the cache and write the results")
    parser.add_argument("--refresh", action="store_true", help="with --analyse: ignore cached discovery records")
    parser.add_argument(
        "--discovery-file", type=Path, help="with --analyse: a stand-in module with discover() (tests of the analysis)"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="with --analyse: where discovery_study.md/.json go"
    )
    parser.add_argument(
        "--natural-probes",
        type=Path,
        metavar="MAIN_OUT",
        help="audit the models cached in MAIN_OUT again, on probes from their validation split (the training bias's "
        "rates); results go to --out",
    )
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS, help="with --natural-probes")
    parser.add_argument(
        "--natural",
        type=Path,
        metavar="NATURAL_OUT",
        help="with --analyse: also report the rules on this natural-probe cache",
    )
    args = parser.parse_args()
    if args.analyse:
        analyse_main(args)
    elif args.natural_probes:
        run_natural(args)
    else:
        run_study(args)


if __name__ == "__main__":
    main()
