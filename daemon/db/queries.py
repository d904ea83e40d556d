"""SQL lives in .sql files and is used by name: `queries["claim_orphans"]`.

A file holds blocks, each headed by `-- name --` and a one-line `-- description`;
everything up to the next header is the statement. Loaded once at import.
"""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^-- ([a-z][a-z0-9_]*) --$", re.MULTILINE)
SQL_DIR = Path(__file__).parent / "sql"


def parse(text: str) -> dict[str, str]:
    """Map each block name in `text` to its statement (description comment removed)."""
    parts = _HEADER.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [line for line in body.strip().splitlines() if not line.startswith("-- ")]
        statement = "\n".join(lines).strip()
        if not statement:
            raise ValueError(f"query {name!r} is empty")
        found[name] = statement
    return found


def load(directory: Path = SQL_DIR) -> dict[str, str]:
    merged: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        for name, statement in parse(path.read_text()).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined in two files")
            merged[name] = statement
    return merged


queries: dict[str, str] = load()
