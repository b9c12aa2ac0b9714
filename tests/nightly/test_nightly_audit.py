"""Nightly audits at scale through the real entry point: several checkpoints, the cache, resuming,
two gloo processes against one, and ``--device cuda:N``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lit_classifier import IMAGE_SIZE, LitClassifier, save_checkpoint, train_quickly, write_probes

from lightning_sas.cli.main import main
from lightning_sas.cli.many_checkpoints import gate_status

TESTS_DIR = Path(__file__).resolve().parents[1]
MODEL = "lit_classifier:LitClassifier"
#: Cheap methods and no faithfulness curves: these tests are about the job, not the maps.
CHEAP = ("--methods", "gradcam,saliency", "--image-size", str(IMAGE_SIZE), "--no-faithfulness", "--discovery", "never")


def _checkpoint(folder: Path, name: str, steps: int, saved_step: int) -> Path:
    """A ruler model after ``steps`` training steps, saved as if at training step ``saved_step``."""
    torch.manual_seed(0)
    model = train_quickly(LitClassifier(lr=0.02), steps=steps) if steps else LitClassifier().eval()
    path = save_checkpoint(model, folder / f"{name}.ckpt")
    content = torch.load(path, weights_only=True)
    content.update(global_step=saved_step, epoch=saved_step // 10)
    torch.save(content, path)
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three checkpoints in a run folder (named so that file order is not step order) and probes."""
    root = tmp_path_factory.mktemp("nightly")
    runs = root / "runs"
    runs.mkdir()
    _checkpoint(runs, "a_trained", steps=60, saved_step=60)
    _checkpoint(runs, "b_untrained", steps=0, saved_step=0)
    _checkpoint(runs, "c_half", steps=20, saved_step=20)
    images, masks, _ = write_probes(root / "probes", count=6)
    return {"root": root, "runs": runs, "images": images, "masks": masks}


def _arguments(job: dict[str, Path], out: Path, *extra: str, checkpoints: tuple[str, ...] = ()) -> list[str]:
    given = checkpoints or (str(job["runs"]),)
    return [
        "audit",
        *[part for path in given for part in ("--checkpoint", path)],
        "--model", MODEL, "--probe", str(job["images"]), "--masks", str(job["masks"]), "--out", str(out),
        "--device", "cpu", *CHEAP, *extra,
    ]  # fmt: skip


def _environment(cache: Path | None = None) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), environment.get("PYTHONPATH")]))
    if cache is not None:
        environment["LIGHTNING_SAS_CACHE"] = str(cache)
    return environment


def _run(arguments: list[str], cache: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m lightning_sas ARGS`` as a new process (Fabric's launcher starts the same command again)."""
    return subprocess.run(
        [sys.executable, "-m", "lightning_sas", *arguments],
        capture_output=True,
        text=True,
        env=_environment(cache),
        timeout=timeout,
        check=False,
    )


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def _per_probe_scores(summary: dict) -> list:
    return [(probe["file"], probe["prediction"], probe["roi_share"], probe["roi_mass"]) for probe in summary["probes"]]


def test_several_checkpoints_give_one_combined_audit_ordered_by_step(job: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "audit"
    status = main(_arguments(job, out))
    combined = _summary(out)
    rows = combined["checkpoints"]
    assert [row["step"] for row in rows] == [0, 20, 60]
    assert [row["name"] for row in rows] == ["b_untrained", "c_half", "a_trained"]
    for row in rows:
        single = _summary(out / row["folder"])
        assert single["checkpoint"] == row["checkpoint"]
        assert row["exit_status"] in (0, 1)
        assert row["alert"] == single["verdict"]["alert"]
    # The combined exit status is the rule over every checkpoint (--gate any).
    assert status == (1 if any(row["alert"] for row in rows) else 0)
    assert rows[-1]["alert"], "the trained ruler model should fire the rule"
    # Each checkpoint's audit is the single-checkpoint audit of that file.
    alone = tmp_path / "alone"
    half = (str(job["runs"] / "c_half.ckpt"),)
    assert main(_arguments(job, alone, "--no-cache", checkpoints=half)) == rows[1]["exit_status"]
    assert _per_probe_scores(_summary(alone)) == _per_probe_scores(_summary(out / rows[1]["folder"]))
    report = (out / "report.html").read_text(encoding="utf-8")
    for row in rows:
        assert f'href="{row["folder"]}/report.html"' in report


def test_gate_last_reads_only_the_last_checkpoint(job: dict[str, Path], tmp_path: Path) -> None:
    # The trained model saved as the earliest step: only --gate any sees its alert.
    early = _checkpoint(tmp_path, "trained_early", steps=60, saved_step=1)
    late = _checkpoint(tmp_path, "untrained_late", steps=0, saved_step=90)
    alone = main(_arguments(job, tmp_path / "late_alone", checkpoints=(str(late),)))
    assert alone == 0, "the untrained model should not fire the rule"
    paths = (str(late), str(early))
    assert main(_arguments(job, tmp_path / "any", checkpoints=paths)) == 1
    assert main(_arguments(job, tmp_path / "last", "--gate", "last", checkpoints=paths)) == 0
    assert _summary(tmp_path / "last")["gate"] == "last"


def test_a_rerun_over_unchanged_checkpoints_reuses_every_audit(
    job: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(job["runs"], runs)
    first = main(_arguments(job, tmp_path / "night1", checkpoints=(str(runs),)))
    capsys.readouterr()
    started = time.perf_counter()
    second = main(_arguments(job, tmp_path / "night2", checkpoints=(str(runs),)))
    rerun_seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    assert second == first
    rows = _summary(tmp_path / "night2")["checkpoints"]
    assert all(row["cached"] for row in rows)
    assert "estimated audit time" not in captured.err  # nothing was explained again
    for row in rows:
        assert _summary(tmp_path / "night2" / row["folder"]) == _summary(tmp_path / "night1" / row["folder"])
    # A checkpoint overwritten by further training is audited again; the others stay cached.
    _checkpoint(runs, "c_half", steps=25, saved_step=20)
    main(_arguments(job, tmp_path / "night3", checkpoints=(str(runs),)))
    cached = {row["name"]: row["cached"] for row in _summary(tmp_path / "night3")["checkpoints"]}
    assert cached == {"b_untrained": True, "c_half": False, "a_trained": True}
    print(f"cached re-run of 3 checkpoints: {rerun_seconds:.2f} s")


def test_a_killed_job_resumes_from_the_checkpoints_it_finished(job: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # A half-written entry of an earlier killed run is never read as a finished audit.
    leftover = cache / ".writing-killed"
    leftover.mkdir(parents=True)
    (leftover / "summary.json").write_text("{", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_sas", *_arguments(job, tmp_path / "killed", "--methods", "sas,gradcam",
                                                            "--sas-iterations", "30")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_environment(cache),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(cache.glob("??/*/entry.json")):
        time.sleep(0.2)
    process.kill()
    process.wait()
    finished = len(list(cache.glob("??/*/entry.json")))
    assert 1 <= finished < 3, "the job should be killed after its first checkpoint and before its last"
    assert not (tmp_path / "killed").exists(), "nothing is put in --out before the job ends"
    resumed = _run(_arguments(job, tmp_path / "killed", "--methods", "sas,gradcam", "--sas-iterations", "30"), cache)
    assert resumed.returncode in (0, 1), resumed.stderr
    rows = _summary(tmp_path / "killed")["checkpoints"]
    assert sum(row["cached"] for row in rows) == finished
    assert len(list(cache.glob("??/*/entry.json"))) == 3


def test_two_gloo_processes_audit_as_one_process_does(job: dict[str, Path], tmp_path: Path) -> None:
    # Three checkpoints on two processes: one each, then the third by both together (probes shared out).
    one = _run(_arguments(job, tmp_path / "one", "--no-cache"))
    two = _run(_arguments(job, tmp_path / "two", "--no-cache", "--accelerator", "cpu", "--devices", "2"))
    assert two.returncode == one.returncode, two.stderr
    assert one.returncode in (0, 1), one.stderr
    rows_one = _summary(tmp_path / "one")["checkpoints"]
    rows_two = _summary(tmp_path / "two")["checkpoints"]
    assert [row["name"] for row in rows_two] == [row["name"] for row in rows_one]
    for row_one, row_two in zip(rows_one, rows_two, strict=True):
        assert row_two["exit_status"] == row_one["exit_status"]
        single_one = _summary(tmp_path / "one" / row_one["folder"])
        single_two = _summary(tmp_path / "two" / row_two["folder"])
        for probe_one, probe_two in zip(single_one["probes"], single_two["probes"], strict=True):
            assert probe_two["file"] == probe_one["file"]
            assert probe_two["prediction"] == probe_one["prediction"]
            for method, share in probe_one["roi_share"].items():
                assert probe_two["roi_share"][method] == pytest.approx(share, abs=1e-5, nan_ok=True)
        assert single_two["verdict"]["summary"] == single_one["verdict"]["summary"]


def test_device_names_one_cuda_device(job: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = _arguments(job, tmp_path / "out", checkpoints=(str(job["runs"] / "a_trained.ckpt"),))
    arguments[arguments.index("--device") + 1] = "cuda:7"
    status = main(arguments)
    error = capsys.readouterr().err.strip().splitlines()
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert status == 2
    assert len(error) == 1 and error[0].startswith("lightning-sas: error: --device cuda:7:")
    arguments[arguments.index("--device") + 1] = "gpu:0"
    assert main(arguments) == 2
    assert "expected auto, cpu, cuda, cuda:N" in capsys.readouterr().err


def test_a_checkpoint_that_fails_leaves_the_others_audited(
    job: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    narrow = save_checkpoint(LitClassifier(width=4), tmp_path / "narrow.ckpt")
    content = torch.load(narrow, weights_only=True)
    content["hyper_parameters"]["width"] = 8  # weights that do not fit the class the file names
    torch.save(content, narrow)
    untrained = str(job["runs"] / "b_untrained.ckpt")
    status = main(_arguments(job, tmp_path / "out", checkpoints=(untrained, str(narrow))))
    err = capsys.readouterr().err
    assert status == 2
    rows = {row["name"]: row for row in _summary(tmp_path / "out")["checkpoints"]}
    assert rows["b_untrained"]["exit_status"] == 0 and (tmp_path / "out" / rows["b_untrained"]["folder"]).is_dir()
    assert rows["narrow"]["exit_status"] == 2 and "the weights do not fit LitClassifier" in rows["narrow"]["error"]
    assert f"lightning-sas: error: {narrow}: --checkpoint" in err


def test_an_incomplete_audit_is_audited_again_even_when_the_rule_fired(
    job: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Occlusion fails (the model takes at most 8 images at once), Grad-CAM fires the rule: exit 1, incomplete.
    trained = (str(job["runs"] / "a_trained.ckpt"),)
    arguments = _arguments(job, tmp_path / "first", "--methods", "gradcam,occlusion", checkpoints=trained)
    arguments[arguments.index(MODEL)] = "lit_classifier:LargeBatchFails"
    assert main(arguments) == 1
    assert "occlusion" in _summary(tmp_path / "first")["errors"]
    capsys.readouterr()
    arguments[arguments.index(str(tmp_path / "first"))] = str(tmp_path / "second")
    assert main(arguments) == 1
    assert "reused from the cache" not in capsys.readouterr().err
    assert not list(Path(os.environ["LIGHTNING_SAS_CACHE"]).glob("??/*/entry.json"))


def test_the_gate_reads_alerts_of_the_gated_rows_and_failures_of_all() -> None:
    fired_incomplete = {"alert": True, "exit_status": 1, "errors": {"occlusion": "out of memory"}}
    fired = {"alert": True, "exit_status": 1, "errors": {}}
    clean = {"alert": False, "exit_status": 0, "errors": {}}
    failed = {"alert": False, "exit_status": 2, "errors": {}, "error": "weights do not fit"}
    assert gate_status([fired, clean], "any") == 1 and gate_status([fired, clean], "last") == 0
    assert gate_status([clean, fired], "last") == 1
    assert gate_status([fired_incomplete, clean], "last") == 2  # a failed part is never hidden by the gate
    assert gate_status([failed, clean], "last") == 2 and gate_status([failed, fired], "any") == 1
    assert gate_status([clean, clean], "any") == 0


def test_no_cache_keeps_nothing_and_leaves_no_work_folder(job: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "audits" / "tonight"
    assert main(_arguments(job, out, "--no-cache")) in (0, 1)
    assert sorted(path.name for path in out.parent.iterdir()) == ["tonight"]
    assert not list(Path(os.environ["LIGHTNING_SAS_CACHE"]).glob("**/entry.json"))
    assert all(not row["cached"] for row in _summary(out)["checkpoints"])


def test_a_rank_that_fails_alone_fails_the_shared_audit_on_every_rank(job: dict[str, Path], tmp_path: Path) -> None:
    # One checkpoint on two processes: both explain it together; rank 1 cannot even load it.
    trained = (str(job["runs"] / "a_trained.ckpt"),)
    arguments = _arguments(job, tmp_path / "out", "--accelerator", "cpu", "--devices", "2", checkpoints=trained)
    arguments[arguments.index(MODEL)] = "lit_classifier:FailsOnRankOne"
    completed = _run(arguments, timeout=240)  # before the fix: a hang until the timeout
    assert completed.returncode == 2, completed.stderr[-2000:]
    (row,) = _summary(tmp_path / "out")["checkpoints"]
    assert row["exit_status"] == 2 and "failed on another rank" in row["error"]
    assert "no memory left on this process (rank 1, on purpose)" in completed.stderr


def test_torchrun_starts_the_processes_and_rank_zero_reports(job: dict[str, Path], tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--nproc-per-node", "2", "-m", "lightning_sas"]
    arguments = _arguments(job, tmp_path / "out", "--no-cache", "--accelerator", "cpu", "--devices", "2")
    completed = subprocess.run(
        [*command, *arguments], capture_output=True, text=True, env=_environment(), timeout=300, check=False
    )
    combined = _summary(tmp_path / "out")
    # torchrun reports any non-zero exit as 1; the audit's own status is in summary.json.
    assert completed.returncode == (0 if combined["exit_status"] == 0 else 1), completed.stderr[-2000:]
    assert combined["exit_status"] == 1 and [row["step"] for row in combined["checkpoints"]] == [0, 20, 60]
    assert "Starting with 2 processes" in completed.stdout + completed.stderr


def test_a_yaml_job_lists_checkpoints_and_the_command_line_replaces_them(job: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "nightly.yaml"
    listed = [str(job["runs"] / "a_trained.ckpt"), str(job["runs"] / "b_untrained.ckpt")]
    config.write_text(json.dumps({"audit": {"checkpoint": listed}}), encoding="utf-8")  # JSON is YAML
    arguments = [part for part in _arguments(job, tmp_path / "from_file") if part != str(job["runs"])]
    arguments.remove("--checkpoint")
    assert main([*arguments, "--config", str(config)]) in (0, 1)
    assert [row["name"] for row in _summary(tmp_path / "from_file")["checkpoints"]] == ["b_untrained", "a_trained"]
    replaced = _arguments(job, tmp_path / "replaced", checkpoints=(str(job["runs"] / "c_half.ckpt"),))
    assert main([*replaced, "--config", str(config)]) in (0, 1)
    assert _summary(tmp_path / "replaced")["checkpoint"].endswith("c_half.ckpt")  # one checkpoint: a single audit


def test_overwrite_swaps_a_combined_audit_and_a_single_one_whole(job: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "latest"
    assert main(_arguments(job, out)) in (0, 1)
    assert (out / "checkpoints").is_dir()
    single = (str(job["runs"] / "a_trained.ckpt"),)
    assert main(_arguments(job, out, checkpoints=single)) == 2  # an audit is there: --overwrite needed
    assert main(_arguments(job, out, "--overwrite", checkpoints=single)) == 1
    assert not (out / "checkpoints").exists() and "checkpoints" not in _summary(out)
    assert main(_arguments(job, out, "--overwrite")) in (0, 1)
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["a_trained", "b_untrained", "c_half"]


def test_a_job_file_with_no_checkpoint_is_refused_in_one_line(
    job: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "nightly.yaml"
    config.write_text(json.dumps({"audit": {"checkpoint": []}}), encoding="utf-8")
    arguments = [part for part in _arguments(job, tmp_path / "out") if part != str(job["runs"])]
    arguments.remove("--checkpoint")
    assert main([*arguments, "--config", str(config)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lightning-sas: error: --checkpoint: give at least one checkpoint")
