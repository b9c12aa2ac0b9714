"""What a reviewer sees: the real TensorBoard server serves every audit tag, step and image (HTTP API)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from lit_models import cheap_methods, fit, read_events

from lightning_sas import SASAuditCallback

TENSORBOARD = Path(sys.executable).parent / "tensorboard"
pytestmark = pytest.mark.skipif(not TENSORBOARD.exists(), reason=f"no tensorboard executable beside {sys.executable}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A TensorBoard server on 127.0.0.1, asked through its HTTP API."""

    def __init__(self, logdir: Path, log: Path) -> None:
        self.base = f"http://127.0.0.1:{_free_port()}"
        port = self.base.rsplit(":", 1)[1]
        command = [
            str(TENSORBOARD), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", port,
            "--load_fast=false", "--reload_interval", "1",
        ]  # fmt: skip
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, route: str, **query: str) -> bytes:
        url = f"{self.base}{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()

    def json(self, route: str, **query: str) -> object:
        return json.loads(self.get(route, **query))

    def wait_for(self, ready, timeout: float = 60.0) -> object:
        """Poll until ``ready()`` returns something truthy (the server starts and loads events lazily)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tensorboard exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                value = ready()
                if value:
                    return value
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.25)
        pytest.fail(f"tensorboard did not serve the run within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self._log.close()


def test_tensorboard_serves_every_image_scalar_layout_and_text(tmp_path: Path) -> None:
    callback = SASAuditCallback(probe=2, methods=cheap_methods(), class_names=["plain", "corner"])
    trainer, _ = fit(tmp_path, callback, max_epochs=2)
    log_dir = Path(trainer.logger.log_dir)
    events = read_events(log_dir)
    steps = [3, 6]
    image_tags = {"audit/grid/sas", "audit/grid/gradcam", "audit/probe_00", "audit/probe_01"}

    server = Server(log_dir, tmp_path / "tensorboard.log")
    try:
        run = "."  # the log directory itself
        tags = server.wait_for(
            lambda: (
                (served := server.json("/data/plugin/images/tags").get(run)) and image_tags <= set(served) and served
            )
        )
        assert image_tags <= set(tags)

        # Every image at every step, byte for byte what was written.
        for tag in sorted(image_tags):
            entries = server.json("/data/plugin/images/images", run=run, tag=tag, sample="0")
            assert [entry["step"] for entry in entries] == steps, tag
            written = [event.encoded_image_string for event in events.Images(tag)]
            served = [server.get("/data/plugin/images/individualImage?" + entry["query"]) for entry in entries]
            assert served == written, tag

        # Every score at every step, with the values the callback kept.
        for method in ("sas", "gradcam"):
            for score in ("roi_share", "insertion_minus_deletion"):
                tag = f"audit/{method}/{score}"
                points = server.json("/data/plugin/scalars/scalars", run=run, tag=tag)
                assert [step for _, step, _ in points] == steps, tag
                expected = [entry[tag] for entry in callback.history]
                assert [value for _, _, value in points] == pytest.approx(expected, rel=1e-6), tag

        # The custom-scalars layout: one chart per score with both methods, each chart served with data.
        layout = server.json("/data/plugin/custom_scalars/layout")
        (category,) = layout["category"]
        charts = {chart["title"]: chart["multiline"]["tag"] for chart in category["chart"]}
        assert {"roi_share", "insertion_minus_deletion", "agreement"} <= set(charts)
        for title in ("roi_share", "insertion_minus_deletion"):
            served_tags = set()
            for pattern in charts[title]:
                answer = server.json("/data/plugin/custom_scalars/scalars", run=run, tag=pattern)
                assert answer["regex_valid"], pattern
                served_tags |= set(answer["tag_to_events"])
            assert served_tags == {f"audit/sas/{title}", f"audit/gradcam/{title}"}

        # Text: the manifest and the cost estimate.
        text_tags = server.json("/data/plugin/text/tags")[run]
        assert {"audit/manifest/text_summary", "audit/cost/text_summary"} <= set(text_tags)
        manifest = server.json("/data/plugin/text/text", run=run, tag="audit/manifest/text_summary")
        assert [entry["step"] for entry in manifest] == [0]
        assert all(entry["name"] in manifest[0]["text"] for entry in callback.manifest)
    finally:
        server.stop()
