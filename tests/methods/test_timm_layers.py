"""The automatic Grad-CAM layer on timm architectures, checked by its maps against a layer known to be right.

Each architecture is built with random weights (the smallest variant, a few shrunk further with
model options), explained at 64 px unless it needs more for its last stage to keep a 2x2 grid.
The reference layer per family, and why:

* class-token transformers (ViT, DeiT, DINOv2 with registers, ConViT, CaiT, XCiT, PiT, CoaT): the
  first norm of the last block that reads the patch tokens (``norm1``). After that block's
  attention only the class token reaches the head, so the norm is the last place where each
  patch still has features; it is pytorch-grad-cam's recipe for ViTs.
* average-pooled transformers and MLPs (EVA-02, BEiT, GAP ViT, LeViT, MLP-Mixer, EfficientFormerV2):
  the final token map that is pooled (the last norm, or the last stage where there is none).
* hierarchical transformers and CNNs: the final map before global pooling: the last stage, or the
  last conv / norm that runs on the map before pooling (EfficientNet's ``bn2``, DenseNet's
  ``norm5``, EfficientViT's ``head.in_conv``, Swin's channels-last ``norm``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pytest
import torch
from test_gradcam import peer_maps
from torch import nn

from lightning_sas.methods import GradCAM
from lightning_sas.methods.layers import attention_internals

timm = pytest.importorskip("timm")

NUM_CLASSES = 3


@dataclass(frozen=True)
class Case:
    #: The layer known to be right (see the module docstring).
    reference: str
    size: int = 64
    #: Options for ``timm.create_model`` beyond ``num_classes`` (``img_size`` is added where the model takes it).
    options: dict = field(default_factory=dict)
    takes_img_size: bool = True
    #: The timm name, where the case's name is not one (a second input size).
    model: str | None = None
    #: Set the BatchNorm statistics to the batch's: timm's random LeViT and EfficientFormerV2 shrink
    #: their activations ~1e4-fold, until attention averages all tokens into one (blank maps).
    calibrate: bool = False


# Depth / width options only where a full-size variant would cost seconds on two cores.
SHRUNK = {"depth": 4, "embed_dim": 96, "num_heads": 2}
CASES = {
    # Class-token transformers: the last block's first norm.
    "vit_tiny_patch16_224": Case("blocks.11.norm1"),
    "deit_tiny_patch16_224": Case("blocks.11.norm1"),
    "deit_tiny_distilled_patch16_224": Case("blocks.11.norm1"),  # class and distillation tokens
    "deit3_small_patch16_224": Case("blocks.3.norm1", options=SHRUNK),
    "vit_small_patch14_reg4_dinov2": Case("blocks.3.norm1", size=56, options=SHRUNK),  # class + 4 registers
    "convit_tiny": Case("blocks.3.norm1", options={"depth": 4, "local_up_to_layer": 2}),  # GPSA, then MHSA
    "cait_xxs24_224": Case("blocks_token_only.1.norm1", options={"depth": 4}),  # class attention over the patches
    "xcit_nano_12_p16_224": Case("cls_attn_blocks.1.norm1", options={"depth": 4}),
    "pit_ti_224": Case("transformers.2.blocks.3.norm1"),
    "coat_lite_tiny": Case("serial_blocks4.1.norm1"),
    # Average-pooled token maps: the map that is pooled.
    "eva02_tiny_patch14_224": Case("norm", size=56),
    "beit_base_patch16_224": Case("norm", options=SHRUNK),
    "vit_little_patch16_reg4_gap_256": Case("norm", options=SHRUNK),
    "levit_128s": Case("stages.2", size=128, calibrate=True),  # total stride 64: 2x2 at 128 px
    # At 64 px its last stage is 1x1: the last stage with extent, not the subsampling attention's keys.
    "levit_128s-64px": Case("stages.1", calibrate=True, model="levit_128s"),
    "mixer_s32_224": Case("norm"),
    "efficientformerv2_s0": Case("norm", calibrate=True),
    # Hierarchical transformers and hybrids: the final map before pooling.
    "swin_tiny_patch4_window7_224": Case("norm", options={"window_size": 4}),  # channels-last
    "maxvit_pico_rw_256": Case("norm"),
    "pvt_v2_b0": Case("stages.3", takes_img_size=False),
    "tiny_vit_5m_224": Case("stages.3", takes_img_size=False),
    "edgenext_xx_small": Case("stages.3", takes_img_size=False),
    "mobilevit_xxs": Case("final_conv", takes_img_size=False),
    "efficientvit_b0": Case("head.in_conv", takes_img_size=False),  # the head's conv runs before its pooling
    "mobilenetv4_hybrid_medium": Case("blocks.4", takes_img_size=False),
    "botnet26t_256": Case("stages.3"),  # self-attention inside the bottlenecks
    # CNNs: the final map before pooling.
    "resnet18": Case("layer4", takes_img_size=False),
    "skresnet18": Case("layer4", takes_img_size=False),  # selective-kernel attention (softmax over kernels)
    "resnest14d": Case("layer4", takes_img_size=False),  # split attention
    "convnext_atto": Case("stages.3", takes_img_size=False),
    "efficientnet_b0": Case("bn2", takes_img_size=False),
    "mobilenetv3_small_050": Case("blocks.5", takes_img_size=False),  # its conv_head runs after the pooling
    "ghostnet_050": Case("blocks.9", takes_img_size=False),
    "regnetx_002": Case("s4", takes_img_size=False),
    "densenet121": Case("features.norm5", takes_img_size=False),
    "cs3darknet_s": Case("stages.3", takes_img_size=False),
    "dla46_c": Case("level5", takes_img_size=False),
    "mambaout_femto": Case("stages.3", takes_img_size=False),  # channels-last blocks
    "inception_v3": Case("Mixed_7c", size=107, takes_img_size=False),  # unpadded convs: 2x2 at 107 px
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second thread gains nothing, and on shared cores it makes timm's initialisation ~5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The architecture with random weights (seeded) and two random images of its case's size."""
    case = CASES[name]
    torch.manual_seed(0)
    options = case.options | ({"img_size": case.size} if case.takes_img_size else {})
    model = timm.create_model(case.model or name, pretrained=False, num_classes=NUM_CLASSES, **options).eval()
    images = torch.randn(2, 3, case.size, case.size)
    for module in model.modules():
        # timm zero-initialises some heads (MLP-Mixer): the score would have no gradient at all.
        if isinstance(module, nn.Linear) and module.out_features == NUM_CLASSES and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
        if case.calibrate and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: one forward sets the statistics
    if case.calibrate:
        with torch.no_grad():
            model.train()(images)
        model.eval()
    return model, images


@pytest.mark.parametrize("name", list(CASES))
def test_automatic_layer_gives_the_reference_maps(name: str) -> None:
    model, images = build(name)
    targets = torch.tensor([0, 2])
    method = GradCAM()
    chosen = method.layer_name(model, images)
    ours = method.attribute(model, images, targets)
    reference = GradCAM(CASES[name].reference).attribute(model, images, targets)
    # A blank reference would make the comparison vacuous.
    assert bool((reference.flatten(1).amax(dim=1) == 1).any()), "the reference maps are blank"
    difference = (ours - reference).abs().max().item()
    assert difference < 1e-5, f"automatic layer {chosen!r} differs from {CASES[name].reference!r} by {difference}"
    assert chosen not in attention_internals(model)


def tokens_to_map(tokens: torch.Tensor, prefix: int, side: int) -> torch.Tensor:
    return tokens[:, prefix:].unflatten(1, (side, side)).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("name", "reshape"),
    [
        ("vit_tiny_patch16_224", functools.partial(tokens_to_map, prefix=1, side=4)),
        ("deit_tiny_distilled_patch16_224", functools.partial(tokens_to_map, prefix=2, side=4)),
        ("swin_tiny_patch4_window7_224", lambda channels_last: channels_last.permute(0, 3, 1, 2)),
    ],
)
def test_automatic_layer_matches_pytorch_grad_cam(name: str, reshape) -> None:
    """The automatic layer and reading give pytorch-grad-cam's maps for its recipe at the reference layer."""
    model, images = build(name)
    targets = torch.tensor([0, 2])
    ours = GradCAM().attribute(model, images, targets)
    theirs = peer_maps(model, CASES[name].reference, images, targets, reshape_transform=reshape)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_attention_internals_of_a_timm_vit() -> None:
    """Everything under each block's attention, nothing else: the norms, the MLP and the attention output stay."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=NUM_CLASSES)
    internal = attention_internals(model)
    for block in ("blocks.0", "blocks.1"):
        assert {f"{block}.attn.{part}" for part in ("qkv", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop")} <= (
            internal
        )
        assert not {f"{block}.attn", f"{block}.norm1", f"{block}.mlp.fc1", f"{block}.norm2"} & internal
    assert all(".attn." in name for name in internal)
