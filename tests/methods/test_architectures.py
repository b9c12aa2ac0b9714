"""Every registered method on the architectures people train today, and the callback on each.

Through a real ``lightning.Trainer`` fit: every registered method (with faithfulness and the
sanity check) on ResNet-18 and MobileNetV3-Small; SaS and Grad-CAM on the other four.

torchvision's ResNet-18, MobileNetV3-Small, EfficientNet-B0, ConvNeXt-Tiny, ViT-B/16 and
Swin-T, randomly initialised, at the smallest inputs where their last stage still has spatial
extent (64 px; ViT-B/16 built for 32 px, a 2x2 patch grid). Methods run with cheap settings:
what is tested is that they run and keep the rules on these models, not the maps' quality.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
from lit_models import LitClassifier, corner_dataset, loaders, make_trainer, read_events
from test_method_rules import assert_unchanged, hook_count, snapshot
from torch import nn

from lightning_sas import SASAuditCallback
from lightning_sas.methods import METHODS, GradCAM, SaS
from lightning_sas.methods.base import AttributionMethod
from lightning_sas.methods.layers import resolve_layer
from lightning_sas.scores.faithfulness import Faithfulness

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
    method = GradCAM()
    assert method.layer_name(setup.model, setup.images) == setup.architecture.gradcam_layer
    # Remembered per model and input size: asking again (to log it) and attributing run one forward, the attribution's.
    forwards: list[int] = []
    handle = setup.model.register_forward_pre_hook(lambda module, inputs: forwards.append(1))
    try:
        assert method.layer_name(setup.model, setup.images) == setup.architecture.gradcam_layer
        method.attribute(setup.model, setup.images, setup.targets)
    finally:
        handle.remove()
    assert len(forwards) == 1


def test_gradcam_checks_a_given_layer_before_any_forward() -> None:
    model = torchvision.models.resnet18(num_classes=3)
    forwards: list[int] = []
    model.register_forward_pre_hook(lambda module, inputs: forwards.append(1))
    message = r"`target_layer`='layer4\.2' is not a submodule of ResNet; nearest valid names: 'layer4\.1'"
    with pytest.raises(ValueError, match=message):
        GradCAM("layer4.2").layer_name(model, torch.randn(1, 3, 64, 64))
    assert forwards == []
    assert GradCAM(model.layer3).layer_name(model, torch.randn(1, 3, 64, 64)) == "layer3"
    with pytest.raises(TypeError, match=r"`target_layer` must be a module name or an nn.Module, got int 4"):
        resolve_layer(model, 4)  # type: ignore[arg-type]


#: The architectures fitted with every registered method (the others are fitted with SaS and
#: Grad-CAM below): an all-method audit of a ConvNeXt, ViT or Swin costs 30-70 s on two cores.
CHEAP_ARCHITECTURES = ["resnet18", "mobilenet_v3_small"]
#: Probes of the all-method fit. Its images are the architecture's size (64 px): at 32 px the last
#: stage is 1x1, where Grad-CAM's map is flat.
FIT_PROBES = 2


def fit_with_the_audit(tmp_path: Path, net: nn.Module, size: int, callback: SASAuditCallback, count: int) -> L.Trainer:
    """A real ``Trainer.fit``: one epoch of ``count / 16`` steps, then the audit."""
    L.seed_everything(0, verbose=False)
    train, val = loaders(corner_dataset(count=count, size=size))
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=0, log_every_n_steps=1)
    module = LitClassifier(num_classes=2, lr=1e-3)
    # Swapped in after construction: as an __init__ argument, save_hyperparameters would write
    # the whole network into hparams.yaml.
    module.net = net
    trainer.fit(module, train, val)
    return trainer


@pytest.mark.parametrize("name", CHEAP_ARCHITECTURES)
def test_callback_audits_every_method_through_a_real_fit(tmp_path: Path, name: str) -> None:
    """Every registered method (cheap settings) in one audit, with faithfulness and the sanity check:
    each method's maps, scores and sanity similarity come out, and nothing is reported as a problem."""
    architecture = ARCHITECTURES[name]
    L.seed_everything(0, verbose=False)
    net = architecture.build(2)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            # Running statistics of the last batch: MobileNetV3's momentum 0.01 leaves them near
            # their initial values for hundreds of steps, and the untrained network's eval-mode
            # output is then the same ~1e-10 for every probe (an input-independent model).
            module.momentum = 1.0
    names = list(METHODS)
    callback = SASAuditCallback(
        probe=FIT_PROBES,
        methods=[cheap(method_name) for method_name in names],
        faithfulness=Faithfulness(steps=4),
        sanity=1,
        cost_warning_share=None,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit_with_the_audit(tmp_path, net, architecture.size, callback, count=32)
    # No failed method, non-finite or flat map, failed check or failed write: each would warn
    # and go on. A sanity flag would be a verdict on a barely trained network, not a failure.
    audit_warnings = [
        str(warning.message)
        for warning in caught
        if "SASAuditCallback" in str(warning.message) and "sanity check:" not in str(warning.message)
    ]
    assert audit_warnings == [], audit_warnings
    assert callback.audited_epochs == [0]
    log_dir = Path(trainer.logger.log_dir)
    events = read_events(log_dir)
    assert not [tag for tag in events.Tags()["tensors"] if tag.startswith("audit/problems")]
    raw = np.load(log_dir / "audits" / "epoch=0.npz")
    (history,) = callback.history
    size = architecture.size
    for method in names:
        maps = raw[f"maps_{method}"]
        assert maps.shape == (FIT_PROBES, size, size), (method, maps.shape)
        assert np.isfinite(maps).all(), method
        assert maps.min() >= 0.0 and maps.max() <= 1.0, method
        assert (maps.reshape(FIT_PROBES, -1).max(axis=1) > maps.reshape(FIT_PROBES, -1).min(axis=1)).all(), method
        for score in ("roi_share", "roi_mass", "roi_lift", "deletion_auc", "insertion_auc", "sanity_similarity"):
            tag = f"audit/{method}/{score}"
            (event,) = events.Scalars(tag)
            assert event.step == 2 and math.isfinite(event.value), (tag, event.value)
            assert event.value == pytest.approx(history[tag], rel=1e-6), tag
        for score in ("roi_share", "roi_mass", "deletion_auc", "insertion_auc"):
            assert 0.0 <= history[f"audit/{method}/{score}"] <= 1.0, (method, score)
    # One stage: every parameter random; each method's similarity to its trained maps was measured.
    assert set(callback.sanity["similarity"]) == set(names)
    assert all(-1.0 <= values[-1] <= 1.0 for values in callback.sanity["similarity"].values()), callback.sanity
    assert {f"audit/grid/{method}" for method in names} <= set(events.Tags()["images"])


@pytest.mark.parametrize("name", [name for name in ARCHITECTURES if name not in CHEAP_ARCHITECTURES])
def test_callback_audits_the_other_architectures(tmp_path: Path, name: str) -> None:
    """A real fit (one epoch of one step) at 32 px with SaS and Grad-CAM: the audit's maps and
    scalars reach the logger for both methods."""
    # torchvision's own initialisation (the ViT's zero head included): the audit follows a training step.
    net = (
        torchvision.models.vit_b_16(image_size=32, num_classes=2)
        if name == "vit_b_16"
        else ARCHITECTURES[name].build(2)
    )
    callback = SASAuditCallback(
        probe=2,
        methods=[SaS(iterations=2, num_masks=3), GradCAM()],
        faithfulness=False,
        sanity=False,
        cost_warning_share=None,
    )
    trainer = fit_with_the_audit(tmp_path, net, 32, callback, count=16)
    assert callback.audited_epochs == [0]
    log_dir = Path(trainer.logger.log_dir)
    events = read_events(log_dir)
    raw = np.load(log_dir / "audits" / "epoch=0.npz")
    for method in ("sas", "gradcam"):
        maps = raw[f"maps_{method}"]
        assert maps.shape == (2, 32, 32) and np.isfinite(maps).all(), method
        assert maps.min() >= 0.0 and maps.max() <= 1.0, method
        share, mass = events.Scalars(f"audit/{method}/roi_share"), events.Scalars(f"audit/{method}/roi_mass")
        assert [event.step for event in share] == [event.step for event in mass] == [1]
        assert 0.0 <= share[0].value <= 1.0, (method, share[0].value)
        # NaN when every probe's map is blank: Grad-CAM's ReLU (or a 1x1 last stage at 32 px)
        # does that to a barely trained network.
        assert 0.0 <= mass[0].value <= 1.0 or math.isnan(mass[0].value), (method, mass[0].value)
    assert "audit/grid/gradcam" in events.Tags()["images"]
