"""Every attribution method side by side on the ruler-bias demo: which see the ruler, which are faithful?

Trains the demo's biased and clean models (demo settings, one audit at the end of training),
takes the demo's 8 probes of each run (the callback's choice from that run's validation split,
seed 0), and for each registered method at its defaults measures, on each model:

- seconds to explain the 8 probes (the method alone, as every audit after the first costs:
  after one warm-up call on the same probes);
- model passes per probe (what the method declares);
- mean roi_share (share of the map's top pixels on the ruler; probes with a ruler only) and
  its lift over chance;
- deletion and insertion AUC (:class:`lightning_sas.Faithfulness`, 20 steps, blur baseline);
- the cascading-randomisation sanity check (4 stages; passes when the median similarity to
  the trained model's map stays below 0.9).

    python benchmarks/methods_demo.py --out benchmarks/results/methods_demo.json

Prints a markdown table (the README's) and writes the rows as JSON. ``--methods a,b`` measures
only those and keeps the other rows of ``--out`` (the trained models are reused from ``--work``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "ruler_bias"))

import train
from data import make_splits
from model import LesionClassifier

from lightning_sas.audit.run import run_audit
from lightning_sas.methods import METHODS, make_method
from lightning_sas.probes.probe_set import choose_probes, probes_from_dataset
from lightning_sas.scores.faithfulness import Faithfulness

SEED = 0
PROBES = 8


def demo_probes(clean: bool, seed: int = SEED):
    """The probes the demo's callback audits in a run: its stratified choice from that run's validation split."""
    splits = make_splits(n_train=2000, n_val=400, n_counterfactual=400, image_size=64, clean=clean, seed=seed)
    val = splits["val"]
    return probes_from_dataset(val, choose_probes(val, PROBES, seed), keys={"mask": 2})  # (image, label, ruler)


def measure(model: torch.nn.Module, probes, name: str) -> dict:
    method = make_method(name)
    single = {name: method}
    # Warm-up on the same probes: what is done once per run (Grad-CAM's layer search, LIME's
    # superpixels of the fixed probes) is not what every audit costs.
    run_audit(model, probes, single)
    started = time.perf_counter()
    result = run_audit(model, probes, single)
    seconds = time.perf_counter() - started
    trusted = run_audit(model, probes, single, faithfulness=Faithfulness(), sanity_stages=4)
    means = trusted.mean_scores().get(name, {})
    faithful = trusted.faithfulness_means().get(name, {})
    sanity = trusted.sanity
    return {
        "method": name,
        "passes_per_probe": method.passes_per_probe(),
        "seconds": seconds,
        "roi_share": means.get("roi_share"),
        "roi_lift": means.get("roi_lift"),
        "deletion_auc": faithful.get("deletion_auc"),
        "insertion_auc": faithful.get("insertion_auc"),
        "sanity_similarity": None if sanity is None else float(sanity.similarity[name][-1]),
        "sanity_passed": None if sanity is None else name not in sanity.flagged,
        "errors": dict(result.errors) | dict(trusted.errors),
        "settings": repr(method),
    }


def main() -> None:
    if "--table" in sys.argv:  # print the README table from --out's rows, without measuring
        print(table(json.loads(Path(sys.argv[sys.argv.index("--table") + 1]).read_text())["rows"]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "methods_demo.json")
    parser.add_argument("--work", type=Path, default=Path("outputs/methods_demo"))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method names")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    trained = args.work / "checkpoints.json"  # the two trained models, reused by a later run with other --methods
    if trained.exists():
        runs = json.loads(trained.read_text())
    else:
        settings = ["--quiet", "--out", str(args.work), "--every-n-epochs", "6"]
        runs = {"biased": train.run(settings), "clean": train.run([*settings, "--clean"])}
        runs = {name: {"checkpoint": run["checkpoint"]} for name, run in runs.items()}
        trained.write_text(json.dumps(runs))
    rows = [row for row in _previous_rows(args.out) if row["method"] not in args.methods.split(",")]
    for run_name, run in runs.items():
        model = LesionClassifier.load_from_checkpoint(run["checkpoint"], map_location="cpu").eval()
        probes = demo_probes(clean=run_name == "clean")
        for name in args.methods.split(","):
            row = {"run": run_name, **measure(model, probes, name)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    order = list(METHODS)
    rows.sort(key=lambda row: (row["run"], order.index(row["method"]) if row["method"] in order else len(order)))
    record = {"torch_threads": torch.get_num_threads(), "probes": PROBES, "image_size": 64, "rows": rows}
    args.out.write_text(json.dumps(record, indent=1))
    print(table(rows))


def _previous_rows(path: Path) -> list[dict]:
    """Rows of an earlier run (other methods keep their measurements; the named ones are redone)."""
    return json.loads(path.read_text())["rows"] if path.exists() else []


def table(rows: list[dict]) -> str:
    by = {(row["run"], row["method"]): row for row in rows}
    names = list(dict.fromkeys(row["method"] for row in rows))

    def number(value: float | None, digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    def sanity(row: dict) -> str:
        if row["sanity_passed"] is None:
            return "–"
        return f"{'pass' if row['sanity_passed'] else 'FAIL'} ({row['sanity_similarity']:.2f})"

    lines = [
        "| method | passes / probe | s / audit (biased, clean) | roi_share biased / clean | deletion AUC ↓ "
        "biased / clean | insertion AUC ↑ biased / clean | sanity biased / clean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        biased, clean = by[("biased", name)], by[("clean", name)]
        lines.append(
            f"| {name} | {biased['passes_per_probe']} | {number(biased['seconds'])}, {number(clean['seconds'])} "
            f"| {number(biased['roi_share'])} / {number(clean['roi_share'])} "
            f"| {number(biased['deletion_auc'], 3)} / {number(clean['deletion_auc'], 3)} "
            f"| {number(biased['insertion_auc'], 3)} / {number(clean['insertion_auc'], 3)} "
            f"| {sanity(biased)} / {sanity(clean)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
