"""The `supervisor-daemon` commands, one function each: call a service, print. No SQL
here, and no rules (daemon/services/ holds them). Their arguments, and the exit codes
their errors become, are daemon/cli/entry.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from daemon.cli import text as cli_text
from daemon.config import Settings
from daemon.db.database import open_database
from daemon.errors import DaemonError, DatabaseUnavailableError
from daemon.models import TaskStatus
from daemon.services import Services
from daemon.services.question_channel import delivered
from daemon.store import Stores

Command = Callable[[Settings, argparse.Namespace], Awaitable[int]]


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


@contextlib.asynccontextmanager
async def _services(settings: Settings) -> AsyncIterator[Services]:
    """People's commands over the configured database, made once for one CLI command
    (as `web` makes them once for its process)."""
    from daemon.runtime.components import crash_loop_guard  # noqa: PLC0415 - CLI start

    async with open_database(settings) as db:
        yield Services(
            Stores.of(db),
            guard=crash_loop_guard(settings),
            retention_days=settings.retention_days,
        )


# -- commands ---------------------------------------------------------------------------


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.runtime.lifecycle import run_daemon  # noqa: PLC0415 - keep CLI start fast

    if args.demo:
        print(
            "demo: two supervisors walk a contract through plan -> implement -> review.\n"
            "When one asks its question, answer it from a second terminal:\n"
            "  .venv/bin/supervisor-daemon questions list\n"
            "  .venv/bin/supervisor-daemon answer QUESTION_ID yes\n"
            "or click it on the web page: `make web`, then http://127.0.0.1:8765/",
            file=sys.stderr,
        )
    await run_daemon(settings, demo=args.demo)
    return 0


async def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.web.serve import serve  # noqa: PLC0415 - keep CLI start fast

    address = args.address or settings.web_address
    await serve(dataclasses.replace(settings, web_address=address))
    return 0


async def cmd_answer(settings: Settings, args: argparse.Namespace) -> int:
    async with _services(settings) as services:
        receipt = await services.answer(args.question_id, args.text, by=args.by)
    print(f"answered {receipt.question_id} (supervisor {receipt.supervisor_id})")
    return 0


async def cmd_questions_list(settings: Settings, args: argparse.Namespace) -> int:
    async with _services(settings) as services:
        pending = await services.pending_questions()
    if args.json:
        _print_json([item.to_json() for item in pending])
        return 0
    if not pending:
        print("no pending questions")
    for item in pending:
        print(cli_text.question_line(delivered(item)))
    return 0


async def cmd_questions_follow(settings: Settings, args: argparse.Namespace) -> int:
    """The pending questions, then each new one as a daemon delivers it, until Ctrl-C."""
    stopped = False
    async with _services(settings) as services, services.follow_questions() as questions:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    nonlocal stopped
                    async for _ in signals:
                        stopped = True
                        tg.cancel_scope.cancel()

                tg.start_soon(stop_on_signal)
                async for body in questions:
                    print(json.dumps(body) if args.json else cli_text.question_line(body),
                          flush=True)  # fmt: skip
                tg.cancel_scope.cancel()  # the feed ended: its connection was lost
    if not stopped:
        raise DatabaseUnavailableError("lost the connection to the database")
    return 0


async def cmd_tasks_complete(settings: Settings, args: argparse.Namespace) -> int:
    try:
        result = json.loads(args.result) if args.result is not None else None
    except json.JSONDecodeError as exc:
        raise DaemonError(f"--result is not JSON: {exc}") from None
    async with _services(settings) as services:
        task = await services.complete_task(args.task_id, TaskStatus(args.status), result)
    print(f"task {task.id} {task.status.value}")
    return 0


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async with open_database(settings) as db:
        if not args.status:
            applied = await db.migrate()
            print(f"applied {len(applied)} migration(s)")
            for name in applied:
                print(f"  {name}")
            return 0
        rows = await db.migration_status()
    if args.json:
        _print_json([{"name": r.name, "state": r.state, "appliedAt": r.applied_at} for r in rows])
    elif rows:
        print(cli_text.migrations(rows))
    return 0 if all(row.state == "applied" for row in rows) else 1


async def cmd_supervisors_list(settings: Settings, args: argparse.Namespace) -> int:
    async with _services(settings) as services:
        states = await services.list_supervisors(
            state=args.state, phase=args.phase, daemon_id=args.daemon, limit=args.limit
        )
    if args.json:
        _print_json([s.to_json() for s in states])
    elif not states:
        print("no supervisors")
    else:
        print(cli_text.SUMMARY_HEADER)
        for state in states:
            print(cli_text.summary(state))
    return 0


async def cmd_supervisors_show(settings: Settings, args: argparse.Namespace) -> int:
    async with _services(settings) as services:
        page = await services.supervisor(args.id)
    if args.json:
        _print_json(page.to_json())
    else:
        print(cli_text.supervisor_page(page))
    return 0


async def cmd_supervisors_create(settings: Settings, args: argparse.Namespace) -> int:
    async with _services(settings) as services:
        saved = await services.create_supervisor(
            agent=args.agent, contract_id=args.contract_id, phase=args.phase
        )
    print(saved.id)
    return 0


async def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    if args.messages:
        return await _history_messages(settings, args)
    async with _services(settings) as services:
        entries = await services.history(args.id, after=args.after, limit=args.limit)
    if args.json:
        _print_json(entries)
        return 0
    print(cli_text.history(entries))
    return 0


async def _history_messages(settings: Settings, args: argparse.Namespace) -> int:
    """A page of the conversation: the messages after --after, oldest first."""
    async with _services(settings) as services:
        length, page = await services.messages_after(args.id, after=args.after, limit=args.limit)
    if args.json:
        _print_json([message.to_json() for message in page])
        return 0
    if not page:
        print(f"no messages after {args.after} ({length} in all)")
    for message in page:
        body = message.message
        if (
            isinstance(body, dict)
            and isinstance(body.get("content"), str)
            and (isinstance(body.get("role"), str))
        ):
            text = f"{body['role']}: {body['content']}"
        else:
            text = json.dumps(body, separators=(",", ":"))
        print(f"{message.seq:>6}  {message.created_at:%Y-%m-%d %H:%M:%S}  {text}")
    if page and page[-1].seq < length:
        print(f"... {length - page[-1].seq} more: --after {page[-1].seq}")
    return 0


async def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    async with _services(settings) as services:
        older_than, report = await services.prune(args.older_than, dry_run=args.dry_run)
    if args.json:
        _print_json(dataclasses.asdict(report))
    else:
        print(f"{report.describe()} (completed or failed more than {older_than} ago)")
    return 0


async def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    async with _services(settings) as services:
        outcome = await services.restore(args.id)
    if args.json:
        _print_json(
            {
                "outcome": outcome.outcome,
                "action": outcome.action.value,
                "validation": outcome.validation.to_json(),
                "context": outcome.context.to_json(),
            }
        )
    else:
        print(f"{outcome.outcome}: {outcome.action.value}")
        print(outcome.context.restoration_context_message, end="")
    return 0 if outcome.outcome == "restored" else 1


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    async with _services(settings) as services:
        daemons = await services.daemons()
        counts = await services.count_supervisors()
    if args.json:
        _print_json({"daemons": daemons, "supervisors": counts})
        return 0
    print(cli_text.status(daemons, counts))
    return 0
