"""Our gradient methods against their peers, timed in one process with the same settings.

``compare(model, images, targets)`` times each of Saliency, SmoothGrad, Integrated Gradients
and GradientSHAP from :mod:`lightning_sas.methods` against the peer library as
people call it (Captum's ``Saliency``, ``NoiseTunnel(Saliency)``, ``IntegratedGradients`` and
``GradientShap`` with their default internal batching, i.e. every variant in one forward,
and ``shap.GradientExplainer`` with its default ``batch_size=50``). Run from the repository
root::

    python benchmarks/peers_gradients.py            # random ResNet-18, 8 probes at 64 px, CPU
    python benchmarks/peers_gradients.py --device cuda --image-size 224 --repeats 3

prints a Markdown table with one row per (method, peer).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make `lightning_sas` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_sas.methods.gradientshap import GradientSHAP
from lightning_sas.methods.ig import IntegratedGradients
from lightning_sas.methods.saliency import Saliency
from lightning_sas.methods.smoothgrad import SmoothGrad

#: Settings shared by ours and the peers (our defaults, except GradientSHAP's background size).
SMOOTHGRAD_SAMPLES = 25
NOISE_LEVEL = 0.15
IG_STEPS = 32
IG_RULE = "gausslegendre"
SHAP_SAMPLES = 50
BACKGROUND_SIZE = 8


def seconds(run: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one untimed warm-up call (the least disturbed by other load)."""
    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def compare(model: nn.Module, images: Tensor, targets: Tensor, repeats: int = 1) -> list[dict[str, Any]]:
    """Time our four gradient methods and their peers on the same inputs with the same settings.

    SmoothGrad: Captum's ``stdevs`` is one absolute number for the batch; it gets the mean of
    our per-image ``σ = noise_level × (max − min)`` (the same amount of work). Integrated
    Gradients: both use SaS's blurred baseline, ``IG_STEPS`` Gauss–Legendre points. GradientSHAP:
    the same background of ``BACKGROUND_SIZE`` images from ``images`` and ``SHAP_SAMPLES`` draws;
    ``shap.GradientExplainer`` explains ranked outputs, not given targets, so it is asked for the
    top-ranked output when ``targets`` are the model's predictions and for every output
    otherwise (then it does ``num_classes`` times the work).

    Args:
        model: A classifier in eval mode, on ``images``' device.
        images: ``[B, C, H, W]``.
        targets: ``[B]`` class indices.
        repeats: Timed calls per entry (after one warm-up); the fastest is reported.

    Returns:
        One dict per (method, peer): ``method``, ``ours_s``, ``peer``, ``peer_s`` and ``ratio``
        (``peer_s / ours_s``: above 1 means ours is faster, as in ``peers_perturbation``).
    """
    import shap
    from captum.attr import GradientShap as CaptumGradientShap
    from captum.attr import IntegratedGradients as CaptumIntegratedGradients
    from captum.attr import NoiseTunnel
    from captum.attr import Saliency as CaptumSaliency

    device = images.device
    background = images[torch.arange(BACKGROUND_SIZE, device=device) % images.shape[0]]
    smoothgrad = SmoothGrad(samples=SMOOTHGRAD_SAMPLES, noise_level=NOISE_LEVEL)
    stdev = float(smoothgrad.noise_std(images).mean())
    ig = IntegratedGradients(baseline="blur", steps=IG_STEPS, rule=IG_RULE)
    gradient_shap = GradientSHAP(background=background, samples=SHAP_SAMPLES)
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    ranked_outputs = 1 if torch.equal(predicted, targets) else None

    def captum_ig() -> Tensor:
        baseline = ig.baseline_for(images)
        return CaptumIntegratedGradients(model).attribute(
            images, baselines=baseline, target=targets, n_steps=IG_STEPS, method=IG_RULE
        )

    def shap_explainer() -> Any:
        numpy_state = np.random.get_state()  # shap reseeds NumPy's global stream: leave it as found
        try:
            explainer = shap.GradientExplainer(model, background)
            return explainer.shap_values(images, nsamples=SHAP_SAMPLES, ranked_outputs=ranked_outputs, rseed=0)
        finally:
            np.random.set_state(numpy_state)

    entries: list[tuple[str, Callable[[], Any], str, Callable[[], Any]]] = [
        (
            "saliency",
            lambda: Saliency().attribute(model, images, targets),
            "captum.Saliency",
            lambda: CaptumSaliency(model).attribute(images.clone().requires_grad_(True), target=targets, abs=True),
        ),
        (
            "smoothgrad",
            lambda: smoothgrad.attribute(model, images, targets),
            "captum.NoiseTunnel(Saliency)",
            lambda: NoiseTunnel(CaptumSaliency(model)).attribute(
                images, nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES, stdevs=stdev, target=targets
            ),
        ),
        ("ig", lambda: ig.attribute(model, images, targets), "captum.IntegratedGradients", captum_ig),
        (
            "gradientshap",
            lambda: gradient_shap.attribute(model, images, targets),
            "captum.GradientShap",
            lambda: CaptumGradientShap(model).attribute(
                images, baselines=background, n_samples=SHAP_SAMPLES, target=targets
            ),
        ),
        (
            "gradientshap",
            lambda: gradient_shap.attribute(model, images, targets),
            "shap.GradientExplainer",
            shap_explainer,
        ),
    ]
    rows = []
    for method, ours, peer, theirs in entries:
        ours_s = seconds(ours, device, repeats)
        peer_s = seconds(theirs, device, repeats)
        rows.append({"method": method, "ours_s": ours_s, "peer": peer, "peer_s": peer_s, "ratio": peer_s / ours_s})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | ours (s) | peer | peer (s) | peer / ours |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {row['method']} | {row['ours_s']:.3f} | {row['peer']} | {row['peer_s']:.3f} | {row['ratio']:.2f} |"
        for row in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=args.num_classes).eval().to(device)
    images = torch.randn(args.probes, 3, args.image_size, args.image_size, device=device)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)  # explain the predictions, as shap's ranked outputs do
    print(
        f"random resnet18, {args.probes} probes at {args.image_size} px, {device}, "
        f"{torch.get_num_threads()} threads, fastest of {args.repeats} after a warm-up\n"
    )
    print(markdown_table(compare(model, images, targets, repeats=args.repeats)))


if __name__ == "__main__":
    main()
