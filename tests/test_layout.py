"""The package's rooms: sub-packages import only the ones below them (no cycles, no climbing back up).

The order, from the bottom: what every room may use, then the data, the methods, the scores on
top of them, the trust checks, one audit, the ways out (loggers, report) beside the nightly
job's machinery (checkpoints, cache, processes), and the two front doors. ``docs/design.md`` draws it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_sas"

#: Lower rooms first; a module may import its own room and any room before it.
LAYERS = [
    {"validation"},
    {"runtime"},
    {"probes"},
    {"methods"},
    {"scores"},
    {"trust"},
    {"audit"},
    {"loggers", "report", "nightly"},
    {"callback", "cli"},
]


def room_of(module: str) -> str:
    """``lightning_sas.audit.run`` -> ``audit``; ``lightning_sas.validation`` -> ``validation``."""
    return module.split(".")[1]


def level(room: str) -> int:
    return next(index for index, rooms in enumerate(LAYERS) if room in rooms)


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_sas."):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("lightning_sas.")]
    return found


MODULES = sorted(path for path in PACKAGE.rglob("*.py") if path.parent != PACKAGE or path.stem == "validation")


def test_every_module_lives_in_a_known_room() -> None:
    rooms = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in MODULES}
    assert rooms == set().union(*LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_run_downwards(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [
        f"line {line}: {module}" for line, module in imports_of(path) if level(room_of(module)) > level(own)
    ]
    assert not upward, f"{own} must not import rooms above it: {upward}"
