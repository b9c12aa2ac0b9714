"""``lightning-sas audit``'s trust checks: the shared alert rule, the intervention (``--artifacts``),
faithfulness, the sanity check (``--sanity``), the cost estimate and the progress bar.

Everything runs in-process through ``main()`` on a tiny model trained in the fixture (torch and
Lightning are imported once for the module), with Grad-CAM or a 2-step SaS.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from lit_classifier import (
    IMAGE_SIZE,
    RULER_SIDE,
    LitClassifier,
    ruler_images,
    ruler_mask,
    save_checkpoint,
    train_quickly,
    write_probes,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import _reject_constant, assert_only_estimate, error_lines, parse_report, single_thread

from lightning_sas.audit.verdict import DEFAULT_MIN_FLIP_RATE
from lightning_sas.cli import audit_output
from lightning_sas.cli.main import main
from lightning_sas.probes.export_artifacts import export_artifacts
from lightning_sas.trust.sanity import DEFAULT_THRESHOLD

CLASS_NAMES = "clean,ruler"


@dataclass(frozen=True)
class Setup:
    root: Path
    checkpoint: Path
    images: Path
    masks: Path
    artifacts: Path  # whole ruler images with the ruler's mask
    patches: Path  # small white squares, masks from their alpha channel
    bad: dict[str, Path]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("trust")
    with single_thread():
        checkpoint = save_checkpoint(train_quickly(LitClassifier(lr=0.02), seed=0), root / "ruler.ckpt")
    images, masks, _ = write_probes(root / "probes", 6)
    # Two ruler images cut out with the ruler's mask: whole probe-sized images, pasted in place.
    examples, labels = ruler_images(4, seed=7)
    rulers = examples[labels == 1]
    artifacts = export_artifacts(rulers, ruler_mask()[None].expand(len(rulers), -1, -1), root / "artifacts")
    # Small RGBA patches: the mask is their alpha channel (an opaque 4 x 4 square in a 5 x 5 patch).
    patches = root / "patches"
    patches.mkdir()
    patch = np.zeros((5, 5, 4), np.uint8)
    patch[:4, :4] = 255
    assert cv2.imwrite(str(patches / "square.png"), patch)

    bad = {name: root / "bad" / name for name in ("empty", "no_mask", "mask_size", "too_large", "mixed", "blank")}
    for folder in bad.values():
        (folder / "masks").mkdir(parents=True)
    (bad["empty"] / "notes.txt").write_text("no images here", encoding="utf-8")
    white = np.full((4, 4, 3), 255, np.uint8)
    assert cv2.imwrite(str(bad["no_mask"] / "ruler.png"), white)
    assert cv2.imwrite(str(bad["mask_size"] / "ruler.png"), white)
    assert cv2.imwrite(str(bad["mask_size"] / "masks" / "ruler.png"), np.full((3, 3), 255, np.uint8))
    assert cv2.imwrite(str(bad["too_large"] / "ruler.png"), np.full((20, 20, 3), 255, np.uint8))
    assert cv2.imwrite(str(bad["too_large"] / "ruler_mask.png"), np.full((20, 20), 255, np.uint8))
    for name, side in (("a_whole.png", IMAGE_SIZE), ("b_small.png", 4)):
        assert cv2.imwrite(str(bad["mixed"] / name), np.full((side, side, 3), 255, np.uint8))
        assert cv2.imwrite(str(bad["mixed"] / "masks" / name), np.full((side, side), 255, np.uint8))
    assert cv2.imwrite(str(bad["blank"] / "ruler.png"), white)
    assert cv2.imwrite(str(bad["blank"] / "masks" / "ruler.png"), np.zeros((4, 4), np.uint8))
    return Setup(root, checkpoint, images, masks, artifacts, patches, bad)


@pytest.fixture
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


def arguments(setup: Setup, out: Path, *extra: str, model: str = "LitClassifier") -> list[str]:
    return [
        "audit", "--checkpoint", str(setup.checkpoint), "--model", f"lit_classifier:{model}",
        "--probe", str(setup.images), "--masks", str(setup.masks), "--class-names", CLASS_NAMES,
        "--image-size", str(IMAGE_SIZE), "--device", "cpu", "--methods", "gradcam", "--out", str(out), *extra,
    ]  # fmt: skip


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"), parse_constant=_reject_constant)


# ----------------------------------------------------------------------------- intervention


def test_artifact_the_model_uses_exits_1_with_the_flip_rate(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    out = tmp_path / "uses"
    argv = arguments(
        setup, out, "--artifacts", str(setup.artifacts), "--artifact-class", "ruler", "--no-faithfulness",
        "--methods", "sas,gradcam", "--sas-iterations", "2", "--sanity", "--sanity-stages", "2",
    )  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert_only_estimate(captured.err)
    summary = summary_of(out)

    verdict = summary["verdict"]
    assert verdict["alert"] is True
    # The ruler covers 14% of the image, so the old lift could never reach 8; the enrichment on the
    # ROI and the flip rate both fire.
    assert {"criterion": "flip_rate", "method": None} in verdict["crossed"]
    assert any(item["criterion"] == "roi_enrichment" for item in verdict["crossed"])
    assert verdict["checked"] == ["roi_enrichment", "flip_rate"]
    record = summary["intervention"]
    assert record["folder"] == str(setup.artifacts) and record["files"] == ["artifact_000.png", "artifact_001.png"]
    assert record["mask_sources"] == ["masks/artifact_000.png", "masks/artifact_001.png"]
    assert record["full_size"] is True and record["trials"] == 4
    assert record["target_class"] == 1 and record["target_class_name"] == "ruler"
    assert record["eligible_probes"] == 3  # the clean probes; the ruler probes already are class 1
    assert record["flip_rate"] > DEFAULT_MIN_FLIP_RATE and record["mean_probability_change"] > 0
    per_probe = [entry["intervention"] for entry in summary["probes"]]
    assert [item["eligible"] for item in per_probe] == [entry["prediction"] == 0 for entry in summary["probes"]]
    eligible = [item for item in per_probe if item["eligible"]]
    assert sum(item["flipped"] for item in eligible) / (4 * len(eligible)) == pytest.approx(record["flip_rate"])
    assert all(item["flipped"] is None for item in per_probe if not item["eligible"])
    assert any("flip_rate" in reason for reason in verdict["reasons"])
    assert f"flip rate {record['flip_rate']:.3f}" in captured.out and "lightning-sas: SHORTCUT: " in captured.out

    report = parse_report(out / "report.html")
    assert "Shortcut alert" in report.status_text and "flip_rate" in report.status_text
    raw = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="intervention"' in raw and f"{record['flip_rate']:.3f}" in raw.split('id="flip-rate"')[1][:400]

    # --sanity: one similarity per stage and method (presence and shape; a tiny model's Grad-CAM
    # may or may not be flagged).
    sanity = summary["sanity"]
    assert len(sanity["stages"]) == 2 and sanity["stages"][0][0] == "head"  # the output end first
    assert set(sanity["similarity"]) == {"sas", "gradcam"}
    for values in sanity["similarity"].values():
        assert len(values) == 2 and all(value is None or -1.0 <= value <= 1.0 for value in values)
    assert any(value is not None for values in sanity["similarity"].values() for value in values)
    assert set(sanity["flagged"]) <= {"sas", "gradcam"} and sanity["threshold"] == DEFAULT_THRESHOLD
    for entry in summary["probes"]:
        assert {name: len(values) for name, values in entry["sanity_similarity"].items()} == {"sas": 2, "gradcam": 2}
    assert "sanity check (2 stage(s)" in captured.out
    assert 'id="sanity"' in raw
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    (flip,) = events.Scalars("audit/intervention/flip_rate")
    assert flip.value == pytest.approx(record["flip_rate"])
    assert "audit/sas/sanity_similarity" in events.Tags()["scalars"]


def test_artifact_a_blind_model_ignores_cannot_tell(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    # The ruler model's weights behind a forward blind to its input: pasting the ruler changes
    # nothing (flip rate 0), and every probe gets the same output: the audit says it cannot tell,
    # never "no shortcut".
    out = tmp_path / "blind"
    argv = arguments(
        setup, out, "--artifacts", str(setup.artifacts), "--artifact-class", "1", "--no-faithfulness",
        model="CornerBlind",
    )  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "cannot tell: the model gives every probe the same output" in error_lines(captured.err)[-1]
    summary = summary_of(out)
    record = summary["intervention"]
    assert record["flip_rate"] == 0.0 and record["eligible_probes"] == 6
    verdict = summary["verdict"]
    assert verdict["alert"] is False and verdict["status"] == "cannot tell" and verdict["input_independent"]


def test_small_patches_with_alpha_masks_are_pasted_at_random_positions(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    out = tmp_path / "patches"
    argv = arguments(
        setup, out, "--artifacts", str(setup.patches), "--artifact-class", "ruler", "--artifact-trials", "3",
        "--no-faithfulness", "--min-flip-rate", "off", "--min-enrichment", "off",
    )  # fmt: skip
    assert main(argv) == 0  # every criterion off: nothing to check
    capsys.readouterr()
    summary = summary_of(out)
    record = summary["intervention"]
    assert record["full_size"] is False and record["mask_sources"] == ["alpha"] and record["trials"] == 3
    assert record["flip_rate"] is not None
    assert summary["verdict"]["rule"]["min_flip_rate"] is None and "flip_rate" not in summary["verdict"]["checked"]


def test_artifacts_folder_reader_resizes_whole_images_and_pads_small_patches(tmp_path: Path) -> None:
    from lightning_sas.probes.artifact_folder import read_artifact_folder
    from lightning_sas.trust.intervention import to_artifacts

    whole = tmp_path / "whole"
    (whole / "masks").mkdir(parents=True)
    image = np.zeros((32, 32, 3), np.uint8)
    image[: 2 * RULER_SIDE, : 2 * RULER_SIDE] = 255
    assert cv2.imwrite(str(whole / "ruler.png"), image)
    assert cv2.imwrite(str(whole / "masks" / "ruler.png"), image[..., 0])
    # 32 x 32 is the size of a probe file: a whole image, resized to the probes' 16 x 16.
    folder = read_artifact_folder(whole, size=16, channels=1, probe_file_sizes=[(32, 32)])
    assert folder.full_size and folder.patches[0].shape == (16, 16, 1)
    assert folder.masks[0].sum() == RULER_SIDE * RULER_SIDE and folder.masks[0][:RULER_SIDE, :RULER_SIDE].all()

    small = tmp_path / "small"
    small.mkdir()
    for name, (rows, columns) in {"a.png": (2, 3), "b.png": (4, 2)}.items():
        assert cv2.imwrite(str(small / name), np.full((rows, columns, 3), 255, np.uint8))
        assert cv2.imwrite(str(small / name.replace(".png", "_mask.png")), np.full((rows, columns), 255, np.uint8))
    folder = read_artifact_folder(small, size=16, channels=3)
    assert not folder.full_size and folder.names == ["a.png", "b.png"]
    assert [patch.shape for patch in folder.patches] == [(4, 3, 3), (4, 3, 3)]
    assert [int(mask.sum()) for mask in folder.masks] == [6, 8]  # the padding is outside the masks
    artifacts = to_artifacts(folder, [0.5] * 3, [0.25] * 3, target_class=1)
    assert artifacts.patches.shape == (2, 3, 4, 3) and float(artifacts.patches[0, 0, 0, 0]) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- alert rule


def test_min_enrichment_is_the_callbacks_rule(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    from lightning_sas.audit.verdict import AlertRule, Evidence, decide

    low = tmp_path / "low"
    assert main(arguments(setup, low, "--min-enrichment", "0.05", "--faithfulness-steps", "4")) == 1
    captured = capsys.readouterr()
    summary = summary_of(low)
    enrichment = summary["methods"]["gradcam"]["roi_enrichment"]
    assert enrichment > 0.05
    assert summary["verdict"]["crossed"] == [{"criterion": "roi_enrichment", "method": "gradcam"}]
    assert summary["verdict"]["rule"]["min_enrichment"] == 0.05
    assert summary["faithfulness"]["steps"] == 4
    assert f"roi_enrichment {enrichment:.2f} > 0.05" in captured.out
    # Above the measured enrichment, the same audit passes.
    high = tmp_path / "high"
    assert main(arguments(setup, high, "--min-enrichment", f"{min(1.0, enrichment + 0.01):.3f}")) == 0
    capsys.readouterr()

    # The callback's own decision on the per-probe scores of summary.json agrees.
    probes = summary["probes"]
    pixels = IMAGE_SIZE * IMAGE_SIZE
    evidence = Evidence(
        image_pixels=pixels,
        roi_pixels=[round(entry["roi_area"] * pixels) if entry["has_mask"] else 0 for entry in probes],
        roi_share={
            "gradcam": [
                float("nan") if e["roi_share"]["gradcam"] is None else e["roi_share"]["gradcam"] for e in probes
            ]
        },
    )
    verdict = decide(evidence, AlertRule(min_enrichment=0.05))
    assert verdict.alert and verdict.scores["gradcam"]["roi_enrichment"] == pytest.approx(enrichment, abs=1e-6)
    assert not decide(evidence, AlertRule(min_enrichment=min(1.0, enrichment + 0.01))).alert


# ----------------------------------------------------------------------------- sanity check


def test_sanity_flags_maps_that_do_not_depend_on_the_weights(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    out = tmp_path / "sanity"
    argv = arguments(setup, out, "--sanity", "--sanity-stages", "2", "--no-faithfulness", model="WeightBlind")
    # Grad-CAM's brightness map lies on the bright ruler, but a flagged method does not vote; it
    # was the only method, so the audit cannot tell (never a pass, never an alert from it).
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "cannot tell" in error_lines(captured.err)[0] and "sanity check" in error_lines(captured.err)[0]
    summary = summary_of(out)
    sanity = summary["sanity"]
    assert sanity["flagged"] == ["gradcam"]
    assert sanity["similarity"]["gradcam"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert summary["verdict"]["alert"] is False and summary["verdict"]["status"] == "cannot tell"
    assert "sanity check" in summary["verdict"]["excluded"]["gradcam"]
    # Without the sanity check the same maps would have voted, and fired.
    assert main(arguments(setup, tmp_path / "unchecked", "--no-faithfulness", model="WeightBlind")) == 1
    capsys.readouterr()
    assert "do not depend on the model's weights" in captured.out
    report = parse_report(out / "report.html")
    assert "do not depend on the model's weights" in report.status_text
    rows = [row for row in report.tables["sanity"] if row["attrs"].get("class") == "stage"]
    assert [row["cells"][-1]["text"] for row in rows] == ["1.00", "1.00"]


# ----------------------------------------------------------------------------- cost and progress


def test_estimate_line_counts_the_passes_and_a_terminal_gets_a_progress_bar(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    from lightning_sas.audit.cost import audit_passes
    from lightning_sas.methods import GradCAM, SaS

    monkeypatch.setattr(audit_output, "PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    out = tmp_path / "estimate"
    argv = arguments(setup, out, "--methods", "sas,gradcam", "--sas-iterations", "2", "--faithfulness-steps", "5")
    main(argv)
    captured = capsys.readouterr()
    (estimate,) = [line for line in captured.err.splitlines() if line.startswith("lightning-sas: estimated")]
    passes = audit_passes({"sas": SaS(iterations=2), "gradcam": GradCAM()}, 6, faithfulness_steps=5)
    assert passes["sas"][0] == 6 * 2 * 2 * 5  # probes x iterations x 2 schedule_subset per probe
    assert f"({sum(count for count, _ in passes.values()):,} model passes:" in estimate
    assert ", ".join(f"{name} {count:,}" for name, (count, _) in passes.items()) in estimate
    assert "pass/s]" in captured.err.replace(estimate, "")  # the tqdm bar, counting model passes


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("case", "extra", "expected"),
    [
        ("no such folder", ("--artifacts", "{root}/nope", "--artifact-class", "ruler"), ("no such folder",)),
        ("no images", ("--artifacts", "{empty}", "--artifact-class", "ruler"), ("no artifact patch images",)),
        ("patch without mask", ("--artifacts", "{no_mask}", "--artifact-class", "ruler"), ("has no mask", "alpha")),
        ("mask of another size", ("--artifacts", "{mask_size}", "--artifact-class", "1"), ("its patch's size",)),
        ("patch too large", ("--artifacts", "{too_large}", "--artifact-class", "1"), ("larger than the probes",)),
        ("whole and small mixed", ("--artifacts", "{mixed}", "--artifact-class", "1"), ("not both",)),
        ("empty mask", ("--artifacts", "{blank}", "--artifact-class", "1"), ("marks no pixel",)),
        ("missing --artifact-class", ("--artifacts", "{artifacts}"), ("needs --artifact-class",)),
        ("--artifact-class alone", ("--artifact-class", "ruler"), ("needs --artifacts DIR",)),
        (
            "misspelled class",
            ("--artifacts", "{artifacts}", "--artifact-class", "rulr"),
            ("--artifact-class", "'rulr'", "did you mean 'ruler'?"),
        ),
        ("negative index", ("--artifacts", "{artifacts}", "--artifact-class", "-1"), ("out of range",)),
        (
            "index beyond the model's classes",
            ("--artifacts", "{artifacts}", "--artifact-class", "5", "--class-names", "a,b,c,d,e,f"),
            ("--artifact-class 5", "not a class of the model, which has 2 classes"),
        ),
    ],
)
def test_bad_artifact_options_exit_2_with_one_line(
    case: str,
    extra: tuple[str, ...],
    expected: tuple[str, ...],
    setup: Setup,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
) -> None:
    paths = {"root": str(setup.root), "artifacts": str(setup.artifacts)}
    paths.update({name: str(path) for name, path in setup.bad.items()})
    argv = arguments(setup, tmp_path / "out", *(part.format(**paths) for part in extra))
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("lightning-sas: error: "), captured.err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--min-enrichment", "1.5"), ("--min-roi-pixels", "0"), ("--min-flip-rate", "2"), ("--faithfulness-steps", "1")],
)
def test_out_of_range_rule_options_are_usage_errors(
    option: str, value: str, setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(arguments(setup, tmp_path / "out", option, value)) == 2
    assert option in capsys.readouterr().err


def test_every_probe_predicted_as_the_artifact_class_cannot_tell(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    """Every probe already predicted as the artifact's class: the flip rate cannot be measured,
    and the audit says so (exit 2); a map criterion that fires still wins (exit 1)."""
    argv = arguments(setup, tmp_path / "nan", "--artifacts", str(setup.artifacts), "--artifact-class", "clean",
                     "--no-faithfulness", "--min-enrichment", "off", model="WeightBlind")  # fmt: skip
    assert main(argv) == 2  # WeightBlind predicts class 0 ("clean") only
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith("lightning-sas: error: cannot tell: every probe is already predicted as the artifact's")
    summary = summary_of(tmp_path / "nan")
    assert summary["intervention"]["flip_rate"] is None and summary["intervention"]["eligible_probes"] == 0
    assert summary["intervention"]["mean_probability_change"] is None
    assert summary["verdict"]["status"] == "cannot tell" and "flip_rate" in summary["verdict"]["not_checkable"]
    assert "The audit cannot tell" in parse_report(tmp_path / "nan" / "report.html").status_text

    argv = arguments(setup, tmp_path / "fires", "--artifacts", str(setup.artifacts), "--artifact-class", "clean",
                     "--no-faithfulness", model="WeightBlind")  # fmt: skip
    assert main(argv) == 1  # Grad-CAM's brightness map fires on the bright ruler: exit 1 wins
    capsys.readouterr()
    verdict = summary_of(tmp_path / "fires")["verdict"]
    assert verdict["status"] == "shortcut" and "flip_rate" in verdict["not_checkable"]


@pytest.mark.parametrize("part", ["faithfulness", "sanity"])
def test_a_failing_part_makes_the_audit_incomplete(
    part: str,
    setup: Setup,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{part} broke on purpose")

    if part == "faithfulness":
        from lightning_sas.scores.faithfulness import Faithfulness

        monkeypatch.setattr(Faithfulness, "__call__", broken)
    else:
        import lightning_sas.audit.run

        monkeypatch.setattr(lightning_sas.audit.run, "cascading_randomization", broken)
    out = tmp_path / part
    extra = ("--sanity", "--sanity-stages", "1", "--faithfulness-steps", "3")
    assert main(arguments(setup, out, *extra, "--min-enrichment", "off")) == 2
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith("lightning-sas: error: the audit is incomplete") and f"{part} broke on purpose" in line
    summary = summary_of(out)
    assert summary["errors"] == {part: f"RuntimeError: {part} broke on purpose"}
    assert set(summary["methods"]) == {"gradcam"}  # the method's own results stand
    assert (summary["sanity"] is None) is (part == "sanity")
    assert f"problem: {'the sanity check failed' if part == 'sanity' else 'faithfulness could not be scored'}" in (
        captured.out
    )
    assert "Audit incomplete" in parse_report(out / "report.html").status_text
    # A criterion that fires wins over the failed part: exit 1, the failure as a warning.
    assert main(arguments(setup, tmp_path / "fires", *extra)) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("lightning-sas: warning: the audit is incomplete")
