"""Grad-CAM: agreement with pytorch-grad-cam, layer location, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from models import SingleLogit, SmallCNN
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget
from torch import nn

from lightning_sas.methods import GradCAM
from lightning_sas.methods.base import minmax_normalize
from lightning_sas.methods.layers import find_target_layer


def peer_maps(
    model: nn.Module, layer_name: str, images: torch.Tensor, targets: torch.Tensor, target=ClassifierOutputTarget
) -> torch.Tensor:
    peer_model = copy.deepcopy(model).eval()  # the peer writes into .grad and leaves eval mode on
    layer = dict(peer_model.named_modules())[layer_name]
    with PeerGradCAM(model=peer_model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=images, targets=[target(int(t)) for t in targets])
    # Same min-max normalisation as ours (the peer divides by max + 1e-7 before resizing).
    return minmax_normalize(torch.from_numpy(maps))


@pytest.mark.parametrize(
    ("make_model", "layer_name", "size"),
    [
        (lambda: torchvision.models.resnet18(num_classes=10), "layer4", 64),
        (lambda: SmallCNN(num_classes=10), "features.6", 32),
    ],
    ids=["resnet18", "small_cnn"],
)
def test_matches_pytorch_grad_cam(make_model, layer_name: str, size: int) -> None:
    torch.manual_seed(3)
    model = make_model().eval()
    images = torch.randn(8, 3, size, size)
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    ours = GradCAM(layer_name).attribute(model, images, targets)
    theirs = peer_maps(model, layer_name, images, targets)
    assert ours.shape == theirs.shape == (8, size, size)
    assert (ours - theirs).abs().max().item() < 1e-5
    # Targets matter: explaining other classes gives other maps.
    other = GradCAM(layer_name).attribute(model, images, (targets + 1) % 10)
    assert (other - ours).abs().max().item() > 1e-2


@pytest.mark.parametrize("squeeze", [False, True], ids=["logit_B1", "logit_B"])
def test_single_logit_model_matches_pytorch_grad_cam_binary_target(squeeze: bool) -> None:
    """Class 1 of a single-logit model explains z and class 0 explains -z, as the peer's
    BinaryClassifierOutputTarget does (our class logits are (-z/2, z/2): the same map)."""
    torch.manual_seed(3)
    model = SingleLogit(squeeze=squeeze).eval()
    images = torch.randn(6, 3, 32, 32)
    targets = torch.tensor([1, 0, 1, 0, 0, 1])
    ours = GradCAM("features.6").attribute(model, images, targets)
    theirs = peer_maps(model, "features.6", images, targets, BinaryClassifierOutputTarget)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert (GradCAM("features.6").attribute(model, images, 1 - targets) - ours).abs().max().item() > 1e-2


def test_batched_equals_single_image_calls() -> None:
    model = SmallCNN(num_classes=4).eval()
    images = torch.randn(5, 3, 32, 32)
    targets = torch.tensor([0, 1, 2, 3, 1])
    batched = GradCAM().attribute(model, images, targets)
    singles = torch.cat([GradCAM().attribute(model, images[i : i + 1], targets[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)


def test_automatic_layer_is_last_spatial_map() -> None:
    resnet = torchvision.models.resnet18(num_classes=3)
    assert find_target_layer(resnet, torch.randn(2, 3, 64, 64))[0] == "layer4"
    # At 32 px layer4's map is 1x1 (nothing spatial to explain): the last stage with extent.
    assert find_target_layer(resnet, torch.randn(2, 3, 32, 32))[0] == "layer3"
    assert find_target_layer(SmallCNN(), torch.randn(1, 3, 32, 32))[0] == "features"
    model = SmallCNN(num_classes=4).train()
    images = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([0, 1, 2])
    torch.testing.assert_close(
        GradCAM().attribute(model, images, targets), GradCAM("features.6").attribute(model, images, targets)
    )
    assert model.training  # the dry run put the train flag back


def test_target_layer_as_module() -> None:
    model = SmallCNN(num_classes=4)
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    torch.testing.assert_close(
        GradCAM(model.features[6]).attribute(model, images, targets),
        GradCAM("features.6").attribute(model, images, targets),
    )


def test_unknown_layer_name_lists_nearest_names() -> None:
    model = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(ValueError, match=r"layer5.*nearest valid names.*'layer4'"):
        GradCAM("layer5").attribute(model, torch.randn(1, 3, 32, 32), torch.tensor([0]))


def test_foreign_module_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(nn.Conv2d(3, 3, 3)).attribute(SmallCNN(), torch.randn(1, 3, 32, 32), torch.tensor([0]))


def test_model_without_spatial_layer() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match="no submodule whose output is a spatial feature map"):
        GradCAM().attribute(mlp, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))


def test_bad_target_layer_type() -> None:
    with pytest.raises(TypeError, match="target_layer"):
        GradCAM(target_layer=4)  # type: ignore[arg-type]


def test_automatic_layer_is_located_per_input_size() -> None:
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    method = GradCAM()
    assert method.layer_for(resnet, torch.randn(1, 3, 64, 64))[0] == "layer4"
    assert method.layer_for(resnet, torch.randn(1, 3, 32, 32))[0] == "layer3"  # layer4 is 1x1 here
    assert method.layer_for(resnet, torch.randn(1, 3, 64, 64))[0] == "layer4"
