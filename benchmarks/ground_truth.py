"""Ground truth: every method on a model whose score provably depends only on a known rectangle.

Uses the hand-built ``RectangleModel`` of the test suite (``tests/models.py``): |Laplacian|
features gated to an off-centre rectangle, so every pixel the score can see lies in it. Prints,
per image size and logit scale, each registered method's top-|R| share (``roi_share``, min over
two images) at its default settings, Grad-CAM's mass in the rectangle (``roi_mass``), and the
rectangle's area share (chance). SaS is shown with both objectives (``sas``: the scale-free
default; ``sas paper objective``: the source's loss) and IG / GradientSHAP with both sign
policies, the variants the alert study compares.

    python benchmarks/ground_truth.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from models import RectangleModel, box_mask
from test_sas import off_centre_box

from lightning_sas.methods import METHODS, GradCAM, GradientSHAP, IntegratedGradients, SaS, make_method
from lightning_sas.scores.metrics import roi_mass, roi_share


def main() -> None:
    variants = {
        "sas paper objective": lambda: SaS(objective="paper"),
        "ig absolute": lambda: IntegratedGradients(sign="absolute"),
        "gradientshap absolute": lambda: GradientSHAP(sign="absolute"),
    }
    names = [*METHODS, *variants]
    print(f"| image | logit scale | chance | {' | '.join(names)} | gradcam roi_mass |")
    print("|---|---|---|" + "---|" * (len(names) + 1))
    for size in (32, 64):
        box = off_centre_box(size)
        roi = box_mask(size, box).expand(2, -1, -1)
        images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        targets = torch.ones(2, dtype=torch.long)
        for scale in (0.01, 100.0):
            model = RectangleModel(size, box, scale)
            # Grad-CAM explains the rectangle model's feature map (its only spatial layer).
            methods = {name: GradCAM("features") if name == "gradcam" else make_method(name) for name in METHODS}
            methods.update({name: factory() for name, factory in variants.items()})
            shares = [roi_share(methods[name].attribute(model, images, targets), roi).min().item() for name in names]
            mass = roi_mass(methods["gradcam"].attribute(model, images, targets), roi).min().item()
            cells = " | ".join(f"{share:.3f}" for share in shares)
            print(f"| {size} px | {scale:g} | {roi[0].float().mean().item():.3f} | {cells} | {mass:.3f} |", flush=True)


if __name__ == "__main__":
    main()
