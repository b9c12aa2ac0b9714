"""Bad inputs through the real entry point, ``python -m lightning_sas audit``: each exits 2 with
exactly one line on stderr that says what is wrong; unexpected exceptions also leave their
traceback in ``<out>/error.log``.

The subprocesses run a few at a time from one module fixture (most of their time is importing
torch and Lightning; the cheap cases answer before that import). A few cases that need those
imports anyway run through ``main()`` in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from lit_classifier import IMAGE_SIZE, LitClassifier, save_checkpoint, write_probes
from test_cli import single_thread

from lightning_sas.cli.main import main

TESTS_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One bad input: arguments replacing or added to the base command, and what the error line says.

    ``{name}`` placeholders in the arguments are paths of the workspace.
    """

    name: str
    arguments: tuple[str, ...]
    expected: tuple[str, ...]
    error_log: str | None = None  # text the traceback in <out>/error.log must hold
    absent: tuple[str, ...] = ()  # text the error line must not hold
    # Cases that need torch and Lightning but no module outside tests/ run through main() in
    # this process: the same code path without paying for the imports again.
    in_process: bool = False


CASES = [
    # Subprocesses that import torch and Lightning first: they take longest.
    Case(
        "forward raises",
        ("--model", "lit_classifier:ForwardFails"),
        (
            "running the model on the probe images [6, 3, 16, 16]",
            "RuntimeError: forward exploded on purpose",
            "error.log",
        ),
        error_log="forward exploded on purpose",
    ),  # fmt: skip
    Case(
        "model module raises a non-ImportError at import",
        ("--model", "broken_at_import:Net"),
        ("importing --model broken_at_import:Net raised ValueError: boom at import time", "error.log"),
        error_log="boom at import time",
    ),
    Case(
        "--output function raises",
        ("--model", "lit_classifier:DictClassifier", "--output", "lit_classifier:failing_output"),
        ("applying --output lit_classifier:failing_output", "KeyError", "error.log"),
        error_log="a bug in the --output function",
        in_process=True,
    ),
    Case(
        "output is a feature map, not logits",
        ("--model", "lit_classifier:FeatureMapModel"),
        ("a tensor of shape [6, 8, 16, 16]", "not class logits [6, num_classes]", "--output"),
    ),
    Case(
        "dict output without its key",
        ("--model", "lit_classifier:DictClassifier", "--output", "logitz"),
        ("--output logitz is a key that does not fit", "keys: features, logits"),
        in_process=True,
    ),
    Case(
        "module with a missing dependency",
        ("--model", "needs_dependency:Net"),
        ("--model needs_dependency:Net", "not_installed_dependency_xyz", "a dependency of the module is missing"),
    ),
    Case(
        "bare state_dict as checkpoint",
        ("--checkpoint", "{state_dict}"),
        ("--checkpoint", "not a Lightning checkpoint", "Trainer.save_checkpoint"),
        in_process=True,
    ),
    Case(
        "weights of another model",
        ("--checkpoint", "{mismatch}"),
        ("the weights do not fit LitClassifier", "size mismatch"),
        in_process=True,
    ),
    # Cheap cases: refused before torch is imported.
    Case("empty checkpoint file", ("--checkpoint", "{empty}"), ("--checkpoint", "is an empty file (0 bytes)")),
    Case(
        "folder without checkpoints",
        ("--checkpoint", "{modules}"),
        ("--checkpoint", "a folder without checkpoint files (.ckpt)"),
        absent=("no such file",),
    ),
    Case("glob matching nothing", ("--checkpoint", "{root}/*.nothing"), ("--checkpoint", "matches no file")),
    Case(
        "PNG as checkpoint",
        ("--checkpoint", "{png}"),
        ("is a PNG image, not a PyTorch checkpoint",),
        absent=("weights_only", "trust"),
    ),
    Case(
        "text file as checkpoint",
        ("--checkpoint", "{text}"),
        ("is a text file (it starts with 'epoch,loss'), not a PyTorch checkpoint",),
    ),
    Case("Git LFS pointer as checkpoint", ("--checkpoint", "{lfs}"), ("Git LFS pointer", "git lfs pull")),
    Case("truncated checkpoint", ("--checkpoint", "{truncated}"), ("damaged zip archive", "cut short")),
    Case("two means for RGB", ("--mean", "0.5", "0.5"), ("--mean 0.5 0.5", "1 value", "or 3", "--channels 3")),
    Case("std of zero", ("--std", "0"), ("--std values must be positive",)),
    Case("--out is a file", ("--out", "{out_file}"), ("--out", "exists and is not a folder")),
    Case(
        "--out holds an audit",
        ("--out", "{old_audit}"),
        ("already holds an audit", "summary.json", "--overwrite"),
    ),
    Case(
        "misspelled class name",
        ("--labels", "{typo_labels}", "--class-names", "benign,malignant"),
        ("--labels", "line 3", "'malignnat'", "did you mean 'malignant'?"),
    ),
    Case(
        "class index out of range",
        ("--labels", "{index_labels}", "--class-names", "benign,malignant"),
        ("line 2", "class index 7 is out of range", "--class-names"),
    ),
    Case("bad image size", ("--image-size", "0x16"), ("--image-size", "'0x16'", "HxW")),
]


@dataclass
class Workspace:
    root: Path
    paths: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("bad_inputs")
    images, masks, _ = write_probes(root / "probes", 6)
    checkpoint = save_checkpoint(LitClassifier(), root / "model.ckpt")
    paths = {"checkpoint": str(checkpoint), "images": str(images), "masks": str(masks)}

    (root / "empty.ckpt").write_bytes(b"")
    (root / "runs" / "checkpoints").mkdir(parents=True)
    (root / "runs" / "checkpoints" / "epoch=0-step=5.ckpt").write_bytes(checkpoint.read_bytes())
    (root / "metrics.ckpt").write_text("epoch,loss\n0,0.69\n", encoding="utf-8")
    (root / "pointer.ckpt").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 123456\n", encoding="utf-8"
    )
    data = checkpoint.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    torch.save(LitClassifier().state_dict(), root / "state_dict.pt")
    narrow = LitClassifier(width=4)
    torch.save(
        {"state_dict": narrow.state_dict(), "hyper_parameters": {"width": 8}, "pytorch-lightning_version": "2.2.0"},
        root / "mismatch.ckpt",
    )
    (root / "out_file").write_text("not a folder", encoding="utf-8")
    (root / "old_audit").mkdir()
    (root / "old_audit" / "summary.json").write_text("{}", encoding="utf-8")
    (root / "old_audit" / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"")
    (root / "typo_labels.csv").write_text(
        "filename,label\nprobe_0.png,benign\nprobe_1.png,malignnat\n", encoding="utf-8"
    )
    (root / "index_labels.csv").write_text("probe_0.png,0\nprobe_1.png,7\n", encoding="utf-8")
    modules = root / "modules"
    modules.mkdir()
    (modules / "broken_at_import.py").write_text('raise ValueError("boom at import time")\n', encoding="utf-8")
    (modules / "needs_dependency.py").write_text(
        "import not_installed_dependency_xyz  # noqa: F401\n", encoding="utf-8"
    )
    paths.update(
        empty=str(root / "empty.ckpt"),
        modules=str(root / "modules"),
        root=str(root),
        png=str(images / "probe_0.png"),
        text=str(root / "metrics.ckpt"),
        lfs=str(root / "pointer.ckpt"),
        truncated=str(root / "truncated.ckpt"),
        state_dict=str(root / "state_dict.pt"),
        mismatch=str(root / "mismatch.ckpt"),
        out_file=str(root / "out_file"),
        old_audit=str(root / "old_audit"),
        typo_labels=str(root / "typo_labels.csv"),
        index_labels=str(root / "index_labels.csv"),
    )
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(TESTS_DIR), str(modules), environment.get("PYTHONPATH")])
    )
    environment["OMP_NUM_THREADS"] = "1"
    return Workspace(root, paths, environment)


def case_command(case: Case, workspace: Workspace) -> tuple[list[str], Path]:
    """``python -m lightning_sas audit`` with the base options, the case's replacing or adding to them."""
    out = workspace.root / "out" / case.name.replace(" ", "_").replace("/", "_")
    options = {
        "--checkpoint": workspace.paths["checkpoint"],
        "--model": "lit_classifier:LitClassifier",
        "--probe": workspace.paths["images"],
        "--masks": workspace.paths["masks"],
        "--methods": "gradcam",
        "--device": "cpu",
        "--out": str(out),
    }
    extra: list[str] = ["--image-size", str(IMAGE_SIZE)]
    arguments = [argument.format(**workspace.paths) for argument in case.arguments]
    position = 0
    while position < len(arguments):
        option = arguments[position]
        values = []
        position += 1
        while position < len(arguments) and not arguments[position].startswith("--"):
            values.append(arguments[position])
            position += 1
        if option in options and len(values) == 1:
            options[option] = values[0]
        elif option == "--image-size":
            extra[1:] = values
        else:
            extra += [option, *values]
    if options["--out"] != str(out):
        out = Path(options["--out"])
    command = [sys.executable, "-m", "lightning_sas", "audit"]
    command += [part for pair in options.items() for part in pair] + extra
    return command, out


@pytest.fixture(scope="module")
def results(workspace: Workspace) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    def run(case: Case) -> tuple[subprocess.CompletedProcess[str], Path]:
        command, out = case_command(case, workspace)
        process = subprocess.run(
            command, capture_output=True, text=True, env=workspace.environment, timeout=300, check=False
        )
        return process, out

    cases = [case for case in CASES if not case.in_process]
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip([case.name for case in cases], pool.map(run, cases), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_exits_2_with_one_line(
    case: Case,
    workspace: Workspace,
    results: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case.in_process:
        command, out = case_command(case, workspace)
        with single_thread():
            status = main(command[3:])  # without "python -m lightning_sas"
        captured = capsys.readouterr()
        process = subprocess.CompletedProcess(command, status, captured.out, captured.err)
    else:
        process, out = results[case.name]
    assert process.returncode == 2, (process.stdout, process.stderr)
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    (line,) = lines
    assert line.startswith("lightning-sas: error: ")
    for text in case.expected:
        assert text in line, f"{text!r} not in {line!r}"
    for text in case.absent:
        assert text not in line
    assert "Traceback" not in process.stderr and process.stdout == ""
    log = out / "error.log"
    if case.error_log is None:
        assert not log.exists(), log.read_text(encoding="utf-8")
    else:
        assert str(log) in line
        text = log.read_text(encoding="utf-8")
        assert "Traceback (most recent call last)" in text and case.error_log in text
        assert "command: lightning-sas audit" in text
    if out.is_dir():
        assert not (out / "summary.json").exists() or case.name == "--out holds an audit"


def test_refused_out_folder_keeps_the_previous_audit(
    workspace: Workspace, results: dict[str, tuple[subprocess.CompletedProcess[str], Path]]
) -> None:
    _, out = results["--out holds an audit"]
    assert (out / "summary.json").read_text(encoding="utf-8") == "{}"
    assert (out / "events.out.tfevents.1700000000.host.1.0").exists()


def test_help_imports_no_heavy_library_and_documents_exit_status() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from lightning_sas.cli.main import main\n"
        "text = io.StringIO()\n"
        "with contextlib.redirect_stdout(text):\n"
        "    status = main(['audit', '--help']) + main(['export-probes', '--help'])\n"
        "    status += main(['audit', '--checkpoint', 'x.ckpt', '--model', 'a:B', '--probe', '.', '--out', 'o',\n"
        "                    '--artifact-class', 'ruler'])\n"
        "heavy = sorted(name for name in ('torch', 'lightning', 'cv2', 'numpy') if name in sys.modules)\n"
        "print(status, heavy)\n"
        "print(text.getvalue())\n"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert process.returncode == 0, process.stderr
    first, _, text = process.stdout.partition("\n")
    assert first == "2 []"  # both --help exit 0; the usage error exits 2, all before any heavy import
    assert process.stderr.strip().splitlines() == [
        "lightning-sas: error: --artifact-class ruler needs --artifacts DIR, the artifact examples to paste."
    ]
    for needle in ("exit status", "--output", "--overwrite", "error.log", "module:function", "HxW"):
        assert needle in text, needle
    for needle in ("--artifacts", "masks/<name>.png", "--min-enrichment", "--sanity", "--dataset", "manifest.json"):
        assert needle in text, needle
