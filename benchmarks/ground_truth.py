"""Ground truth: SaS and Grad-CAM on a model whose score provably depends only on a known rectangle.

Uses the hand-built ``RectangleModel`` of the test suite (``tests/models.py``): |Laplacian|
features gated to an off-centre rectangle, so every pixel the score can see lies in it. Prints,
per image size and logit scale, SaS's top-|R| share (``roi_share``) and Grad-CAM's mass in the
rectangle (``roi_mass``), at default settings, next to the rectangle's area share (chance).

    python benchmarks/ground_truth.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from models import RectangleModel, box_mask
from test_sas import off_centre_box

from lightning_sas.methods import GradCAM, SaS
from lightning_sas.metrics import roi_mass, roi_share


def main() -> None:
    print("| image | logit scale | area share (chance) | SaS roi_share (min over images) | Grad-CAM roi_mass (min) |")
    print("|---|---|---|---|---|")
    for size in (32, 64):
        box = off_centre_box(size)
        roi = box_mask(size, box).expand(2, -1, -1)
        images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        targets = torch.ones(2, dtype=torch.long)
        for scale in (0.01, 100.0):
            model = RectangleModel(size, box, scale)
            sas = roi_share(SaS().attribute(model, images, targets), roi).min().item()
            gradcam = roi_mass(GradCAM("features").attribute(model, images, targets), roi).min().item()
            print(f"| {size} px | {scale:g} | {roi[0].float().mean().item():.3f} | {sas:.3f} | {gradcam:.3f} |")


if __name__ == "__main__":
    main()
