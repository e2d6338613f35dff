"""The import contract: the gateway reaches genservice only through the read side, which holds no write."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READ_SIDE = ("genservice.replies", "genservice.v1")
WRITE_SQL = re.compile(r"\b(INSERT\s+INTO|UPDATE\s+\w+\s+(AS\s+\w+\s+)?SET|DELETE\s+FROM|pg_notify)\b", re.IGNORECASE)


def imported_modules(package: str) -> dict[str, set[str]]:
    """Every module that each file of `package` imports, at any depth of the file."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def outside_read_side(names: set[str]) -> set[str]:
    return {
        name
        for name in names
        if name.startswith("genservice.") and not name.startswith(READ_SIDE) and name != "genservice"
    }


def test_the_gateway_imports_only_the_read_side_and_the_stubs() -> None:
    reaching = {path: outside_read_side(names) for path, names in imported_modules("gateway").items()}
    assert {path: names for path, names in reaching.items() if names} == {}


def test_the_read_side_imports_nothing_else_of_genservice() -> None:
    reaching = {path: outside_read_side(names) for path, names in imported_modules("genservice.replies").items()}
    assert {path: names for path, names in reaching.items() if names} == {}


def test_the_read_side_holds_no_write() -> None:
    writes = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "genservice" / "replies").glob("*.py")
        if path.name != "migrations.py" and WRITE_SQL.search(path.read_text(encoding="utf-8"))
    }
    assert writes == set()


def test_a_running_gateway_loads_no_module_of_the_writer() -> None:
    probe = (
        "import sys, gateway.server, gateway.app, gateway.routes;"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('genservice'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    modules = set(loaded.stdout.split())
    assert modules, "the probe saw no genservice module at all"
    assert outside_read_side(modules) == set()
