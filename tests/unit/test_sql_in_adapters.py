"""All SQL lives in services/adapters/ (and the migrations): the rooms above hand a connection
from one store call to the next but never run a statement or name a table themselves."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"
ALLOWED = (SERVICES / "adapters", SERVICES / "migrations")
DRIVER_CALLS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "copy_records_to_table"}
SQL_TEXT = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM|WITH|LOCK|TRUNCATE)\b")


def sql_outside_adapters() -> list[str]:
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        if any(path.is_relative_to(allowed) for allowed in ALLOWED):
            continue
        where = path.relative_to(SERVICES.parent)
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in DRIVER_CALLS
            ):
                found.append(f"{where}:{node.lineno}: .{node.func.attr}(")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and SQL_TEXT.match(node.value)
            ):
                found.append(f"{where}:{node.lineno}: SQL text {node.value.strip()[:40]!r}")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(name.split(".")[0] == "asyncpg" for name in names):
                    found.append(f"{where}:{node.lineno}: imports asyncpg")
    return found


def test_no_sql_outside_the_adapters() -> None:
    assert sql_outside_adapters() == []


def test_the_check_finds_sql_where_it_should_not_be(tmp_path: Path) -> None:
    assert SQL_TEXT.match("SELECT lead_id FROM leads")
    assert SQL_TEXT.match("\n  WITH cohort AS (")
    assert not SQL_TEXT.match("Select a rule set to compare")
