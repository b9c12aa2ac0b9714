"""``lightning-sas audit`` and ``export-probes`` on projects as they are written.

A module of the classic ``pytorch_lightning`` namespace trained by its own ``Trainer``; a
constructor argument that ``save_hyperparameters`` left out, given with ``--init-args`` or a
LightningCLI ``--config``; a nightly ``--overwrite`` run that fails and must keep the last good
audit; a misspelt ``--gradcam-layer``; the layer Grad-CAM explained in every output; a failed
intervention; data set items with other keys than the defaults. In-process through ``main()``
on 16 x 16 probes (tiny models, Grad-CAM only, no faithfulness unless needed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lit_classifier import IMAGE_SIZE, LitClassifier, ruler_images, save_checkpoint, train_quickly, write_probes
from project_models import NeedsArgs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from test_cli import _reject_constant, error_lines, parse_report, single_thread

from lightning_sas.cli.main import main
from lightning_sas.methods.layers import find_target_layer
from lightning_sas.probes.folder import read_probe_folder, to_probes


@dataclass(frozen=True)
class Project:
    root: Path
    ruler: Path  # a LitClassifier that learnt the ruler
    needs_args: Path  # a NeedsArgs(num_classes=3) checkpoint without num_classes in its hyper-parameters
    images: Path
    masks: Path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("projects")
    torch.manual_seed(0)
    with single_thread():
        ruler = save_checkpoint(train_quickly(LitClassifier(lr=0.02), seed=0), root / "ruler.ckpt")
    needs_args = save_checkpoint(NeedsArgs(num_classes=3, temperature=1.0), root / "needs_args.ckpt")
    images, masks, _ = write_probes(root / "probes", 6)
    return Project(root, ruler, needs_args, images, masks)


@pytest.fixture
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


def audit(project: Project, out: Path, *extra: str, checkpoint: Path | None = None, model: str = "") -> list[str]:
    return [
        "audit", "--checkpoint", str(checkpoint or project.ruler), "--model", model or "lit_classifier:LitClassifier",
        "--probe", str(project.images), "--masks", str(project.masks), "--image-size", str(IMAGE_SIZE),
        "--device", "cpu", "--methods", "gradcam", "--no-faithfulness", "--min-enrichment", "off",
        "--shortcut-threshold", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"), parse_constant=_reject_constant)


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a refused run (no estimate line: it stopped before the audit)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-sas: error: "), captured.err
    return lines[0]


# ----------------------------------------------------------------------------- pytorch_lightning


def test_a_pytorch_lightning_module_trained_by_its_trainer_is_audited(
    project: Project,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_sas.cli.checkpoint import import_model_class

    # A lightning.pytorch module never imports the classic namespace (as in a process that never
    # imported it: another test may have).
    with monkeypatch.context() as patch:
        patch.delitem(sys.modules, "pytorch_lightning", raising=False)
        assert import_model_class("lit_classifier:LitClassifier") is LitClassifier
        assert "pytorch_lightning" not in sys.modules
    import pytorch_lightning
    from classic_project import ClassicClassifier

    images, labels = ruler_images(256, seed=0)
    trainer = pytorch_lightning.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(ClassicClassifier(), DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=True))
    checkpoint = tmp_path / "classic.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert torch.load(checkpoint, weights_only=True)["pytorch-lightning_version"] == pytorch_lightning.__version__

    out = tmp_path / "audit"
    assert main(audit(project, out, checkpoint=checkpoint, model="classic_project:ClassicClassifier")) == 0
    capsys.readouterr()
    summary = summary_of(out)
    assert summary["model_class"] == "ClassicClassifier" and summary["errors"] == {}
    # The trained weights were loaded: the ruler probes (with a mask) are class 1.
    assert [entry["prediction"] for entry in summary["probes"]] == [int(e["has_mask"]) for e in summary["probes"]]
    assert summary["methods"]["gradcam"]["probes_scored"] == 3


# ----------------------------------------------------------------------------- constructor arguments


def expected_confidences(project: Project, **init_args: object) -> list[float]:
    """What NeedsArgs loaded with ``init_args`` gives the probes (read as the CLI reads them)."""
    model = NeedsArgs.load_from_checkpoint(project.needs_args, map_location="cpu", **init_args).eval()
    folder = read_probe_folder(project.images, project.masks, {}, size=IMAGE_SIZE, channels=3)
    with torch.no_grad():
        return model(to_probes(folder, [0.0] * 3, [1.0] * 3).images).softmax(dim=1).max(dim=1).values.tolist()


def confidences(out: Path) -> list[float]:
    return [entry["confidence"] for entry in summary_of(out)["probes"]]


def test_init_args_and_config_give_what_the_checkpoint_lacks(
    project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    def run(name: str, *extra: str) -> Path:
        out = tmp_path / name
        status = main(audit(project, out, *extra, checkpoint=project.needs_args, model="project_models:NeedsArgs"))
        assert status == 0, capsys.readouterr().err
        capsys.readouterr()
        return out

    # Without num_classes the model cannot be built: one line that says how to give it.
    out = tmp_path / "missing"
    assert main(audit(project, out, checkpoint=project.needs_args, model="project_models:NeedsArgs")) == 2
    line = one_error(capsys)
    assert "NeedsArgs.__init__ needs 'num_classes'" in line and "save_hyperparameters()" in line
    assert "--init-args" in line and "--config" in line and not out.exists()

    plain = confidences(run("key_value", "--init-args", "num_classes=3"))
    assert plain == pytest.approx(expected_confidences(project, num_classes=3), abs=1e-5)
    mapping = confidences(run("json", "--init-args", '{"num_classes": 3, "temperature": 5e1}'))
    assert mapping == pytest.approx(expected_confidences(project, num_classes=3, temperature=50.0), abs=1e-5)
    assert max(mapping) < min(plain)  # the given temperature won over the saved one (1.0)

    nested = tmp_path / "fit.yaml"
    nested.write_text(
        "trainer:\n  max_epochs: 3\nmodel:\n  class_path: project_models.NeedsArgs\n"
        "  init_args:\n    num_classes: 3\n    temperature: 50\n",
        encoding="utf-8",
    )
    direct = tmp_path / "direct.yaml"
    direct.write_text("model:\n  num_classes: 3\n  temperature: 50\n", encoding="utf-8")
    assert confidences(run("nested", "--config", str(nested))) == pytest.approx(mapping, abs=1e-6)
    assert confidences(run("direct", "--config", str(direct))) == pytest.approx(mapping, abs=1e-6)
    # --init-args win over --config.
    both = confidences(run("both", "--config", str(nested), "--init-args", "temperature=2"))
    assert both == pytest.approx(expected_confidences(project, num_classes=3, temperature=2.0), abs=1e-5)


BAD_CONFIGS = {
    "list.yaml": "model: [1, 2]\n",
    "other_class.yaml": "model:\n  class_path: my_project.models.Other\n  init_args: {num_classes: 3}\n",
    "unknown.yaml": "model:\n  init_args:\n    num_classes: 3\n    depth: 4\n",
    "broken.yaml": "model: {num_classes: [3\n",
}


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (("--init-args", "[3]"), ("--init-args '[3]'", "neither key=value nor a mapping", "a list")),
        (("--init-args", "num_clases=3"), ("--init-args 'num_clases=3'", "did you mean 'num_classes'?")),
        (("--init-args", "strict=false"), ("'strict' is an argument of load_from_checkpoint itself",)),
        (("--config", "{root}/missing.yaml"), ("--config {root}/missing.yaml: no such file.",)),
        (("--config", "{root}/list.yaml"), ("--config {root}/list.yaml", "a model: section that is a list")),
        (("--config", "{root}/other_class.yaml"), ("model.class_path is 'my_project.models.Other'", "NeedsArgs")),
        (("--config", "{root}/unknown.yaml"), ("--config {root}/unknown.yaml:", "takes no argument 'depth'")),
        (("--config", "{root}/broken.yaml"), ("--config {root}/broken.yaml is not valid YAML",)),
    ],
    ids=["not a mapping", "misspelt name", "load_from_checkpoint's own", "missing file", "model is a list",
         "another class_path", "unknown config argument", "not YAML"],
)  # fmt: skip
def test_bad_init_args_exit_2_with_one_line_before_loading(
    arguments: tuple[str, ...],
    expected: tuple[str, ...],
    project: Project,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, text in BAD_CONFIGS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    values = [argument.format(root=tmp_path) for argument in arguments]
    out = tmp_path / "out"
    # The ruler checkpoint does not fit NeedsArgs: an error about the arguments came before loading it.
    assert main(audit(project, out, *values, model="project_models:NeedsArgs")) == 2
    line = one_error(capsys)
    for text in expected:
        assert text.format(root=tmp_path) in line, line
    assert "weights do not fit" not in line and not out.exists()


# ----------------------------------------------------------------------------- --overwrite


def test_a_failed_run_with_overwrite_keeps_the_previous_audit(
    project: Project,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    out = tmp_path / "audits" / "latest"
    assert main(audit(project, out)) == 0
    capsys.readouterr()
    previous = {path.name: path.read_bytes() for path in out.iterdir()}
    assert {"summary.json", "report.html"} <= set(previous)

    def unchanged() -> None:
        assert {path.name: path.read_bytes() for path in out.iterdir() if path.name != "error.log"} == previous
        assert sorted(path.name for path in out.parent.iterdir()) == ["latest"]  # no partial folder left

    # The nightly model is broken: the audit fails before anything is written.
    assert main(audit(project, out, "--overwrite", model="lit_classifier:ForwardFails")) == 2
    assert "forward exploded on purpose" in one_error(capsys)
    unchanged()
    assert "forward exploded on purpose" in (out / "error.log").read_text(encoding="utf-8")

    # The disk fills up while the report is written.
    import lightning_sas.report.html

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(lightning_sas.report.html, "write_report", disk_full)
        assert main(audit(project, out, "--overwrite", "--no-cache")) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "cannot write (No space left on device)" in line
    unchanged()

    # A run that succeeds replaces the audit (and the failed run's error.log); other files stay.
    (out / "notes.txt").write_text("kept", encoding="utf-8")
    assert main(audit(project, out, "--overwrite", "--class-names", "clean,ruler")) == 0
    capsys.readouterr()
    assert summary_of(out)["class_names"] == ["clean", "ruler"] and not (out / "error.log").exists()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "kept"
    assert len([path for path in out.iterdir() if path.name.startswith("events.out.tfevents.")]) == 1
    assert sorted(path.name for path in out.parent.iterdir()) == ["latest"]

    # Through a symbolic link (audits/current -> latest): the link stays, the folder it names is replaced.
    (out / "notes.txt").unlink()
    link = out.parent / "current"
    link.symlink_to(out.name)
    assert main(audit(project, link, "--overwrite")) == 0
    capsys.readouterr()
    assert link.is_symlink() and summary_of(out)["class_names"] is None
    assert sorted(path.name for path in out.parent.iterdir()) == ["current", "latest"]


# ----------------------------------------------------------------------------- Grad-CAM's layer


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (("--gradcam-layer", "featurs.2"), ("--gradcam-layer featurs.2:", "did you mean 'features.2'?")),
        (("--method-config", "gradcam.target_layer=haed"), ("gradcam.target_layer=haed", "did you mean 'head'?")),
    ],
)
def test_a_misspelt_gradcam_layer_fails_before_any_method_runs(
    option: tuple[str, str],
    expected: tuple[str, ...],
    project: Project,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "typo"
    argv = audit(project, out, *option)
    argv[argv.index("gradcam")] = "sas,gradcam"
    assert main(argv) == 2
    line = one_error(capsys)  # the only line: not even the estimate of the audit's time
    for text in expected:
        assert text in line, line
    assert "LitClassifier has no module named" in line and not out.exists()


def test_the_explained_layer_is_in_the_summary_report_and_tensorboard(
    project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    model = LitClassifier.load_from_checkpoint(project.ruler, map_location="cpu")
    folder = read_probe_folder(project.images, project.masks, {}, size=IMAGE_SIZE, channels=3)
    automatic, _ = find_target_layer(model, to_probes(folder, [0.0] * 3, [1.0] * 3).images)
    given = ("--gradcam-layer", "features.0")
    for name, extra, layer in (("automatic", (), automatic), ("given", given, "features.0")):
        out = tmp_path / name
        assert main(audit(project, out, *extra)) == 0
        capsys.readouterr()
        assert summary_of(out)["methods"]["gradcam"]["layer"] == layer
        rows = parse_report(out / "report.html").tables["meta"]
        meta = {row["cells"][0]["text"]: row["cells"][1]["text"] for row in rows}
        assert meta["gradcam layer"] == layer
        events = EventAccumulator(str(out), size_guidance={"tensors": 0})
        events.Reload()
        (event,) = events.Tensors("audit/gradcam/layer/text_summary")
        assert tensor_util.make_ndarray(event.tensor_proto).item().decode() == layer


# ----------------------------------------------------------------------------- intervention


def test_a_failed_intervention_makes_the_audit_incomplete(
    project: Project,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    from lit_classifier import ruler_mask

    import lightning_sas.audit.run
    from lightning_sas.probes.export_artifacts import export_artifacts

    examples, labels = ruler_images(4, seed=7)
    rulers = examples[labels == 1]
    artifacts = export_artifacts(rulers, ruler_mask()[None].expand(len(rulers), -1, -1), tmp_path / "artifacts")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("pasting broke on purpose")

    monkeypatch.setattr(lightning_sas.audit.run, "intervene", broken)
    out = tmp_path / "audit"
    assert main(audit(project, out, "--artifacts", str(artifacts), "--artifact-class", "1")) == 2
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith("lightning-sas: error: the audit is incomplete: the intervention could not be measured")
    assert "pasting broke on purpose" in line
    summary = summary_of(out)
    assert summary["errors"] == {"intervention": "RuntimeError: pasting broke on purpose"}
    assert summary["intervention"] is None and set(summary["methods"]) == {"gradcam"}
    assert "Audit incomplete" in parse_report(out / "report.html").status_text
    # A criterion that fires wins: exit 1, the failed intervention as a warning.
    assert main(audit(project, tmp_path / "fires", "--artifacts", str(artifacts), "--artifact-class", "1",
                      "--shortcut-threshold", "0")) == 1  # fmt: skip
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("lightning-sas: warning: the audit is incomplete: the intervention could not be measured")


# ----------------------------------------------------------------------------- export-probes


def test_export_probes_options_say_where_the_fields_are(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def export(name: str, dataset: str, *extra: str) -> tuple[int, Path]:
        out = tmp_path / name
        return main(["export-probes", "--dataset", dataset, "--out", str(out), *extra]), out

    def masks(out: Path) -> list[str]:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        return [entry["file"] for entry in manifest["probes"] if entry["mask"] is not None]

    # Mapping items with other keys: the error names the option that fixes it.
    status, out = export("renamed", "project_models:renamed_items")
    assert status == 2
    line = one_error(capsys)
    assert "without the image key 'image' (its keys: pixels, ruler, y)" in line and "--image-key" in line
    assert "item_keys" not in line and not list(out.glob("*.png"))
    status, out = export("typo", "project_models:renamed_items", "--image-key", "pixels", "--mask-key", "rulr")
    assert status == 2
    line = one_error(capsys)
    assert "without the mask key 'rulr'" in line and "--mask-key" in line and not list(out.glob("*.png"))
    status, out = export("keys", "project_models:renamed_items", "--image-key", "pixels", "--label-key", "y",
                         "--mask-key", "ruler")  # fmt: skip
    assert status == 0 and masks(out) == ["probe_00001.png", "probe_00003.png", "probe_00005.png"]
    assert "(3 with a mask)" in capsys.readouterr().out

    # "roi" is the mask's other default key; a tuple's mask is read only at the position given.
    status, out = export("roi", "project_models:roi_items")
    assert status == 0 and len(masks(out)) == 3
    capsys.readouterr()
    status, out = export("tuples", "lit_classifier:ruler_dataset")
    assert status == 0 and masks(out) == []
    assert "--mask-key 2" in capsys.readouterr().out
    status, out = export("tuples_told", "lit_classifier:ruler_dataset", "--mask-key", "2")
    assert status == 0 and len(masks(out)) == 5
    capsys.readouterr()
    status, out = export("past_the_end", "lit_classifier:ruler_dataset", "--mask-key", "3")
    assert status == 2
    line = one_error(capsys)
    assert "tuple of 3 element(s), with no mask at position 3" in line and "--mask-key" in line


def test_a_nightly_job_is_one_yaml_file_and_the_command_line_wins(
    project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    by_flags = tmp_path / "flags"
    assert main(audit(project, by_flags, "--class-names", "clean,ruler")) == 0
    capsys.readouterr()

    job = tmp_path / "nightly.yaml"
    job.write_text(
        "trainer:\n  max_epochs: 3\n"  # a training config's other sections are ignored
        "audit:\n"
        f"  checkpoint: {project.ruler}\n  model: lit_classifier:LitClassifier\n"
        f"  probe: {project.images}\n  masks: {project.masks}\n  image-size: {IMAGE_SIZE}\n"
        "  device: cpu\n  methods: [gradcam]\n  no_faithfulness: true\n  min-enrichment: off\n"
        f"  shortcut-threshold: 1\n  class-names: [clean, ruler]\n  out: {tmp_path / 'job'}\n",
        encoding="utf-8",
    )
    assert main(["audit", "--config", str(job)]) == 0
    capsys.readouterr()
    from_file, from_flags = summary_of(tmp_path / "job"), summary_of(by_flags)
    assert from_file["class_names"] == ["clean", "ruler"] == from_flags["class_names"]
    assert from_file["methods"].keys() == {"gradcam"}
    assert from_file["probes"] == from_flags["probes"]
    assert from_file["verdict"] == from_flags["verdict"]

    # An option on the command line wins over the file.
    assert main(["audit", "--config", str(job), "--out", str(tmp_path / "moved"), "--methods", "saliency"]) == 0
    capsys.readouterr()
    assert summary_of(tmp_path / "moved")["methods"].keys() == {"saliency"}

    # A misspelt key: one line naming the file, the key and the nearest option, before any work.
    job.write_text("audit:\n  prob: images\n", encoding="utf-8")
    assert main(["audit", "--config", str(job), "--out", str(tmp_path / "refused")]) == 2
    line = one_error(capsys)
    assert f"--config {job}: audit.prob is not an option of 'audit'" in line and "did you mean probe" in line
