"""Shared fixtures. ``tests/`` is on sys.path (pytest's rootdir insertion), so ``models`` imports."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _session_audit_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module- and session-scoped fixtures (set up before any test's own cache) keep their audits here,
    never in the user's cache."""
    before = os.environ.get("LIGHTNING_SAS_CACHE")
    os.environ["LIGHTNING_SAS_CACHE"] = str(tmp_path_factory.mktemp("session_audit_cache"))
    yield
    if before is None:
        os.environ.pop("LIGHTNING_SAS_CACHE", None)
    else:
        os.environ["LIGHTNING_SAS_CACHE"] = before


@pytest.fixture(autouse=True)
def _own_audit_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own result cache: a cached audit of another test never stands in for this one's."""
    monkeypatch.setenv("LIGHTNING_SAS_CACHE", str(tmp_path_factory.mktemp("audit_cache")))
