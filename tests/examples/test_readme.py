"""The README's first snippet runs as it stands, and audits: the event files hold the audit's tags."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from lit_models import read_events

README = Path(__file__).resolve().parents[2] / "README.md"


def first_python_block() -> str:
    """The first ```python block of the README (the "Use it" snippet)."""
    found = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert found is not None, "the README has no python block"
    return found.group(1)


def test_the_first_snippet_runs_and_logs_the_audit(tmp_path: Path) -> None:
    snippet = first_python_block()
    assert "SASAuditCallback" in snippet and "trainer.fit" in snippet
    (tmp_path / "snippet.py").write_text(snippet, encoding="utf-8")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    events = read_events(tmp_path / "lightning_logs" / "version_0")
    scalars = events.Tags()["scalars"]
    for method in ("sas", "gradcam"):
        assert any(tag.startswith(f"audit/{method}/") for tag in scalars), sorted(scalars)
    assert any(tag.startswith("audit/") for tag in events.Tags()["images"])
