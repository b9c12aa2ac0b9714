"""``lightning-sas explain``: images explained with any classifier, through the real entry point ``main()``.

Every model is tiny and random (nothing can be downloaded): a torchvision and a timm ResNet with
their state_dicts saved to files, a TorchScript file, a ``torch.export`` archive and a Lightning
checkpoint of ``lit_classifier.LitClassifier``. The methods are the cheap ones (saliency,
Grad-CAM) but for one SaS run with 3 iterations.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from lit_classifier import LitClassifier, save_checkpoint
from lit_models import single_thread
from torch import nn

from lightning_sas.cli.main import PROGRAM, main

#: The ResNets' input side: layer4 still has a 2 x 2 map for Grad-CAM.
RESNET_SIZE = 64
#: The small nets' input side.
SMALL_SIZE = 24
#: (height, width) of the two image files: not square, not the model's size.
IMAGE_SHAPES = {"noise.png": (40, 48), "square.jpg": (50, 30)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallNet(nn.Module):
    """Two convolutions, global average pooling, a linear head: scriptable, traceable, exportable."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


@dataclass(frozen=True)
class Files:
    """What the tests explain and with what."""

    images: list[Path]
    resnet_weights: Path
    resnet: nn.Module
    checkpoint: Path
    folder: Path


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """Two image files of different content and size, a resnet18 state_dict (3 classes), a Lightning checkpoint."""
    import torchvision

    folder = tmp_path_factory.mktemp("explain")
    generator = np.random.default_rng(0)
    noise = generator.integers(0, 256, (*IMAGE_SHAPES["noise.png"], 3), dtype=np.uint8)
    square = np.full((*IMAGE_SHAPES["square.jpg"], 3), 40, dtype=np.uint8)
    square[10:30, 5:20] = (30, 200, 250)
    images = [folder / "noise.png", folder / "square.jpg"]
    cv2.imwrite(str(images[0]), noise)
    cv2.imwrite(str(images[1]), square)
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(resnet.state_dict(), folder / "resnet18.pth")
    checkpoint = save_checkpoint(LitClassifier(num_classes=2), folder / "lit.ckpt")
    return Files(images, folder / "resnet18.pth", resnet, checkpoint, folder)


def run(capsys: pytest.CaptureFixture[str], *arguments: object, strict: bool = False) -> tuple[int, list, list]:
    """``main(["explain", ...])``: its status and its stdout and stderr lines.

    Python warnings (torch's deprecations, SaS's note on the logit scale of an untrained model)
    are left out of the stderr lines unless ``strict``.
    """
    status = main(["explain", *map(str, arguments)])
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    return status, captured.out.strip().splitlines(), errors if strict else [e for e in errors if e.startswith(PROGRAM)]


def resnet_options(files: Files, out: Path) -> list[object]:
    return [
        "--arch", "torchvision:resnet18", "--weights", files.resnet_weights, "--num-classes", 3,
        "--image-size", RESNET_SIZE, "--device", "cpu", "--out", out,
    ]  # fmt: skip


def saliency_of(model: nn.Module, image: Path, size: int, target: int | None = None) -> np.ndarray:
    """The saliency map of ``image`` computed directly: read, resized, ImageNet-normalised, explained."""
    from lightning_sas.audit.run import explain
    from lightning_sas.methods import make_method
    from lightning_sas.probes.images import decode_image, prepare_image
    from lightning_sas.probes.probe_set import Probes

    pixels = torch.from_numpy(prepare_image(decode_image(image.read_bytes()), size, 3)).permute(2, 0, 1)[None]
    inputs = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    labels = torch.tensor([-1 if target is None else target])
    probes = Probes(images=inputs, labels=labels, roi=torch.zeros(1, size, size, dtype=torch.bool), names=["x"])
    methods = {"saliency": make_method("saliency", None)}
    result = explain(model, probes, methods, target="pred" if target is None else "label")
    return result.maps["saliency"][0].numpy()


def test_torchvision_weights_give_maps_at_each_images_size(files: Files, tmp_path: Path, capsys) -> None:
    out = tmp_path / "maps"
    status, lines, errors = run(capsys, *files.images, *resnet_options(files, out), "--methods", "gradcam,saliency")
    assert status == 0 and not errors, errors
    assert len(lines) == 2
    for line, image in zip(lines, files.images, strict=True):
        assert re.match(rf"{image.name}: class \d, confidence 0\.\d{{3}}; wrote {out / image.stem}/: ", line), line
        height, width = IMAGE_SHAPES[image.name]
        for method in ("gradcam", "saliency"):
            grey = cv2.imread(str(out / image.stem / f"{method}.png"), cv2.IMREAD_UNCHANGED)
            assert grey.shape == (height, width) and grey.dtype == np.uint8
            assert grey.min() == 0 and grey.max() == 255  # scaled at the image's size
            overlay = cv2.imread(str(out / image.stem / f"{method}_overlay.jpg"), cv2.IMREAD_UNCHANGED)
            assert overlay.shape == (height, width, 3)
            raw = np.load(out / image.stem / f"{method}.npy")
            assert raw.shape == (RESNET_SIZE, RESNET_SIZE) and raw.dtype == np.float32
            assert f"{method}.png {method}_overlay.jpg {method}.npy" in line
    first, second = (np.load(out / image.stem / "saliency.npy") for image in files.images)
    assert not np.allclose(first, second)
    # The raw map is the method's own, on the ImageNet-normalised input of the loaded weights.
    np.testing.assert_allclose(first, saliency_of(files.resnet, files.images[0], RESNET_SIZE), atol=1e-5)


def test_target_by_index_and_by_name_changes_the_explained_class(files: Files, tmp_path: Path, capsys) -> None:
    def saliency(target: str | None) -> tuple[np.ndarray, str]:
        out = tmp_path / f"target_{target}"
        chosen = [] if target is None else ["--target", target]
        options = [*resnet_options(files, out), "--methods", "saliency", "--class-names", "cat,dog,fox", *chosen]
        status, lines, errors = run(capsys, files.images[1], *options)
        assert status == 0 and not errors, errors
        return np.load(out / files.images[1].stem / "saliency.npy"), lines[0]

    by_index, line = saliency("2")
    assert "; explained class 2 (fox); wrote " in line
    by_name, _ = saliency("fox")
    np.testing.assert_array_equal(by_index, by_name)
    other, _ = saliency("0")
    assert not np.allclose(other, by_index)
    np.testing.assert_allclose(other, saliency_of(files.resnet, files.images[1], RESNET_SIZE, target=0), atol=1e-5)
    predicted_map, line = saliency(None)
    assert re.match(r"square\.jpg: class \d \((cat|dog|fox)\), confidence ", line) and "explained" not in line
    np.testing.assert_allclose(predicted_map, saliency_of(files.resnet, files.images[1], RESNET_SIZE), atol=1e-5)


@pytest.mark.parametrize("compile_with", ["script", "trace"])
def test_torchscript_file_explains_and_reports_gradcam_per_method(
    files: Files, tmp_path: Path, capsys, compile_with: str
) -> None:
    net = SmallNet().eval()
    example = torch.rand(2, 3, SMALL_SIZE, SMALL_SIZE)
    scripted = torch.jit.script(net) if compile_with == "script" else torch.jit.trace(net, example)
    model_file = tmp_path / "model.pt"
    torch.jit.save(scripted, str(model_file))
    options = ["--model-file", model_file, "--image-size", SMALL_SIZE, "--device", "cpu"]
    status, lines, errors = run(
        capsys, *files.images, *options, "--methods", "saliency,gradcam", "--out", tmp_path / "a"
    )
    assert status == 2
    assert len(errors) == 2 and errors[0].startswith("lightning-sas: warning: gradcam failed"), errors
    assert "TorchScript" in errors[0] and errors[1].startswith("lightning-sas: error: 1 of 2 methods failed (gradcam)")
    for image in files.images:
        assert (tmp_path / "a" / image.stem / "saliency_overlay.jpg").is_file()
        assert not (tmp_path / "a" / image.stem / "gradcam.png").exists()
    assert len(lines) == 2 and all("saliency.npy" in line and "gradcam" not in line for line in lines)
    status, _, errors = run(capsys, *files.images, *options, "--methods", "saliency", "--out", tmp_path / "b")
    assert status == 0 and not errors
    np.testing.assert_allclose(
        np.load(tmp_path / "b" / "noise" / "saliency.npy"), saliency_of(net, files.images[0], SMALL_SIZE), atol=1e-5
    )


def test_export_archive_is_recognised_by_content_and_fixes_the_input_size(files: Files, tmp_path: Path, capsys) -> None:
    net = SmallNet().eval()
    example = (torch.rand(2, 3, SMALL_SIZE, SMALL_SIZE),)
    program = torch.export.export(net, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "model.pt2")
    renamed = tmp_path / "model.bin"  # the content says what it is, not the extension
    shutil.copy(tmp_path / "model.pt2", renamed)
    options = ["--model-file", renamed, "--methods", "saliency", "--device", "cpu"]
    status, lines, errors = run(capsys, *files.images, *options, "--out", tmp_path / "maps")
    assert status == 0 and not errors, errors
    assert len(lines) == 2
    raw = np.load(tmp_path / "maps" / "noise" / "saliency.npy")
    assert raw.shape == (SMALL_SIZE, SMALL_SIZE)  # no --image-size: the size it was exported for
    np.testing.assert_allclose(raw, saliency_of(net, files.images[0], SMALL_SIZE), atol=1e-5)
    status, _, errors = run(capsys, files.images[0], *options, "--image-size", 32, "--out", tmp_path / "other")
    assert status == 2 and len(errors) == 1
    assert errors[0].startswith("lightning-sas: error: --image-size 32x32: --model-file ") and "24x24" in errors[0]
    torch.export.save(torch.export.export(net, example), tmp_path / "fixed.pt2")
    status, _, errors = run(capsys, files.images[0], "--model-file", tmp_path / "fixed.pt2", "--out", tmp_path / "x")
    assert status == 2 and len(errors) == 1 and "fixed batch of 2" in errors[0] and "dynamic_shapes" in errors[0]


def test_lightning_checkpoint_with_sas_and_gradcam(files: Files, tmp_path: Path, capsys) -> None:
    options = ["--checkpoint", files.checkpoint, "--model", "lit_classifier:LitClassifier", "--image-size", 16]
    status, lines, errors = run(
        capsys, files.images[1], *options, "--method-config", "sas.iterations=3", "--device", "cpu", "--out", tmp_path
    )
    assert status == 0 and not errors, errors
    assert lines[0].startswith("square.jpg: class ") and "sas.png" in lines[0] and "gradcam.png" in lines[0]
    for method in ("sas", "gradcam"):
        raw = np.load(tmp_path / "square" / f"{method}.npy")
        assert raw.shape == (16, 16) and np.isfinite(raw).all() and raw.std() > 0
        assert cv2.imread(str(tmp_path / "square" / f"{method}.png"), cv2.IMREAD_UNCHANGED).shape == (50, 30)


def test_timm_weights_under_a_key_and_a_prefix_are_loaded(files: Files, tmp_path: Path, capsys) -> None:
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    # A training script's dict, saved from a DDP-wrapped model: {"model": {"module.<key>": tensor}}.
    torch.save(
        {"epoch": 3, "model": {f"module.{key}": value for key, value in model.state_dict().items()}}, tmp_path / "w.pt"
    )
    options = ["--arch", "timm:test_resnet", "--weights", tmp_path / "w.pt", "--num-classes", 2, "--image-size", 32]
    status, lines, errors = run(capsys, files.images[0], *options, "--methods", "saliency", "--out", tmp_path / "maps")
    assert status == 0 and not errors, errors
    np.testing.assert_allclose(
        np.load(tmp_path / "maps" / "noise" / "saliency.npy"), saliency_of(model, files.images[0], 32), atol=1e-5
    )


def test_existing_files_are_kept_unless_overwrite(files: Files, tmp_path: Path, capsys) -> None:
    options = ["--checkpoint", files.checkpoint, "--model", "lit_classifier:LitClassifier", "--image-size", 16]
    options += ["--methods", "saliency", "--device", "cpu", "--out", tmp_path]
    assert run(capsys, files.images[0], *options)[0] == 0
    (tmp_path / "noise" / "saliency.png").write_bytes(b"previous")
    status, lines, errors = run(capsys, files.images[0], *options)
    assert status == 2 and not lines and len(errors) == 1
    assert "already holds 3 of the files" in errors[0] and "--overwrite" in errors[0]
    assert (tmp_path / "noise" / "saliency.png").read_bytes() == b"previous"
    assert run(capsys, files.images[0], *options, "--overwrite")[0] == 0
    assert cv2.imread(str(tmp_path / "noise" / "saliency.png"), cv2.IMREAD_UNCHANGED).shape == (40, 48)


ARCH = ["--arch", "torchvision:resnet18", "--random-weights", "--image-size", RESNET_SIZE, "--device", "cpu"]
#: (case, arguments after "explain" given the fixture files, what the one stderr line must hold).
BAD_INPUTS: list[tuple[str, Callable[[Files], list[object]], tuple[str, ...]]] = [
    ("no source", lambda f: [f.images[0]], ("no model given", "--arch", "--model-file", "--checkpoint")),
    ("two sources", lambda f: [f.images[0], *ARCH, "--model-file", f.checkpoint], ("not --arch and --model-file",)),
    ("arch without weights", lambda f: [f.images[0], "--arch", "timm:resnet18"],
     ("--weights FILE", "--random-weights")),
    ("unknown arch", lambda f: [f.images[0], "--arch", "torchvision:resnet19", "--random-weights"],
     ("--arch torchvision:resnet19", "resnet18")),
    ("unknown library", lambda f: [f.images[0], "--arch", "keras:resnet50", "--random-weights"],
     ("--arch takes torchvision:NAME or timm:NAME", "'keras:resnet50'")),
    ("head size", lambda f: [f.images[0], "--arch", "torchvision:resnet18", "--weights", f.resnet_weights],
     ("--weights {folder}/resnet18.pth", "for 3 classes", "--num-classes 3")),
    ("other architecture", lambda f: [f.images[0], "--arch", "torchvision:squeezenet1_0", "--weights",
                                      f.resnet_weights],
     ("--weights ", "the weights do not fit SqueezeNet (", "e.g. conv1.weight")),
    ("missing weights file", lambda f: [f.images[0], "--arch", "timm:resnet18", "--weights", f.folder / "no.pth"],
     ("--weights {folder}/no.pth: no such file.",)),
    ("state_dict as model file", lambda f: [f.images[0], "--model-file", f.resnet_weights],
     ("--model-file ", "is a torch.save file", "--arch LIBRARY:NAME --weights FILE")),
    ("image as model file", lambda f: [f.images[0], "--model-file", f.images[0]], ("--model-file ", "a PNG image")),
    ("model without checkpoint", lambda f: [f.images[0], *ARCH, "--model", "a:B"], ("--model goes with --checkpoint",)),
    ("checkpoint without model", lambda f: [f.images[0], "--checkpoint", f.checkpoint],
     ("needs --model MODULE:CLASS",)),
    # The image is checked before the (missing) weights: before any model work.
    ("missing image", lambda f: [f.folder / "nowhere.png", "--arch", "torchvision:resnet18", "--weights", "no.pth"],
     ("IMAGE {folder}/nowhere.png: no such file",)),
    ("undecodable image", lambda f: [f.folder / "notes.png", *ARCH], ("IMAGE {folder}/notes.png is not a decodable",)),
    ("same name", lambda f: [f.images[0], f.folder / "sub" / "noise.jpg", *ARCH], ("the same name 'noise'",)),
    ("unknown class name", lambda f: [f.images[0], *ARCH, "--class-names", "cat,dog", "--target", "dgo"],
     ("--target 'dgo' is not one of --class-names", "did you mean 'dog'")),
    ("class index out of range", lambda f: [f.images[0], *ARCH, "--num-classes", 3, "--target", 7],
     ("--target 7: class 7 is not a class of the model, which has 3 classes",)),
    ("too few class names", lambda f: [f.images[0], *ARCH, "--class-names", "cat,dog"],
     ("--class-names gives 2 names, but the model has 1000 classes",)),
]  # fmt: skip


@pytest.mark.parametrize(("arguments", "expected"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_exit_2_with_one_line_naming_the_option(
    files: Files, tmp_path: Path, capsys, arguments: Callable[[Files], list[object]], expected: tuple[str, ...]
) -> None:
    (files.folder / "notes.png").write_text("not an image", encoding="utf-8")
    (files.folder / "sub").mkdir(exist_ok=True)
    shutil.copy(files.images[0], files.folder / "sub" / "noise.jpg")
    status, lines, errors = run(capsys, *arguments(files), "--out", tmp_path / "out", strict=True)
    assert status == 2 and not lines
    assert len(errors) == 1 and errors[0].startswith("lightning-sas: error: "), errors
    for needle in expected:
        assert needle.format(folder=files.folder) in errors[0], errors[0]
    assert not (tmp_path / "out").exists()


def test_help_imports_no_heavy_library_and_names_the_defaults() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from lightning_sas.cli.main import main\n"
        "text = io.StringIO()\n"
        "with contextlib.redirect_stdout(text):\n"
        "    status = main(['explain', '--help'])\n"
        "    status += main(['explain', 'a.png', '--arch', 'timm:resnet18', '--model-file', 'm.pt2'])\n"
        "heavy = sorted(name for name in ('torch', 'lightning', 'cv2', 'numpy', 'timm') if name in sys.modules)\n"
        "print(status, heavy)\n"
        "print(text.getvalue())\n"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert process.returncode == 0, process.stderr
    first, _, text = process.stdout.partition("\n")
    text = " ".join(text.split())  # argparse wraps the help lines
    assert first == "2 []"  # --help exits 0, two sources exit 2, before any heavy import
    assert process.stderr.startswith("lightning-sas: error: give one model source, not --arch and --model-file")
    for needle in ("--arch", "--model-file", "--checkpoint", "0.485 0.456 0.406", "0.229 0.224 0.225", "ImageNet"):
        assert needle in text, needle
    for needle in ("<method>_overlay.jpg", "<method>.npy", "same", "exit status", "--overwrite", "torch.export"):
        assert needle in text, needle
