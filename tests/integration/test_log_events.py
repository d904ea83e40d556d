"""docs/logs.md against the code, and a demo run's lines against docs/logs.md.

The code is read, not run, to find every event it logs: the first argument of each
`log.info(...)`, `slog.warning(...)` etc. (a name bound to a literal, or a level chosen
with `log.info if ... else log.warning`, are followed). Then the real daemon runs the
demo, is stopped and restarted, and every line it wrote about a supervisor must carry
that supervisor's id and its contract's.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from daemon.models import SupervisorStateKind
from daemon.persistence import events
from daemon.persistence.queue import EventRejectedError, PersistenceQueue
from daemon.store import EventStore
from tests.logs_doc import DOC, documented_events
from tests.queues import running

ROOT = Path(__file__).parents[2]


STORIES = ("Start and restoration", "Questions", "Tasks", "Agents", "Queue and database",
           "Ownership", "The web page", "Stop")  # fmt: skip


LEVELS = {"debug", "info", "warning", "error", "critical", "exception"}


EVENT_NAME = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


@dataclasses.dataclass
class Logged:
    levels: set[str] = dataclasses.field(default_factory=set)
    fields: set[str] = dataclasses.field(default_factory=set)
    where: list[str] = dataclasses.field(default_factory=list)


def _strings(node: ast.expr) -> set[str] | None:
    """The strings `node` can evaluate to: a literal, or `a if x else b` of literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        body, orelse = _strings(node.body), _strings(node.orelse)
        return None if body is None or orelse is None else body | orelse
    return None


def _levels(node: ast.expr, assigned: dict[str, list[ast.expr]]) -> set[str] | None:
    """The log levels a called expression stands for, or None when it is no log call."""
    if isinstance(node, ast.Attribute) and node.attr in LEVELS:
        return {"error" if node.attr == "exception" else node.attr}
    if isinstance(node, ast.IfExp):
        body, orelse = _levels(node.body, assigned), _levels(node.orelse, assigned)
        return None if body is None or orelse is None else body | orelse
    if isinstance(node, ast.Name) and node.id in assigned:
        found = [_levels(value, assigned) for value in assigned[node.id]]
        if found and all(levels is not None for levels in found):
            return set().union(*(levels for levels in found if levels is not None))
    return None


def _looks_like_a_logger(node: ast.expr) -> bool:
    receiver = node.value if isinstance(node, ast.Attribute) else node
    return "log" in ast.unparse(receiver).lower()


def _assignments(scope: ast.AST) -> dict[str, list[ast.expr]]:
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
    return assigned


def _event_names(call: ast.Call, assigned: dict[str, list[ast.expr]], where: str) -> set[str]:
    """The event names a log call writes; empty when it is no log call after all."""
    first = call.args[0]
    names = _strings(first)
    if names is None and isinstance(first, ast.Name):
        values = [_strings(value) for value in assigned.get(first.id, [])]
        if values and all(value is not None for value in values):
            names = set().union(*(value for value in values if value is not None))
    if names is None:
        assert not _looks_like_a_logger(call.func), (
            f"{where}: the event name must be a literal (or a name bound to one)"
        )
        return set()
    if not all(EVENT_NAME.match(name) for name in names):
        assert not _looks_like_a_logger(call.func), (
            f"{where}: {names} is not an event name (story.what)"
        )
        return set()  # argparse's parser.error("..."), not a log line
    return names


def logged_events() -> dict[str, Logged]:
    """Every event name the daemon's code logs, with its levels and call-site fields."""
    events: dict[str, Logged] = {}
    seen_calls: set[tuple[str, int, int]] = set()
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        for scope in [tree, *functions]:
            assigned = _assignments(scope)
            for call in ast.walk(scope):
                if not isinstance(call, ast.Call) or not call.args:
                    continue
                levels = _levels(call.func, assigned)
                key = (str(path), call.lineno, call.col_offset)
                if levels is None or key in seen_calls:
                    continue
                seen_calls.add(key)
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                fields = {k.arg for k in call.keywords if k.arg not in (None, "exc_info")}
                if any(k.arg == "exc_info" for k in call.keywords):
                    fields.add("exception")  # format_exc_info renders it under this key
                for name in _event_names(call, assigned, where):
                    logged = events.setdefault(name, Logged())
                    logged.levels |= levels
                    logged.fields |= fields
                    logged.where.append(where)
    return events


def test_the_scan_finds_the_events_it_must() -> None:
    events = logged_events()
    # A literal, a level chosen at the call, and a name bound to one of two literals.
    assert events["daemon.starting"].levels == {"info"}
    assert events["supervisor.restored"].levels == {"info", "warning"}
    assert {"queue.drained", "queue.drain_incomplete"} <= events.keys()
    assert len(events) >= 45


def test_every_logged_event_is_documented() -> None:
    documented = documented_events()
    missing = {
        name: logged.where for name, logged in logged_events().items() if name not in documented
    }
    assert not missing, f"add these events to {DOC.relative_to(ROOT)}: {missing}"


def test_the_document_names_only_events_the_code_logs() -> None:
    gone = sorted(documented_events().keys() - logged_events().keys())
    assert not gone, f"{DOC.relative_to(ROOT)} names events the code no longer logs: {gone}"


def test_documented_levels_and_fields_match_the_code() -> None:
    documented = documented_events()
    for name, logged in logged_events().items():
        doc = documented[name]
        assert logged.levels == doc.levels, (name, logged.where)
        assert logged.fields <= doc.fields, (name, sorted(logged.fields - doc.fields))


def test_events_are_grouped_by_story() -> None:
    stories = {doc.story for doc in documented_events().values()}
    assert stories == set(STORIES)


def test_the_guides_name_only_documented_events() -> None:
    stories = {name.split(".")[0] for name in documented_events()}
    for guide in (ROOT / "README.md", ROOT / "docs" / "operations.md"):
        named = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", guide.read_text()))
        events = {name for name in named if name.split(".")[0] in stories}
        assert events <= documented_events().keys(), (
            guide.name,
            events - documented_events().keys(),
        )


async def test_a_rejected_event_names_its_supervisors_contract(
    pool: asyncpg.Pool[Any], captured_logs: list[MutableMapping[str, Any]]
) -> None:
    sid, contract = uuid.uuid4(), uuid.uuid4()  # a supervisor the database does not know
    async with running(PersistenceQueue(EventStore(pool))) as queue:
        queue.contract_of = {sid: contract}.get  # what the host knows of its supervisors
        with pytest.raises(EventRejectedError):
            await queue.submit(events.state_changed(sid, SupervisorStateKind.WORKING))
    (line,) = [line for line in captured_logs if line["event"] == "queue.event_rejected"]
    assert (line["supervisor_id"], line["contract_id"]) == (str(sid), str(contract))
