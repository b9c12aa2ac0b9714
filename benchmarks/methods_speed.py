"""Our batched methods against the peer libraries as people use them, on the same model, probes and settings.

One process, one model (a randomly initialised torchvision ResNet-18), the same probes and
per-probe targets for everyone. The peers run as their documentation shows: Captum with its
default internal batching, ``lime_image.LimeImageExplainer.explain_instance`` with
``num_samples=1000`` one probe at a time, ``shap.GradientExplainer``. Each row gives both
times and their ratio (peer / ours: above 1 means we are faster). The gradient methods are
timed ``--repeats`` times after a warm-up (fastest kept); the perturbation methods and their
much slower peers once.

    python benchmarks/methods_speed.py --probes 8 --image-size 64 --out benchmarks/results/methods_speed.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers_gradients
import peers_perturbation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of the gradient methods (fastest kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "methods_speed.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(args.probes, 3, args.image_size, args.image_size)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    rows = [
        *peers_gradients.compare(model, images, targets, repeats=args.repeats),
        *peers_perturbation.compare(model, images, targets),
    ]
    record = {
        "model": "resnet18 (random init, 10 classes)",
        "probes": args.probes,
        "image_size": args.image_size,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"ResNet-18 (random init), {args.probes} probes of {args.image_size} px, {torch.get_num_threads()} threads")
    print("| method | ours (s) | peer | peer (s) | peer / ours |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['ours_s']:.2f} | {row['peer']} | {row['peer_s']:.2f} | {row['ratio']:.1f}× |")


if __name__ == "__main__":
    main()
