"""docs/logs.md read as a table: each documented log event with its story, levels and
fields, for the tests that hold the code and a running daemon's lines against it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

DOC = Path(__file__).parents[1] / "docs" / "logs.md"


@dataclasses.dataclass(frozen=True)
class Documented:
    story: str
    levels: frozenset[str]
    fields: frozenset[str]


def documented_events() -> dict[str, Documented]:
    """The event rows of docs/logs.md: `| `name` | levels | fields | when |`."""
    row = re.compile(r"^\| `([a-z_.]+)` \| ([a-z, ]+) \| (.*?) \| (.+) \|$")
    events: dict[str, Documented] = {}
    story = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            story = line[3:].strip()
        match = row.match(line)
        if match is None:
            continue
        name, levels, fields, when = match.groups()
        assert name not in events, f"{name} is documented twice"
        assert when.strip(), f"{name}: say when it is written"
        events[name] = Documented(
            story=story,
            levels=frozenset(level.strip() for level in levels.split(",")),
            fields=frozenset(re.findall(r"`([a-z_]+)`", fields)),
        )
    return events
