"""Occlusion and LIME against their peer libraries: seconds for the same model, probes and settings.

Times, in one process, our batched :class:`~lightning_sas.methods.occlusion.Occlusion` against
``captum.attr.Occlusion`` (its default ``perturbations_per_eval=1``, as people use it: one
forward of the whole probe batch per window), and our :class:`~lightning_sas.methods.lime.LIME`
against ``lime_image.LimeImageExplainer().explain_instance(..., num_samples=1000)`` (its
defaults, per probe) and ``captum.attr.Lime`` (per probe, ``perturbations_per_eval=1``). The
peers get our superpixels, hiding colour, kernel and ridge settings, so every row does the same
work; our LIME's time includes computing the superpixels (a fresh instance: cold cache).

Run from the repository root::

    python benchmarks/peers_perturbation.py                 # resnet18, 8 probes at 64 px
    python benchmarks/peers_perturbation.py --no-captum-lime --samples 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make `lightning_sas` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_sas.methods.lime import LIME
from lightning_sas.methods.occlusion import Occlusion

NUM_CLASSES = 10


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compare(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    samples: int = 1000,
    captum_lime: bool = True,
) -> list[dict]:
    """Seconds for our methods and their peers on the same model, probes and settings.

    Args:
        model: A classifier returning ``[B, num_classes]`` logits (put in eval mode here).
        images: Probes ``[B, 3, H, W]``.
        targets: ``[B]`` classes to explain.
        samples: LIME draws per probe (lime_image's default 1000).
        captum_lime: Also time ``captum.attr.Lime`` (slow: one forward per draw).

    Returns:
        One dict per comparison: ``method``, ``ours_s``, ``peer``, ``peer_s`` and ``ratio``
        (``peer_s / ours_s``: how many times faster ours is).
    """
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime as CaptumLime
    from captum.attr import Occlusion as CaptumOcclusion
    from lime.lime_image import LimeImageExplainer

    model = model.eval()
    channels, height, width = images.shape[1:]
    rows: list[dict] = []

    occlusion = Occlusion()
    (window_h, window_w), (stride_h, stride_w) = occlusion.window_and_stride(height, width)
    ours = _seconds(lambda: occlusion.attribute(model, images, targets))

    def captum_occlusion() -> None:
        with torch.no_grad():
            CaptumOcclusion(model).attribute(
                images,
                sliding_window_shapes=(channels, window_h, window_w),
                strides=(channels, stride_h, stride_w),
                baselines=occlusion.baseline,
                target=targets,
            )

    peer = _seconds(captum_occlusion)
    rows.append({"method": "occlusion", "ours_s": ours, "peer": "captum.attr.Occlusion", "peer_s": peer})

    lime = LIME(samples=samples)
    ours = _seconds(lambda: lime.attribute(model, images, targets))
    segments = lime.superpixels(images)  # cached: the peers get the same superpixels for free

    def classify(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch).permute(0, 3, 1, 2).to(images.dtype)).double().numpy()

    def lime_image() -> None:
        for index in range(images.shape[0]):
            labels = segments[index].cpu().numpy()
            LimeImageExplainer(random_state=index).explain_instance(
                images[index].permute(1, 2, 0).cpu().numpy(),
                classify,
                labels=(int(targets[index]),),
                top_labels=None,
                num_samples=samples,
                segmentation_fn=lambda _, labels=labels: labels,
            )

    peer = _seconds(lime_image)
    rows.append({"method": "lime", "ours_s": ours, "peer": "lime_image.LimeImageExplainer", "peer_s": peer})

    if captum_lime:

        def lime_kernel(original: Tensor, perturbed: Tensor, interpretable: Tensor, **kwargs: object) -> float:
            distance = 1 - (interpretable.float().sum() / interpretable.shape[1]).sqrt()
            return float(torch.exp(-(distance**2) / lime.kernel_width**2).sqrt())

        def captum() -> None:
            explainer = CaptumLime(model, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=lime_kernel)
            for index in range(images.shape[0]):
                labels = segments[index : index + 1]
                hidden = lime._hidden_images(images[index : index + 1], labels, int(labels.max()) + 1)
                with torch.no_grad():
                    explainer.attribute(
                        images[index : index + 1],
                        target=int(targets[index]),
                        baselines=hidden,
                        feature_mask=labels[:, None],
                        n_samples=samples,
                    )

        peer = _seconds(captum)
        rows.append({"method": "lime", "ours_s": ours, "peer": "captum.attr.Lime", "peer_s": peer})

    for row in rows:
        row["ratio"] = row["peer_s"] / row["ours_s"]
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| method | ours (s) | peer | peer (s) | peer / ours |", "|---|---|---|---|---|"]
    lines += [
        f"| {row['method']} | {row['ours_s']:.2f} | {row['peer']} | {row['peer_s']:.2f} | {row['ratio']:.1f}x |"
        for row in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1000, help="LIME draws per probe")
    parser.add_argument("--no-captum-lime", action="store_true", help="skip captum's Lime (one forward per draw)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    images = torch.rand(args.probes, 3, args.image_size, args.image_size)
    targets = torch.arange(args.probes) % NUM_CLASSES
    print(f"resnet18, {args.probes} probes at {args.image_size} px, {torch.get_num_threads()} CPU threads")
    print(markdown(compare(model, images, targets, samples=args.samples, captum_lime=not args.no_captum_lime)))


if __name__ == "__main__":
    main()
