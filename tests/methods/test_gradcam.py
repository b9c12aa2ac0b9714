"""Grad-CAM: agreement with pytorch-grad-cam, layer location, errors."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torchvision
from models import NaNForBrightImages, SingleLogit, SmallCNN
from pytorch_grad_cam import GradCAM as PeerGradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform
from torch import nn

from lightning_sas.methods import GradCAM
from lightning_sas.methods.base import minmax_normalize
from lightning_sas.methods.layers import FeatureLayout, find_target_layer, locate_target_layer, read_layout


def peer_maps(
    model: nn.Module,
    layer_name: str,
    images: torch.Tensor,
    targets: torch.Tensor,
    target=ClassifierOutputTarget,
    reshape_transform=None,
) -> torch.Tensor:
    peer_model = copy.deepcopy(model).eval()  # the peer writes into .grad and leaves eval mode on
    layer = dict(peer_model.named_modules())[layer_name]
    with PeerGradCAM(model=peer_model, target_layers=[layer], reshape_transform=reshape_transform) as cam:
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


# ---------------------------------------------------------------- transformers: tokens and channels-last maps


def random_head_vit(image_size: int, num_classes: int = 5) -> nn.Module:
    """torchvision's ViT-B/16 with a random head (torchvision zero-initialises it: no gradient at all)."""
    model = torchvision.models.vit_b_16(image_size=image_size, num_classes=num_classes)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval()


def channels_last_to_map(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2)


def test_vit_matches_pytorch_grad_cam_with_its_reshape_transform() -> None:
    """Automatic location and token reading give the peer's map for its documented ViT recipe:
    the last block's first layernorm, class token dropped, 4x4 patch grid."""
    torch.manual_seed(3)
    model = random_head_vit(64)
    images = torch.randn(6, 3, 64, 64)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    layer = "encoder.layers.encoder_layer_11.ln_1"
    method = GradCAM()
    assert method.layer_for(model, images)[0] == layer
    ours = method.attribute(model, images, targets)
    peer_reshape = functools.partial(vit_reshape_transform, height=4, width=4)
    theirs = peer_maps(model, layer, images, targets, reshape_transform=peer_reshape)
    assert (ours - theirs).abs().max().item() < 1e-5
    explicit = GradCAM(layer, reshape=peer_reshape).attribute(model, images, targets)
    assert (explicit - theirs).abs().max().item() < 1e-5
    assert (GradCAM().attribute(model, images, (targets + 1) % 5) - ours).abs().max().item() > 1e-2


def test_vit_block_output_has_no_patch_gradient() -> None:
    """Why the last block's ln_1 and not its output: after the last attention only the class token
    reaches the head, so Grad-CAM on the block output is blank (the peer's too)."""
    model = random_head_vit(32, num_classes=3)
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    blank = GradCAM("encoder.layers.encoder_layer_11").attribute(model, images, targets)
    assert bool((blank == 0).all())
    assert bool((GradCAM().attribute(model, images, targets).flatten(1).amax(dim=1) == 1).all())


def test_zero_initialised_vit_head_is_not_remembered() -> None:
    """Untrained torchvision ViT: the score has no gradient, the fallback is used once and not cached."""
    model = torchvision.models.vit_b_16(image_size=32, num_classes=3).eval()
    images = torch.randn(1, 3, 32, 32)
    method = GradCAM()
    assert method.layer_for(model, images)[0] == "encoder"  # the last token map: no gradient to decide by
    nn.init.normal_(model.heads.head.weight, std=0.02)  # "after training"
    assert method.layer_for(model, images)[0] == "encoder.layers.encoder_layer_11.ln_1"


@pytest.mark.parametrize("layer_name", ["features", "norm"])
def test_swin_matches_pytorch_grad_cam(layer_name: str) -> None:
    """torchvision Swin's stages are channels-last [B, h, w, C]: read automatically, on a wide input."""
    torch.manual_seed(3)
    model = torchvision.models.swin_t(num_classes=5).eval()
    images = torch.randn(4, 3, 64, 96)  # a 2x3 grid after the last stage
    targets = torch.tensor([4, 1, 0, 3])
    ours = GradCAM(layer_name).attribute(model, images, targets)
    theirs = peer_maps(model, layer_name, images, targets, reshape_transform=channels_last_to_map)
    assert ours.shape == theirs.shape == (4, 64, 96)
    assert (ours - theirs).abs().max().item() < 1e-5
    # torchvision's own Permute module works as an explicit reshape too.
    permute = torchvision.ops.misc.Permute([0, 3, 1, 2])
    assert (GradCAM(layer_name, reshape=permute).attribute(model, images, targets) - theirs).abs().max().item() < 1e-5
    assert (GradCAM(layer_name).attribute(model, images, (targets + 1) % 5) - ours).abs().max().item() > 1e-2
    if layer_name == "norm":
        # The automatic choice is the Permute after the norm: the same map, channels-first.
        method = GradCAM()
        assert method.layer_for(model, images)[0] == "permute"
        assert (method.attribute(model, images, targets) - ours).abs().max().item() < 1e-5


class SwinPooledChannelsLast(nn.Module):
    """Swin whose head pools the channels-last map directly (timm's layout): no Permute module."""

    def __init__(self, swin: nn.Module) -> None:
        super().__init__()
        self.features, self.norm, self.head = swin.features, swin.norm, swin.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(images)).mean(dim=(1, 2)))


def test_channels_last_layer_is_located_automatically() -> None:
    swin = torchvision.models.swin_t(num_classes=3).eval()
    pooled = SwinPooledChannelsLast(swin)
    images, targets = torch.randn(2, 3, 64, 64), torch.tensor([2, 0])
    method = GradCAM()
    assert method.layer_for(pooled, images)[0] == "norm"
    torch.testing.assert_close(pooled(images), swin(images), atol=1e-5, rtol=0)
    ours = method.attribute(pooled, images, targets)
    assert (ours - GradCAM("norm").attribute(swin, images, targets)).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    ("shape", "image_size", "expected"),
    [
        ((2, 512, 7, 7), (224, 224), FeatureLayout("channels_first", (7, 7))),
        ((2, 7, 7, 768), (224, 224), FeatureLayout("channels_last", (7, 7))),
        ((2, 2, 3, 768), (64, 96), FeatureLayout("channels_last", (2, 3))),
        ((2, 768, 2, 3), (64, 96), FeatureLayout("channels_first", (2, 3))),
        # Both readings fit a square input: channels-first, PyTorch's convention.
        ((2, 16, 16, 16), (64, 64), FeatureLayout("channels_first", (16, 16))),
        # Neither fits (unpadded convolutions): channels-first, as before.
        ((2, 4, 6, 6), (8, 8), FeatureLayout("channels_first", (6, 6))),
        ((2, 197, 768), (224, 224), FeatureLayout("tokens", (14, 14), prefix_tokens=1)),
        ((2, 196, 768), (224, 224), FeatureLayout("tokens", (14, 14), prefix_tokens=0)),
        ((2, 198, 768), (224, 224), FeatureLayout("tokens", (14, 14), prefix_tokens=2)),  # class + distillation
        ((2, 261, 384), (224, 224), FeatureLayout("tokens", (16, 16), prefix_tokens=5)),  # patch 14 + 4 registers
        ((2, 5, 768), (32, 32), FeatureLayout("tokens", (2, 2), prefix_tokens=1)),
        ((2, 25, 64), (32, 64), FeatureLayout("tokens", (4, 6), prefix_tokens=1)),  # wide input, 4x6 grid
        ((2, 10), (32, 32), None),
        ((2, 35, 768), (224, 224), None),  # 35 tokens: no prefix of 0..8 leaves a square grid
        ((2, 3, 4, 5, 6), (32, 32), None),
    ],
)
def test_read_layout(shape: tuple, image_size: tuple, expected: FeatureLayout | None) -> None:
    assert read_layout(shape, image_size) == expected


def test_token_layout_lays_patches_on_the_grid_row_by_row() -> None:
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # class token + 2x3 patches
    as_map = read_layout(tokens.shape, (32, 48)).to_map(tokens)
    assert as_map.shape == (2, 3, 2, 3)
    torch.testing.assert_close(as_map[1, 2, 1, 0], tokens[1, 1 + 3, 2])  # row 1, column 0 is patch 3
    torch.testing.assert_close(vit_reshape_transform(tokens, 2, 3), as_map)


def test_reshape_replaces_the_automatic_reading() -> None:
    """The reshape is applied to the activations and their gradient: a flip of the grid flips the map."""
    model = torchvision.models.resnet18(num_classes=3).eval()
    images, targets = torch.randn(2, 3, 64, 96), torch.tensor([0, 2])
    plain = GradCAM("layer4").attribute(model, images, targets)
    flipped = GradCAM("layer4", reshape=lambda activations: activations.flip(-1)).attribute(model, images, targets)
    torch.testing.assert_close(flipped, plain.flip(-1), atol=1e-6, rtol=0)
    assert (flipped - plain).abs().max().item() > 1e-2


@pytest.mark.parametrize(
    ("layer_name", "size", "message"),
    [
        (
            "fc",
            64,
            r"`target_layer` 'fc' returns a tensor of shape \[2, 3\] for 2 image\(s\), which is not a map "
            r".*Pass `reshape=`",
        ),
        ("layer1.0.relu", 64, r"`target_layer` 'layer1.0.relu' must run once per forward .*; ReLU ran 2 time\(s\)"),
    ],
)
def test_layer_output_that_is_not_a_map(layer_name: str, size: int, message: str) -> None:
    model = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(ValueError, match=message):
        GradCAM(layer_name).attribute(model, torch.randn(2, 3, size, size), torch.tensor([0, 1]))
    assert model.training


def test_attention_layer_returning_a_tuple() -> None:
    model = random_head_vit(32, num_classes=3)
    with pytest.raises(
        ValueError, match=r"'encoder.layers.encoder_layer_11.self_attention' must run once .* returned a tuple"
    ):
        GradCAM("encoder.layers.encoder_layer_11.self_attention").attribute(
            model, torch.randn(1, 3, 32, 32), torch.tensor([0])
        )


@pytest.mark.parametrize(
    ("reshape", "message"),
    [
        (
            lambda activations: activations.flatten(1),
            r"`reshape` must map the output of `target_layer` 'layer4' \(shape \[2, 512, 2, 2\]\) to a map "
            r"\[2, C, h, w\]; it returned a tensor of shape \[2, 2048\]",
        ),
        (lambda activations: None, r"`reshape` must map .* it returned a NoneType"),
    ],
)
def test_reshape_returning_no_map(reshape, message: str) -> None:
    model = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(ValueError, match=message):
        GradCAM("layer4", reshape=reshape).attribute(model, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))


def test_bad_reshape_arguments() -> None:
    with pytest.raises(TypeError, match=r"`reshape` must be None or a callable .* got str 'tokens'"):
        GradCAM("layer4", reshape="tokens")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`reshape` needs `target_layer`"):
        GradCAM(reshape=channels_last_to_map)


@pytest.mark.parametrize("how", ["multiply", "masked"])
def test_location_ignores_images_with_nan_logits(how: str) -> None:
    """The gradient evidence comes from the images with finite logits; with none, the answer is provisional."""
    model = NaNForBrightImages(how, num_classes=4).eval()
    images = torch.randn(2, 3, 16, 16)
    images[0] += 10.0  # NaN logits for the first image
    located = locate_target_layer(model, images)
    assert (located.name, located.from_gradient) == ("features", True)
    images[1] += 10.0
    located = locate_target_layer(model, images)
    assert (located.name, located.from_gradient) == ("features", False)
