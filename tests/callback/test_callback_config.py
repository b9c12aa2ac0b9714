"""One YAML file for training and the nightly audit: ``SASAuditCallback.from_config``.

The callback reads the ``audit:`` section with the command line's own parser; a real fit with the
callback the file describes, then ``lightning-sas audit --config`` on the same file, must audit the
same probes with the same methods and get the same scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml
from lit_classifier import IMAGE_SIZE
from probe_folders import (
    CLASS_NAMES,
    MEAN,
    MODEL,
    STD,
    ProbeFolder,
    assert_same_scores,
    fit_with,
    one_thread,
    write_probe_folder,
)

from lightning_sas import ProbeFolderDataset, SASAuditCallback
from lightning_sas.callback.job_config import SHARED, callback_only_arguments
from lightning_sas.cli.main import build_parser, main
from lightning_sas.probes.folder_dataset import DEFAULT_IMAGE_SIZE


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> ProbeFolder:
    return write_probe_folder(tmp_path_factory.mktemp("probes"), count=6)


def reading(folder: ProbeFolder) -> dict:
    """The ``audit:`` keys that read the probe folder."""
    return {
        "probe": str(folder.images),
        "masks": str(folder.masks),
        "object-masks": str(folder.object_masks),
        "labels": str(folder.labels),
        "class-names": list(CLASS_NAMES),
        "image-size": IMAGE_SIZE,
        "mean": list(MEAN),
        "std": list(STD),
    }


def write_job(path: Path, audit: dict, callback: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"audit": audit, **({"callback": callback} if callback else {})}), encoding="utf-8")
    return path


def audit_parser() -> argparse.ArgumentParser:
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return commands.choices["audit"]


def test_the_table_names_options_of_the_command_line_and_arguments_of_the_callback() -> None:
    options = {action.dest for action in audit_parser()._actions}
    for argument, shared in SHARED.items():
        assert set(shared.options) <= options, argument
    parameters = set(SASAuditCallback.__init__.__code__.co_varnames)
    assert set(SHARED) <= parameters
    only = callback_only_arguments()
    assert not set(only) & set(SHARED)
    assert {"every_n_epochs", "name", "probe_count", "seed", "on_error"} <= set(only)
    # The same default size, so that leaving it out means the same thing for both.
    assert audit_parser().get_default("image_size") == [str(DEFAULT_IMAGE_SIZE)]


def test_the_audit_section_builds_the_callback(folder: ProbeFolder, tmp_path: Path) -> None:
    audit = {
        # The command line's only: ignored by the callback.
        "checkpoint": "runs/last.ckpt", "model": MODEL, "out": "audits/x", "overwrite": True, "device": "cpu",
        "baseline-tolerance": 0.1, "probes-from-checkpoint": True,
        **reading(folder),
        "methods": ["sas", "gradcam", "saliency"], "sas-iterations": 7, "gradcam-layer": "features.2",
        "method-config": ["saliency.max_batch=3"],
        "target": "label",
        "min-enrichment": 0.4, "min-flip-rate": "off", "min-roi-pixels": 5, "shortcut-threshold": 0.9,
        "artifacts": str(folder.artifacts), "artifact-class": "malignant", "artifact-trials": 3,
        "faithfulness-steps": 10,
        "sanity": True, "sanity-stages": 2,
        "discovery": "always", "discovery-method": "saliency", "discovery-config": ["trials=2"],
    }  # fmt: skip
    job = write_job(tmp_path / "job.yaml", audit, {"every-n-epochs": 3, "name": "nightly", "probe_count": 4})
    callback = SASAuditCallback.from_config(job, seed=7)
    assert isinstance(callback.probe, ProbeFolderDataset) and callback.probe.names == folder.names
    assert callback.probe.image_size == (IMAGE_SIZE, IMAGE_SIZE) and callback.probe.mean == list(MEAN)
    assert bool(callback.probe[1]["mask"].any()) and "object_mask" in callback.probe[0]
    assert callback.class_names == list(CLASS_NAMES) and callback.mean == list(MEAN) and callback.std == list(STD)
    assert list(callback.methods) == ["sas", "gradcam", "saliency"]
    assert callback.methods["sas"].iterations == 7 and callback.methods["gradcam"].target_layer == "features.2"
    assert callback.methods["saliency"].max_batch == 3
    assert callback.target == "label"
    rule = callback.alert_rule
    assert rule.min_enrichment == 0.4 and rule.min_flip_rate is None and rule.min_roi_pixels == 5
    assert rule.max_roi_share == 0.9 and callback.shortcut_threshold == 0.9
    assert callback.artifacts.target_class == 1 and callback.artifacts.trials == 3
    assert callback.faithfulness.steps == 10 and callback.sanity_stages == 2
    assert callback.discovery.when == "always" and callback.discovery.method == "saliency"
    assert dict(callback.discovery.settings) == {"trials": 2}
    assert (callback.every_n_epochs, callback.name, callback.probe_count, callback.seed) == (3, "nightly", 4, 7)

    # Left out, an option has the command line's default: no sanity check, 20 faithfulness steps.
    plain = SASAuditCallback.from_config({"audit": {"probe": str(folder.images), "image-size": IMAGE_SIZE}})
    assert plain.sanity_stages == 0 and plain.faithfulness.steps == 20 and list(plain.methods) == ["sas", "gradcam"]
    assert plain.artifacts is None and plain.discovery.when == "auto" and plain.probe.mean == [0.0] * 3
    assert plain.every_n_epochs == 1 and plain.name == "audit"
    overridden = SASAuditCallback.from_config({"audit": {"probe": str(folder.images)}}, probe=4, methods=["gradcam"])
    assert overridden.probe == 4 and list(overridden.methods) == ["gradcam"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"audit": {"probe": "p", "mask": "m"}}, r"audit\.mask is not an option of 'audit' \(did you mean masks"),
        ({"audit": {"min-enrichment": 2}}, r"audit: section: argument --min-enrichment: expected a number in \[0, 1\]"),
        ({"audit": {}, "callback": {"methods": ["sas"]}}, r"callback\.methods is read from the audit: section"),
        (
            {"audit": {}, "callback": {"every-n-epoch": 2}},
            r"callback\.every-n-epoch is not an argument.*every_n_epochs",
        ),
        ({"audit": {"image-size": 16}}, r"for the callback's `probe`: it names no probe folder"),
        ({"audit": {"probe": "nowhere"}}, r"`images` must be an existing folder, got 'nowhere'"),
        ({"model": {}}, r"needs an audit: section"),
    ],
)
def test_refusals_name_the_key(content: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SASAuditCallback.from_config(content)


def test_refused_files(folder: ProbeFolder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        SASAuditCallback.from_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("audit: [unclosed", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid YAML"):
        SASAuditCallback.from_config(tmp_path / "bad.yaml")
    job = write_job(tmp_path / "job.yaml", {"probe": str(folder.images), "artifacts": str(folder.artifacts)})
    with pytest.raises(ValueError, match="needs artifact-class"):
        SASAuditCallback.from_config(job)


def test_one_yaml_drives_training_and_the_command_line(
    folder: ProbeFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, out = tmp_path / "runs" / "last.ckpt", tmp_path / "audit"
    methods = ["gradcam", "saliency", "sas"]
    audit = {
        "checkpoint": str(checkpoint), "model": MODEL, "out": str(out), "device": "cpu",
        **reading(folder),
        "methods": methods, "sas-iterations": 3, "faithfulness-steps": 10, "discovery": "never",
        "probes-from-checkpoint": True,
    }  # fmt: skip
    job = write_job(tmp_path / "job.yaml", audit, {"name": "nightly", "cost-warning-share": None})
    checkpoint.parent.mkdir()
    trained = fit_with(SASAuditCallback.from_config(job), tmp_path, checkpoint=checkpoint)
    with one_thread():
        status = main(["audit", "--config", str(job)])
    assert status in (0, 1), capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    manifest = trained.callback.manifest
    assert [entry["name"] for entry in manifest] == folder.names
    assert [entry["name"] for entry in summary["manifest"]] == folder.names
    assert [entry["sha256"] for entry in summary["manifest"]] == [entry["sha256"] for entry in manifest]
    assert summary["method_settings"] == {name: repr(method) for name, method in trained.callback.methods.items()}
    assert summary["faithfulness"]["steps"] == 10 == trained.callback.faithfulness.steps
    assert_same_scores(trained.results[-1], summary, methods)
