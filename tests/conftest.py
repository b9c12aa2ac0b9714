"""Shared fixtures. ``tests/`` is on sys.path (pytest's rootdir insertion), so ``models`` imports."""

from __future__ import annotations

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
