"""The layout shows the architecture (DESIGN.md "Layout (target)"): each package imports only from the packages
above it in LAYERS, never from one below, and the product never imports the test harnesses. Imports are read
with `ast`, every one of them (inside functions and TYPE_CHECKING blocks too), so the rule cannot be dodged."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "storage", "ledger", "chain", "blockwatch", "treasury", "actors", "web", "app")
HARNESSES = ("tests", "bench", "devnet")  # may import anything; the product imports none of them


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def violations(package: str, root: Path = ROOT) -> list[str]:
    rank = LAYERS.index(package)
    allowed = set(LAYERS[:rank + 1])
    ours = set(LAYERS) | set(HARNESSES)
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for imported, line in sorted(imported_packages(path), key=lambda item: item[1]):
            if imported in ours and imported not in allowed:
                found.append(f"{path.relative_to(root)}:{line} imports {imported}")
    return found


@pytest.mark.parametrize("package", [p for p in LAYERS if (ROOT / p).is_dir()])
def test_a_package_imports_only_the_packages_above_it(package):
    assert violations(package) == []


def test_the_check_sees_a_violation(tmp_path):
    """The rule can fail: a file of storage/ that imports web or a harness is reported, also from inside a
    function; an import of core (above it) is not."""
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "probe.py").write_text(
        "import json\nfrom core.errors import WalletError\n\ndef f():\n    from web.app import create_app\n"
        "    import devnet.anvil\n")
    assert sorted(violations("storage", tmp_path)) == ["storage/probe.py:5 imports web",
                                                      "storage/probe.py:6 imports devnet"]


def test_harness_packages_are_not_in_the_layers():
    assert not set(HARNESSES) & set(LAYERS)
    assert all((ROOT / p).is_dir() for p in ("core", "storage", "ledger", "chain", "blockwatch", "actors", "web", "app"))
