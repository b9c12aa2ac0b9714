"""Every registered method on the architectures people train today, and the callback on each.

torchvision's ResNet-18, MobileNetV3-Small, EfficientNet-B0, ConvNeXt-Tiny, ViT-B/16 and
Swin-T, randomly initialised, at the smallest inputs where their last stage still has spatial
extent (64 px; ViT-B/16 built for 32 px, a 2x2 patch grid). Methods run with cheap settings:
what is tested is that they run and keep the rules on these models, not the maps' quality.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from lit_models import LitClassifier, corner_dataset, loaders
from test_callback import make_trainer, read_events
from test_method_rules import assert_unchanged, hook_count, snapshot
from torch import nn

from lightning_sas import SASAuditCallback
from lightning_sas.methods import METHODS, GradCAM, SaS
from lightning_sas.methods.base import AttributionMethod

#: Constructor options that make a method cheap, by option name; a method gets those it accepts.
CHEAP_OPTIONS: dict[str, object] = {
    "iterations": 2,
    "num_masks": 2,
    "samples": 2,
    "num_samples": 8,
    "n_samples": 8,
    "steps": 2,
    "n_steps": 2,
    "window": 16,  # occlusion: 2x2 windows at 32 px, 4x4 at 64 px
    "stride": 16,
}


def cheap(method_name: str) -> AttributionMethod:
    """The method registered as ``method_name``, with few iterations / samples / steps / windows."""
    method_class = METHODS[method_name]
    accepted = inspect.signature(method_class.__init__).parameters
    return method_class(**{option: value for option, value in CHEAP_OPTIONS.items() if option in accepted})


def vit_b_16(num_classes: int) -> nn.Module:
    model = torchvision.models.vit_b_16(image_size=32, num_classes=num_classes)
    # torchvision zero-initialises the ViT head: an untrained ViT's score has no gradient at all.
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


@dataclass(frozen=True)
class Architecture:
    build: Callable[[int], nn.Module]
    size: int
    #: What Grad-CAM locates automatically at this size.
    gradcam_layer: str


ARCHITECTURES = {
    "resnet18": Architecture(lambda n: torchvision.models.resnet18(num_classes=n), 64, "layer4"),
    "mobilenet_v3_small": Architecture(lambda n: torchvision.models.mobilenet_v3_small(num_classes=n), 64, "features"),
    "efficientnet_b0": Architecture(lambda n: torchvision.models.efficientnet_b0(num_classes=n), 64, "features"),
    "convnext_tiny": Architecture(lambda n: torchvision.models.convnext_tiny(num_classes=n), 64, "features"),
    "vit_b_16": Architecture(vit_b_16, 32, "encoder.layers.encoder_layer_11.ln_1"),
    # The Permute after the final channels-last norm: the same map as "norm" read channels-last.
    "swin_t": Architecture(lambda n: torchvision.models.swin_t(num_classes=n), 64, "permute"),
}


@dataclass
class Setup:
    model: nn.Module
    images: torch.Tensor
    targets: torch.Tensor
    architecture: Architecture


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def setup(request: pytest.FixtureRequest) -> Setup:
    """A model in the state training leaves it in: train mode, ``.grad`` filled, one frozen parameter."""
    torch.manual_seed(0)
    architecture = ARCHITECTURES[request.param]
    model = architecture.build(3).train()
    images = torch.randn(2, 3, architecture.size, architecture.size)
    model(images).logsumexp(dim=1).sum().backward()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    frozen.grad = None
    return Setup(model, images, torch.tensor([0, 2]), architecture)


@pytest.mark.parametrize("method_name", list(METHODS))
def test_every_method_on_every_architecture(setup: Setup, method_name: str) -> None:
    method = cheap(method_name)
    hooks_before = hook_count(setup.model)
    before = snapshot(setup.model)
    maps = method.attribute(setup.model, setup.images, setup.targets)
    assert_unchanged(setup.model, before)
    assert hook_count(setup.model) == hooks_before
    size = setup.architecture.size
    assert maps.shape == (2, size, size) and maps.dtype == torch.float32
    assert bool(torch.isfinite(maps).all())
    assert maps.min().item() >= 0.0 and maps.max().item() <= 1.0
    # The method ranks something. (One image's map may be blank: Grad-CAM's ReLU blanks an image
    # whose target has only negative evidence at the layer, which happens on random weights.)
    assert bool((maps.flatten(1).amax(dim=1) == 1.0).any()), f"{method_name} gave only constant maps"


def test_gradcam_locates_the_expected_layer(setup: Setup) -> None:
    name, _ = GradCAM().layer_for(setup.model, setup.images)
    assert name == setup.architecture.gradcam_layer


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_callback_audits_every_architecture(tmp_path: Path, name: str) -> None:
    """A real fit (one epoch of one step): the audit's scalars reach TensorBoard for both methods."""
    architecture = ARCHITECTURES[name]
    L.seed_everything(0, verbose=False)
    # torchvision's own initialisation (the ViT's zero head included): the audit follows a training step.
    net = torchvision.models.vit_b_16(image_size=32, num_classes=2) if name == "vit_b_16" else architecture.build(2)
    # 32 px: one training step and one audit of two probes, as cheap as the callback gets.
    train, val = loaders(corner_dataset(count=16, size=32))
    callback = SASAuditCallback(
        probe=2,
        methods=[SaS(iterations=2, num_masks=3), GradCAM()],
        faithfulness=False,
        sanity=False,
        cost_warning_share=None,
    )
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=0, log_every_n_steps=1)
    module = LitClassifier(num_classes=2, lr=1e-4)
    # Swapped in after construction: as an __init__ argument, save_hyperparameters would write
    # the whole network into hparams.yaml.
    module.net = net
    trainer.fit(module, train, val)
    assert callback.audited_epochs == [0]
    events = read_events(trainer.logger.log_dir)
    for method in ("sas", "gradcam"):
        share, mass = events.Scalars(f"audit/{method}/roi_share"), events.Scalars(f"audit/{method}/roi_mass")
        assert [event.step for event in share] == [event.step for event in mass] == [1]
        assert 0.0 <= share[0].value <= 1.0, (method, share[0].value)
        # NaN when every probe's map is blank (roi_mass of an all-zero map): Grad-CAM's ReLU does
        # that to a barely trained network whose target has only negative evidence at the layer.
        assert 0.0 <= mass[0].value <= 1.0 or math.isnan(mass[0].value), (method, mass[0].value)
    assert "audit/grid/gradcam" in events.Tags()["images"]
