"""How people's records read on a terminal: the CLI's text output (its JSON is to_json()).

Pure functions from records to strings; no I/O. Long values an agent wrote (task specs
and results, journal payloads) are cut to one line, since `--json` gives them whole.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon.models import SupervisorState
from daemon.services import InboxQuestion, SupervisorPage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from daemon.db.migrations import MigrationStatus

CUT = 100  # characters of an agent's value shown on one line


def _cut(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= CUT else text[: CUT - 3] + "..."


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S %Z}".strip()


def question_line(body: dict[str, Any]) -> str:
    """A question, as delivered (the NOTIFY/webhook body), in two lines for people."""
    choices = body.get("choices") or []
    shown = f"  [{' / '.join(map(str, choices))}]" if choices else ""
    again = "  (redelivered)" if body.get("redelivery") else ""
    if body.get("truncated"):  # answered before the whole of it could be read
        again += "  (preview)"
    return (
        f"{body.get('questionId')}  supervisor {body.get('supervisorId')}"
        f"  ({body.get('questionType')}){again}\n    {body.get('question')}{shown}"
    )


def summary(state: SupervisorState) -> str:
    activity = state.current_activity or ""
    return (
        f"{state.id}  {state.state.value:<17} {state.phase:<10} {state.progress:>3}%  "
        f"{len(state.pending_questions)}q  {activity}"
    )


SUMMARY_HEADER = (
    "ID                                    STATE             PHASE      PROG  QUESTIONS"
)


def _question(item: InboxQuestion) -> list[str]:
    question = item.question
    lines = [
        f"  {question.id}  {question.question_type.value}  asked {_when(question.asked_at)}",
        f"    {question.question}",
    ]
    if question.choices:
        numbered = ", ".join(f"{n} {choice}" for n, choice in enumerate(question.choices, 1))
        lines.append(f"    choices: {numbered}")
    if question.context:
        lines.append(f"    context: {_cut(question.context)}")
    if item.answer is not None:
        lines.append(f"    answered {item.answer!r}; the owning daemon has not applied it yet")
    return lines


def supervisor_page(page: SupervisorPage) -> str:
    """`supervisors show`: who it is, where it stands, what it waits on, what it did."""
    s = page.state
    restored = (
        f"{s.restoration_count} time(s), last {_when(s.last_restored_at)}"
        f" ({s.restoration_source.value if s.restoration_source else '-'})"
        if s.restoration_count
        else "never"
    )
    lines = [
        f"supervisor    {s.id}",
        f"contract      {s.contract_id}",
        f"agent         {s.agent or '-'}",
        f"state         {s.state.value}",
        f"phase         {s.phase}",
        f"progress      {s.progress}%",
        f"activity      {s.current_activity or '-'}",
    ]
    if s.error_message:
        lines.append(f"error         {s.error_message}")
    lines += [
        f"owner         {s.owner_daemon_id or '-'} (epoch {s.owner_epoch})",
        f"restored      {restored}",
        f"created       {_when(s.created_at)}",
        f"last activity {_when(s.last_activity)}",
        f"conversation  {page.conversation_length} message(s)",
        "",
        f"pending questions ({len(page.questions)})",
    ]
    for item in page.questions:
        lines += _question(item)
    lines += ["", f"tasks ({len(page.tasks)})"]
    for task in page.tasks:
        result = "" if task.result is None else f"  result {_cut(task.result)}"
        lines.append(f"  {task.id}  {task.status.value:<9}  {_cut(task.spec)}{result}")
    shown = len(page.journal.entries)
    lines += ["", f"journal (newest {shown} of {page.journal.length}; `history ID` for all)"]
    for entry in reversed(page.journal.entries):
        lines.append(
            f"  {entry['seq']:>6}  {entry['created_at']:%Y-%m-%d %H:%M:%S}  "
            f"{entry['kind']:<18} {_cut(entry['payload'])}"
        )
    return "\n".join(lines)


def history(entries: Sequence[dict[str, Any]]) -> str:
    """`history`: one line per journal entry, payloads whole."""
    if not entries:
        return "no events"
    return "\n".join(
        f"{entry['seq']:>6}  {entry['created_at']:%Y-%m-%d %H:%M:%S}  "
        f"{entry['kind']:<18} {json.dumps(entry['payload'], separators=(',', ':'))}"
        for entry in entries
    )


def status(daemons: Sequence[dict[str, Any]], counts: dict[str, int]) -> str:
    lines = [f"daemons: {len(daemons)}"]
    lines += [
        f"  {d['id']}  {'alive' if d['alive'] else 'down'}  pid {d['pid']}  "
        f"host {d['hostname']}  lease until {d['lease_expires_at']:%Y-%m-%d %H:%M:%S}  "
        f"capacity {d['capacity'] if d.get('capacity') is not None else '-'}  "
        f"owns {d.get('supervisors', 0)} ({d.get('unfinished', 0)} unfinished)"
        for d in daemons
    ]
    lines.append(f"supervisors: {sum(counts.values())}")
    lines += [f"  {name:<18} {count}" for name, count in sorted(counts.items())]
    return "\n".join(lines)


def migrations(rows: Sequence[MigrationStatus]) -> str:
    """`migrate --status`: each migration, applied (with when) or pending."""
    return "\n".join(
        f"{row.state:<8} {row.name}  "
        f"{row.applied_at.isoformat(timespec='seconds') if row.applied_at else ''}".rstrip()
        for row in rows
    )
