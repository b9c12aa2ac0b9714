"""The audit in real MLflow tracking stores (a SQLite store, and an `mlflow server` on 127.0.0.1), read back
through MlflowClient."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from lit_models import LitClassifier, corner_dataset, loaders, make_trainer
from PIL import Image

from lightning_sas import SASAuditCallback
from lightning_sas.loggers.content import manifest_markdown
from lightning_sas.loggers.mlflow import mlflow_text_path

mlflow = pytest.importorskip("mlflow")

# log_image(key=..., step=...) stores images/<key with / as ~>+step+<S>+timestamp+<T>+<uuid>.png
IMAGE_NAME = re.compile(r"images/(?P<key>[^+]+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png")


def stepped_images(client, run_id: str) -> Counter:
    """How many full-size images the run holds per (tag, step)."""
    found: Counter = Counter()
    for entry in client.list_artifacts(run_id, "images"):
        match = IMAGE_NAME.fullmatch(entry.path)
        if match:
            found[(match["key"].replace("~", "/"), int(match["step"]))] += 1
    return found


def image_artifact(client, run_id: str, tag: str, step: int, folder: Path) -> np.ndarray:
    """The full-size image logged for ``tag`` at ``step``, downloaded and decoded."""
    prefix = f"images/{tag.replace('/', '~')}+step+{step}+"
    (path,) = [
        e.path for e in client.list_artifacts(run_id, "images") if e.path.startswith(prefix) and e.path.endswith(".png")
    ]
    return np.asarray(Image.open(client.download_artifacts(run_id, path, str(folder))))


def text_artifact(client, run_id: str, tag: str, step: int, folder: Path) -> str:
    return Path(client.download_artifacts(run_id, mlflow_text_path(tag, step), str(folder))).read_text(encoding="utf-8")


def fit_with_mlflow(tmp_path: Path, tracking_uri: str, max_epochs: int) -> tuple[SASAuditCallback, object]:
    from lightning.pytorch.loggers import MLFlowLogger

    # A local store keeps its artifacts in the test's folder (its default is ./mlruns in the working
    # directory); the server keeps them where it was told to.
    local = tracking_uri.startswith("sqlite:")
    artifacts = (tmp_path / "mlflow_artifacts").as_uri() if local else None
    logger = MLFlowLogger(experiment_name="audit", tracking_uri=tracking_uri, artifact_location=artifacts)
    # A zero threshold makes the first audit raise a shortcut alert, so there is one to log.
    callback = SASAuditCallback(probe=2, methods=["gradcam"], shortcut_threshold=0.0, sanity=False)
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=max_epochs, logger=logger)
    trainer.fit(LitClassifier(), *loaders(corner_dataset()))
    assert callback.audited_epochs == list(range(max_epochs))
    return callback, logger


# --------------------------------------------------------------------------- a server, started early


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts.

    Started before the module's first test, so its start-up overlaps the SQLite-store test;
    the server test waits for it. Its whole process group is ended afterwards.
    """
    executable = Path(sys.executable).parent / "mlflow"
    if not executable.exists():
        yield {"skip": f"no mlflow executable beside {sys.executable}"}
        return
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    command = [
        str(executable), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed after the process ends
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    try:
        yield {"uri": f"http://127.0.0.1:{port}", "process": process, "log": root / "server.log"}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        log.close()


def wait_until_ready(server: dict, timeout: float = 120.0) -> str:
    if "skip" in server:
        pytest.skip(server["skip"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server["process"].poll() is not None:
            pytest.fail(f"mlflow server exited: {server['log'].read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server['uri']}/health", timeout=2) as response:
                if response.status == 200:
                    return server["uri"]
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"mlflow server not ready after {timeout:.0f} s: {server['log'].read_text(errors='replace')[-2000:]}")


# --------------------------------------------------------------------------- tests


def test_sqlite_store_gets_stepped_images_metrics_text_and_raw_maps(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    callback, logger = fit_with_mlflow(tmp_path, tracking_uri, max_epochs=2)
    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = logger.run_id
    expected_steps = [3, 6]

    # Scores: metric histories at trainer.global_step, the values the callback keeps.
    for name in ("audit/gradcam/roi_share", "audit/gradcam/insertion_minus_deletion", "audit/seconds"):
        history = client.get_metric_history(run_id, name)
        assert [metric.step for metric in history] == expected_steps, name
        assert [metric.value for metric in history] == [pytest.approx(entry[name]) for entry in callback.history]

    # Pictures: every tag once per audit, as stepped images (MLflow's image charts).
    tags = ("audit/grid/gradcam", "audit/probe_00", "audit/probe_01")
    assert stepped_images(client, run_id) == Counter({(tag, step): 1 for tag in tags for step in expected_steps})
    panel = image_artifact(client, run_id, "audit/probe_00", 6, tmp_path / "download")
    assert panel.ndim == 3 and panel.shape[-1] == 3 and panel.std() > 10

    # Text: the manifest and the alert as Markdown artifacts.
    manifest = text_artifact(client, run_id, "audit/manifest", 0, tmp_path / "download")
    assert manifest == manifest_markdown(callback.manifest)
    assert text_artifact(client, run_id, "audit/alert", 3, tmp_path / "download").startswith(
        "Shortcut alert at epoch 0"
    )

    # Raw maps: an artifact with the arrays the callback saw.
    raw = np.load(client.download_artifacts(run_id, "audits/epoch=1.npz", str(tmp_path / "download")))
    assert raw["maps_gradcam"].shape == (2, 16, 16)
    assert list(raw["names"]) == [entry["name"] for entry in callback.manifest]


def test_mlflow_server_gets_the_audit_over_http(tmp_path: Path, mlflow_server: dict) -> None:
    from mlflow.tracking import MlflowClient

    uri = wait_until_ready(mlflow_server)
    callback, logger = fit_with_mlflow(tmp_path, uri, max_epochs=1)
    client = MlflowClient(tracking_uri=uri)
    run_id = logger.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "audit/gradcam/roi_share")] == [
        (3, pytest.approx(callback.history[0]["audit/gradcam/roi_share"]))
    ]
    tags = ("audit/grid/gradcam", "audit/probe_00", "audit/probe_01")
    assert stepped_images(client, run_id) == Counter({(tag, 3): 1 for tag in tags})
    grid = image_artifact(client, run_id, "audit/grid/gradcam", 3, tmp_path / "download")
    assert grid.shape[0] > grid.shape[1]  # a row per probe
    assert text_artifact(client, run_id, "audit/manifest", 0, tmp_path / "download") == manifest_markdown(
        callback.manifest
    )
