"""Warm-started SaS between audits: quality (rank correlation with a cold run) vs iterations saved.

Trains the ruler-bias demo's LesionClassifier for a few epochs. After epoch E-1 it runs a cold
SaS in the paper's configuration (``SaS.paper()``, 100 iterations over the whole schedule) on
the probes and keeps the masks; after epoch E it compares, on the same probes and weights:

- ``cold``: SaS from noise with the full iteration count (the reference);
- ``cold_short``: SaS from noise with N iterations (what fewer iterations alone give);
- ``warm``: SaS from the epoch E-1 masks with N iterations (what the callback's
  ``warm_start_iterations=N`` does);
- ``reseeded``: SaS from noise with the full count and another seed (the method's own noise floor).

Each row reports the mean per-probe Spearman rank correlation with ``cold`` and the mean
``roi_share`` on the ruler, for the probes that carry one.

    python benchmarks/warm_start.py --warm-iterations 10 25 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "ruler_bias"))

from data import make_splits
from model import LesionClassifier

from lightning_sas.audit.run import predict
from lightning_sas.methods import SaS
from lightning_sas.probes.probe_set import probes_from_dataset, stratified_indices
from lightning_sas.scores.metrics import roi_share, spearman


def train_epoch(model: LesionClassifier, loader: DataLoader, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    for images, labels, _ in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="epoch E of the comparison (E-1 seeds the warm start)")
    parser.add_argument("--iterations", type=int, default=100, help="cold iterations (the reference)")
    parser.add_argument("--warm-iterations", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="append the rows as JSON lines")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    splits = make_splits(n_train=2000, n_val=400, n_counterfactual=10, image_size=args.image_size, seed=args.seed)
    loader = DataLoader(splits["train"], batch_size=64, shuffle=True)
    model = LesionClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    labels = [int(splits["val"][i][1]) for i in range(len(splits["val"]))]
    probes = probes_from_dataset(splits["val"], stratified_indices(labels, args.probes, args.seed), keys={"mask": 2})
    with_roi = probes.has_roi

    for _ in range(args.epochs - 1):
        train_epoch(model, loader, optimizer)
    previous_targets = predict(model, probes.images)[0]
    _, previous_masks = SaS.paper(iterations=args.iterations).attribute_from(model, probes.images, previous_targets)
    train_epoch(model, loader, optimizer)
    targets = predict(model, probes.images)[0]

    def measure(
        name: str, method: SaS, initial_mask: torch.Tensor | None, iterations: int
    ) -> tuple[dict, torch.Tensor]:
        started = time.perf_counter()
        maps, _ = method.attribute_from(model, probes.images, targets, initial_mask, iterations)
        seconds = time.perf_counter() - started
        row = {"run": name, "iterations": iterations, "seconds": round(seconds, 2)}
        return row, maps

    rows = []
    reference_row, reference = measure("cold", SaS.paper(), None, args.iterations)
    candidates = [(reference_row, reference)]
    candidates.append(measure("reseeded", SaS.paper(seed=args.seed + 1), None, args.iterations))
    for iterations in args.warm_iterations:
        candidates.append(measure("cold_short", SaS.paper(), None, iterations))
        candidates.append(measure("warm", SaS.paper(), previous_masks, iterations))
    for row, maps in candidates:
        row["spearman_vs_cold"] = round(float(spearman(maps, reference).mean()), 4)
        row["roi_share"] = (
            round(float(roi_share(maps[with_roi], probes.roi[with_roi]).mean()), 3) if with_roi.any() else None
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps({**row, "image_size": args.image_size, "probes": args.probes}) + "\n")
    return rows


if __name__ == "__main__":
    main()
