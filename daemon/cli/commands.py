"""The `supervisor-daemon` command: parse, call, print. No SQL here.

Exit codes: 0 success, 1 an operation failed (unknown id, conflict), 2 bad usage,
69 the database cannot be reached now (EX_UNAVAILABLE; `run` first waits for it),
70 a background job of the running daemon crashed (EX_SOFTWARE),
78 configuration unusable: a malformed URL, a refused password, no such database, a
daemon id another running process holds (EX_CONFIG; systemd does not restart on it).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio

from daemon import __version__, logs
from daemon.cli import text as cli_text
from daemon.config import Settings, load_settings, web_address
from daemon.db.database import open_database
from daemon.errors import (
    EX_CONFIG,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    ConfigError,
    DaemonCrashedError,
    DaemonError,
    DatabaseUnavailableError,
    MigrationError,
)
from daemon.models import PHASES, SupervisorStateKind, TaskStatus
from daemon.services import Services, parse_id
from daemon.store import Stores, WorkStore

Command = Callable[[Settings, argparse.Namespace], Awaitable[int]]
T = TypeVar("T")


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _checked(convert: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a converter whose ValueError says what is wrong (exit 2)."""

    def checked(text: str) -> T:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return checked


_web_address = _checked(web_address)
# An id as a person types it: a whole UUID or a unique prefix of 4+ hex digits (the
# services resolve it; an ambiguous one lists its candidates).
_typed_id = _checked(lambda text: parse_id(text).text)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


@contextlib.asynccontextmanager
async def _opened(settings: Settings) -> AsyncIterator[tuple[Stores, Services]]:
    """The stores over the configured database and people's commands over them, made
    once for one CLI command (as `web` makes them once for its process)."""
    from daemon.runtime.components import crash_loop_guard  # noqa: PLC0415 - CLI start

    async with open_database(settings) as db:
        stores = Stores.of(db)
        yield stores, Services(stores, guard=crash_loop_guard(settings))


@contextlib.asynccontextmanager
async def _services(settings: Settings) -> AsyncIterator[Services]:
    """People's commands over the configured database, for one CLI command."""
    async with _opened(settings) as (_, services):
        yield services


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
    from daemon.work.delivery import payload  # noqa: PLC0415 - keep CLI start fast

    async with _services(settings) as services:
        pending = await services.pending_questions()
    if args.json:
        _print_json([item.to_json() for item in pending])
        return 0
    if not pending:
        print("no pending questions")
    for item in pending:
        print(cli_text.question_line(payload(item.supervisor_id, item.question, redelivery=False)))
    return 0


async def _whole(work: WorkStore, body: dict[str, Any]) -> dict[str, Any]:
    """A delivered question in full: a NOTIFY carries a bounded preview (`truncated`
    says whether it is all of it); the whole one is read by its id while pending."""
    from daemon.models import PendingQuestion  # noqa: PLC0415
    from daemon.work.delivery import payload  # noqa: PLC0415

    if not body.get("truncated"):
        return body
    try:
        found = await work.find_pending_question(uuid.UUID(str(body.get("questionId"))))
        if found is None:
            return body
        question = PendingQuestion.from_json(found["question"])
    except ValueError:  # not an id, or a question no longer readable: show the preview
        return body
    return payload(found["supervisor_id"], question, redelivery=bool(body.get("redelivery")))


async def cmd_questions_follow(settings: Settings, args: argparse.Namespace) -> int:
    """The pending questions, then each new one as a daemon delivers it, until Ctrl-C."""
    from daemon.work.delivery import payload  # noqa: PLC0415

    seen: set[str] = set()

    def show(body: dict[str, Any]) -> None:
        question_id = str(body.get("questionId"))
        if question_id in seen:  # redelivered on a restoration: shown already
            return
        seen.add(question_id)
        print(json.dumps(body) if args.json else cli_text.question_line(body), flush=True)

    stopped = False
    async with _opened(settings) as (stores, services), stores.work.question_feed() as feed:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    nonlocal stopped
                    async for _ in signals:
                        stopped = True
                        tg.cancel_scope.cancel()

                tg.start_soon(stop_on_signal)
                # Listening first, then listing: a question asked in between shows once.
                # One answered while no daemon ran waits for nobody: not shown.
                for item in await services.pending_questions():
                    if item.answer is None:
                        show(payload(item.supervisor_id, item.question, redelivery=False))
                async for body in feed:
                    if str(body.get("questionId")) not in seen:
                        show(await _whole(stores.work, body))
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
    from datetime import timedelta  # noqa: PLC0415

    from daemon.runtime.retention import parse_age, prune  # noqa: PLC0415

    if args.older_than is not None:
        try:
            older_than = parse_age(args.older_than)
        except ValueError as exc:
            raise DaemonError(f"--older-than: {exc}") from None
    elif settings.retention_days is not None:
        older_than = timedelta(days=settings.retention_days)
    else:
        raise DaemonError("say how old: --older-than 30d (or set SUPERVISOR_DAEMON_RETENTION_DAYS)")
    async with _opened(settings) as (stores, _):
        report = await prune(stores.retention, older_than, dry_run=args.dry_run)
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


# -- parsing ----------------------------------------------------------------------------


def _add_work_commands(sub: Any) -> None:
    """The commands people use while supervisors work: answers and tasks."""
    answer = sub.add_parser("answer", help="answer a supervisor's question")
    answer.add_argument("question_id", type=_typed_id, metavar="QUESTION_ID")
    answer.add_argument("text", help="the answer, or the number of a choice (1 = the first)")
    answer.add_argument("--by", default=None, help="who answers (recorded with the answer)")
    answer.set_defaults(func=cmd_answer)

    questions = sub.add_parser("questions", help="questions waiting for an answer")
    questions_sub = questions.add_subparsers(dest="action", required=True, metavar="ACTION")
    qlist = questions_sub.add_parser("list", help="every pending question")
    qlist.add_argument("--json", action="store_true")
    qlist.set_defaults(func=cmd_questions_list)
    follow = questions_sub.add_parser(
        "follow", help="pending questions, then each new one as it is asked, until Ctrl-C"
    )
    follow.add_argument("--json", action="store_true", help="one JSON object per line")
    follow.set_defaults(func=cmd_questions_follow)

    tasks = sub.add_parser("tasks", help="report on spawned tasks")
    tasks_sub = tasks.add_subparsers(dest="action", required=True, metavar="ACTION")
    complete = tasks_sub.add_parser("complete", help="finish a task from outside")
    complete.add_argument("task_id", type=_typed_id, metavar="TASK_ID")
    complete.add_argument(
        "--status", default="succeeded", choices=["succeeded", "failed", "cancelled"]
    )
    complete.add_argument("--result", default=None, help="the task's result, as JSON")
    complete.set_defaults(func=cmd_tasks_complete)


def _add_history_commands(sub: Any) -> None:
    """`history` (the journal, or the conversation) and `prune` (retention by hand)."""
    history = sub.add_parser(
        "history", help="a supervisor's event journal (or, --messages, its conversation)"
    )
    history.add_argument("id", type=_typed_id, metavar="ID")
    history.add_argument(
        "--messages", action="store_true", help="page the conversation instead, oldest first"
    )
    history.add_argument(
        "--after",
        type=int,
        default=0,
        metavar="SEQ",
        help="only entries after this sequence number",
    )
    history.add_argument("--limit", type=int, default=1000)
    history.add_argument("--json", action="store_true")
    history.set_defaults(func=cmd_history)

    prune = sub.add_parser(
        "prune", help="delete the rows of supervisors completed or failed long ago"
    )
    prune.add_argument("--older-than", metavar="AGE", help="30d, 12h, 90m or 45s")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(func=cmd_prune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supervisor-daemon",
        description="Hosts long-running supervisors whose state lives in PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument(
        "--demo", action="store_true", help="create two demo supervisors when none exist"
    )
    run.set_defaults(func=cmd_run)

    _add_work_commands(sub)

    web = sub.add_parser("web", help="serve the web page: questions inbox, supervisors, daemons")
    web.add_argument("--address", type=_web_address, metavar="HOST:PORT",
                     help="default 127.0.0.1:8765 or $SUPERVISOR_DAEMON_WEB_ADDRESS")  # fmt: skip
    web.set_defaults(func=cmd_web)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument(
        "--status",
        action="store_true",
        help="list each migration as applied or pending; change nothing",
    )
    migrate.add_argument("--json", action="store_true", help="with --status: as JSON")
    migrate.set_defaults(func=cmd_migrate)

    status = sub.add_parser("status", help="daemons and supervisor counts")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    _add_history_commands(sub)

    restore = sub.add_parser(
        "restore", help="restore one supervisor now (source manual; also unparks a blocked one)"
    )
    restore.add_argument("id", type=_typed_id, metavar="ID")
    restore.add_argument("--json", action="store_true")
    restore.set_defaults(func=cmd_restore)

    sups = sub.add_parser("supervisors", help="list, show or create supervisors")
    sups_sub = sups.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = sups_sub.add_parser("list", help="list supervisors, newest first")
    lst.add_argument("--state", type=SupervisorStateKind, choices=list(SupervisorStateKind))
    lst.add_argument("--phase", choices=PHASES)
    lst.add_argument("--daemon", metavar="DAEMON_ID", help="only those this daemon owns")
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_supervisors_list)
    show = sups_sub.add_parser(
        "show", help="one supervisor: state, questions, tasks, restorations, recent journal"
    )
    show.add_argument("id", type=_typed_id, metavar="ID")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_supervisors_show)
    create = sups_sub.add_parser("create", help="start a contract with an agent")
    create.add_argument(
        "--agent", required=True, help="import path (module:callable) or cmd:COMMAND"
    )
    create.add_argument("--contract-id", type=_uuid)
    create.add_argument("--phase", default=PHASES[0], choices=PHASES)
    create.set_defaults(func=cmd_supervisors_create)
    return parser


def loop_options() -> dict[str, Any]:
    """uvloop when installed: its event loop wakes a waiting coroutine in about half the
    time, and a busy daemon wakes tens of thousands of them a second."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


def _fail(message: str, code: int) -> int:
    print(f"supervisor-daemon: error: {logs.redact(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(config_file=args.config)
        logs.configure(log_format=settings.log_format, level=settings.log_level)
        logs.register_secret(settings.web_token)
        if settings.database_url:
            from daemon.db.database import register_dsn_secret  # noqa: PLC0415

            register_dsn_secret(settings.database_url)
        func: Command = args.func
        result: int = anyio.run(func, settings, args, backend_options=loop_options())
    except (ConfigError, MigrationError) as exc:
        return _fail(str(exc), EX_CONFIG)
    except DatabaseUnavailableError as exc:
        return _fail(str(exc), EX_UNAVAILABLE)
    except DaemonCrashedError as exc:
        return _fail(str(exc), EX_SOFTWARE)
    except DaemonError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    return result
