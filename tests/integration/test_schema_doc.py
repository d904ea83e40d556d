"""docs/schema.md describes the database the migrations build: tables and views with
their columns, indexes, triggers and functions. A change to the schema that the page
does not follow fails here, naming what differs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg

from daemon.db import migrations
from daemon.db.pool import connect

DOC = Path(__file__).parents[2] / "docs" / "schema.md"
_CELL = re.compile(r"`([^`]+)`")


def _sections(text: str, level: str) -> dict[str, list[str]]:
    """Heading (its first `name`, else its text) -> the lines under it."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(level + " "):
            heading = line[len(level) + 1 :]
            match = _CELL.search(heading)
            current = found.setdefault(match.group(1) if match else heading.strip(), [])
        elif line.startswith("#") and len(line) - len(line.lstrip("#")) <= len(level):
            current = None
        elif current is not None:
            current.append(line)
    return found


def _rows(lines: list[str]) -> list[list[str]]:
    """The body rows of the first markdown table in `lines`, cells stripped."""
    rows: list[list[str]] = []
    for line in lines:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.append(cells)
        elif rows:
            break
    return rows[2:]  # the header and its --- line are not rows


def documented() -> dict[str, Any]:
    text = DOC.read_text()
    relations = {}
    for name, lines in _sections(text, "###").items():
        columns = {}
        for cells in _rows(lines):
            column = _CELL.fullmatch(cells[0])
            assert column is not None, f"schema.md, {name}: {cells[0]!r} is not `a column`"
            columns[column.group(1)] = (cells[1], cells[2] == "yes")
        relations[name] = columns
    top = _sections(text, "##")
    indexes = {
        (_CELL.search(cells[0]).group(1), _CELL.search(cells[1]).group(1))  # type: ignore[union-attr]
        for cells in _rows(top["Indexes"])
    }
    triggers = {
        (_CELL.search(cells[0]).group(1), _CELL.search(cells[1]).group(1))  # type: ignore[union-attr]
        for cells in _rows(top["Triggers"])
    }
    functions = {
        _CELL.search(cells[0]).group(1).split("(")[0]  # type: ignore[union-attr]
        for cells in _rows(top["Functions"])
    }
    return {"relations": relations, "indexes": indexes, "triggers": triggers,
            "functions": functions}  # fmt: skip


async def actual(conn: asyncpg.Connection[Any]) -> dict[str, Any]:
    relations: dict[str, dict[str, tuple[str, bool]]] = {}
    for row in await conn.fetch(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type,"
        " a.attnotnull FROM pg_class c"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'v')"
        " ORDER BY c.relname, a.attnum"
    ):
        relations.setdefault(row["relname"], {})[row["attname"]] = (
            row["type"],
            row["attnotnull"],
        )
    indexes = {
        (row["tablename"], row["indexname"])
        for row in await conn.fetch(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema()"
        )
    }
    triggers = {
        (row["relname"], row["tgname"])
        for row in await conn.fetch(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
        )
    }
    functions = {
        row["proname"]
        for row in await conn.fetch(
            "SELECT proname FROM pg_proc WHERE pronamespace = current_schema()::regnamespace"
        )
    }
    return {"relations": relations, "indexes": indexes, "triggers": triggers,
            "functions": functions}  # fmt: skip


async def test_the_schema_page_describes_the_migrated_database(empty_dsn: str) -> None:
    conn = await connect(empty_dsn)
    try:
        await migrations.migrate(conn)
        found = await actual(conn)
    finally:
        await conn.close()
    doc = documented()
    assert set(doc["relations"]) == set(found["relations"])
    for name, columns in found["relations"].items():
        assert doc["relations"][name] == columns, f"docs/schema.md, {name}"
        assert list(doc["relations"][name]) == list(columns), f"column order of {name}"
    assert doc["indexes"] == found["indexes"]
    assert doc["triggers"] == found["triggers"]
    assert doc["functions"] == found["functions"]


def test_the_parser_reads_what_it_should() -> None:
    """A page that lost a column or an index would not pass: the parser sees them."""
    doc = documented()
    assert doc["relations"]["supervisor_messages"]["message"] == ("json", True)
    assert ("supervisors", "supervisor_states_pkey") in doc["indexes"]
    assert ("supervisor_states", "supervisor_states_update") in doc["triggers"]
