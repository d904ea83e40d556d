"""Where the `supervisor-daemon` command line enters: its arguments, and `main`, which
runs a command and turns its errors into exit codes (the commands themselves are
daemon/cli/commands.py).

Exit codes: 0 success, 1 an operation failed (unknown id, conflict), 2 bad usage,
69 the database cannot be reached now (EX_UNAVAILABLE; `run` first waits for it),
70 a background job of the running daemon crashed (EX_SOFTWARE),
78 configuration unusable: a malformed URL, a refused password, no such database, a
daemon id another running process holds (EX_CONFIG; systemd does not restart on it).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio

from daemon import __version__, logs
from daemon.cli.commands import (
    Command,
    cmd_answer,
    cmd_history,
    cmd_migrate,
    cmd_prune,
    cmd_questions_follow,
    cmd_questions_list,
    cmd_restore,
    cmd_run,
    cmd_status,
    cmd_supervisors_create,
    cmd_supervisors_list,
    cmd_supervisors_show,
    cmd_tasks_complete,
    cmd_web,
)
from daemon.config import load_settings, web_address
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
from daemon.models import PHASES, SupervisorStateKind
from daemon.services import parse_id

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
