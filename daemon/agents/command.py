"""Command agents: one subprocess per supervisor, speaking JSON lines on stdin/stdout.

The protocol is in docs/agent-protocol.md. The daemon writes the first line (`start`,
or `restoration` with the restoration context message), then answers each request
line with a `result` or an `error` line carrying the request's id. Requests are served
one at a time, in order. A malformed, unknown or oversized line, or a request whose
values break the limits of daemon.limits (checked by the Supervisor API before anything
is recorded), gets an error reply and a log line; nothing an agent writes can crash the
daemon.

An agent that exits before its supervisor completed or failed is restarted with a
restoration message and exponential backoff; one that keeps dying (more restarts than
the crash-loop guard allows within its window) is parked as blocked for an operator.
The agent's stderr is logged line by line (`agent.stderr`).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import orjson

from daemon import limits
from daemon.agents.supervisor import Supervisor
from daemon.errors import DaemonError, InvalidInputError
from daemon.logs import Logger, get_logger
from daemon.models import PHASES, TERMINAL_STATES
from daemon.persistence.queue import QueueClosedError, SupervisorLostError
from daemon.restoration.records import CrashLoopGuard
from daemon.work.environment import child_environment
from daemon.work.processes import stop_group

log = get_logger()
MAX_LINE = 1 << 20  # bytes; a longer line is refused with an error reply
STOP_GRACE_S = 5.0  # SIGTERM to the agent's process group, then SIGKILL
PROTOCOL_VERSION = 1


class AgentCannotStartError(DaemonError):
    """The agent's command cannot be started at all."""


class ProtocolError(InvalidInputError):
    """A request the daemon refuses; the message goes back to the agent."""


def _field(
    request: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True
) -> Any:
    value = request.get(name)
    if value is None:
        if required:
            raise ProtocolError(f"'{name}' is required")
        return None
    if isinstance(value, bool) and kind in (int, float):
        raise ProtocolError(f"'{name}' must be a {getattr(kind, '__name__', kind)}")
    if not isinstance(value, kind):
        raise ProtocolError(f"'{name}' must be a {getattr(kind, '__name__', kind)}")
    return value


def _uuid(value: Any, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ProtocolError(f"'{name}' must be a UUID") from None


class Session:
    """Serves one agent's requests against its supervisor (the pure part, fuzzed)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "spawn_task": self._spawn_task,
            "wait_for_tasks": self._wait_for_tasks,
            "ask": self._ask,
            "await_answer": self._await_answer,
            "change_phase": self._change_phase,
            "report_activity": self._report_activity,
            "report_progress": self._report_progress,
            "append_message": self._append_message,
            "read_history": self._read_history,
            "complete": self._complete,
            "fail": self._fail,
        }

    async def handle(self, line: bytes) -> dict[str, Any]:
        """The reply to one line. Never raises, but for the daemon stopping."""
        request_id: Any = None
        try:
            try:
                request = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ProtocolError(f"not JSON: {exc}") from None
            if not isinstance(request, dict):
                raise ProtocolError("a request is a JSON object")
            request_id = request.get("id")
            if isinstance(request_id, dict | list):
                request_id = None
                raise ProtocolError("'id' must be a string or a number")
            kind = request.get("type")
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ProtocolError(f"unknown request type {kind!r}")
            value = await handler(request)
        except InvalidInputError as exc:  # refused by the protocol or by daemon.limits
            return {"type": "error", "id": request_id, "error": str(exc)}
        except (ValueError, TypeError, DaemonError) as exc:
            # The daemon stopping, or the supervisor no longer this daemon's: the agent is
            # stopped, not answered.
            if isinstance(exc, QueueClosedError | SupervisorLostError):
                raise
            return {"type": "error", "id": request_id, "error": f"{type(exc).__name__}: {exc}"}
        return {"type": "result", "id": request_id, "ok": True, "value": value}

    async def _spawn_task(self, r: dict[str, Any]) -> str:
        awaited = _field(r, "awaited", bool, required=False)
        task_id = await self.sup.spawn_task(r.get("spec"), awaited=awaited is not False)
        return str(task_id)

    async def _wait_for_tasks(self, r: dict[str, Any]) -> dict[str, str]:
        ids = _field(r, "taskIds", list, required=False)
        task_ids = None if ids is None else limits.task_ids(ids)
        statuses = await self.sup.wait_for_tasks(task_ids)
        return {str(k): str(v) for k, v in statuses.items()}

    async def _ask(self, r: dict[str, Any]) -> str:
        choices = limits.choices(_field(r, "choices", list, required=False))
        kind = _field(r, "questionType", str, required=False) or "general"
        question_type = limits.question_type(kind)
        answer: str = await self.sup.ask(
            _field(r, "question", str), choices=choices,
            context=_field(r, "context", str, required=False), question_type=question_type,
        )  # fmt: skip
        return answer

    async def _await_answer(self, r: dict[str, Any]) -> str:
        answer: str = await self.sup.await_answer(_uuid(r.get("questionId"), "questionId"))
        return answer

    async def _change_phase(self, r: dict[str, Any]) -> None:
        phase = _field(r, "phase", str)
        if phase not in PHASES:
            raise ProtocolError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")
        await self.sup.change_phase(phase)

    async def _report_activity(self, r: dict[str, Any]) -> None:
        await self.sup.report_activity(_field(r, "activity", str))

    async def _report_progress(self, r: dict[str, Any]) -> None:
        progress = _field(r, "progress", int)
        self.sup.report_progress(progress, _field(r, "activity", str, required=False))

    async def _append_message(self, r: dict[str, Any]) -> None:
        if "message" not in r:
            raise ProtocolError("'message' is required")
        await self.sup.append_message(r["message"])

    async def _read_history(self, r: dict[str, Any]) -> list[dict[str, Any]]:
        """A page of the conversation, oldest first (the supervisor checks the bounds)."""
        before = _field(r, "before", int, required=False)
        limit = _field(r, "limit", int, required=False)
        page = await self.sup.read_history(before, limit)
        return [message.to_json() for message in page]

    async def _complete(self, _: dict[str, Any]) -> None:
        await self.sup.complete()

    async def _fail(self, r: dict[str, Any]) -> None:
        await self.sup.fail(_field(r, "errorMessage", str))


def _encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message, default=str) + b"\n"


class CommandAgent:
    def __init__(self, command: list[str], guard: CrashLoopGuard | None = None) -> None:
        self.command = command
        self.guard = guard or CrashLoopGuard()

    async def __call__(self, sup: Supervisor) -> None:
        slog = log.bind(supervisor_id=str(sup.id), contract_id=str(sup.state.contract_id))
        first = await self._first_message(sup)
        restarts: list[float] = []
        while True:
            try:
                code = await self._run_once(sup, first, slog)
            except AgentCannotStartError as exc:
                await sup.fail(str(exc))
                return
            if sup.state.state in TERMINAL_STATES:
                return
            now = time.monotonic()
            window = self.guard.window.total_seconds()
            restarts = [t for t in restarts if t > now - window] + [now]
            if len(restarts) > self.guard.max_restorations:
                reason = (f"agent process keeps dying ({len(restarts)} exits within "
                          f"{int(window)} s, last exit code {code}); restore it with "
                          f"`supervisor-daemon restore {sup.id}`")  # fmt: skip
                slog.error("agent.parked", reason=reason)
                await sup.park(reason)
                return
            delay = min(0.5 * 2 ** (len(restarts) - 1), 60.0)
            slog.warning("agent.restarting", exit_code=code, restarts=len(restarts),
                         delay_s=delay)  # fmt: skip
            await anyio.sleep(delay)
            first = {
                "type": "restoration", "protocol": PROTOCOL_VERSION,
                "reason": f"your process exited with code {code}",
                "context": sup.describe(f"its agent process exited with code {code}"),
                **(await self._state(sup)),
            }  # fmt: skip

    async def _first_message(self, sup: Supervisor) -> dict[str, Any]:
        restoration = sup.restoration
        if restoration is not None and restoration.restoration_count > 0:
            return {"type": "restoration", "protocol": PROTOCOL_VERSION,
                    "reason": "the daemon restored this supervisor",
                    "context": restoration.restoration_context_message,
                    **(await self._state(sup))}  # fmt: skip
        return {"type": "start", "protocol": PROTOCOL_VERSION, **(await self._state(sup))}

    @staticmethod
    async def _state(sup: Supervisor) -> dict[str, Any]:
        state = sup.state
        # The spawned task ids and the newest messages are read when a process starts:
        # a running supervisor holds only their numbers.
        spawned = await sup.spawned_task_ids()
        tail = await sup.read_history() if state.history_length else []
        return {
            "supervisorId": str(state.id), "contractId": str(state.contract_id),
            "phase": state.phase, "state": state.state.value, "progress": state.progress,
            "pendingQuestions": [q.to_json() for q in state.pending_questions],
            "awaitedTaskIds": [str(t) for t in state.pending_task_ids],
            "spawnedTaskIds": [str(t) for t in spawned],
            "historyLength": state.history_length,
            "historyTail": [message.to_json() for message in tail],
        }  # fmt: skip

    async def _run_once(self, sup: Supervisor, first: dict[str, Any], slog: Logger) -> int | None:
        # Scrubbed: the agent gets no database URL, password or daemon setting.
        env = child_environment({"SUPERVISOR_ID": str(sup.id),
                                 "CONTRACT_ID": str(sup.state.contract_id)})  # fmt: skip
        try:
            # A session of its own: stopping the agent stops what it started too.
            process = await anyio.open_process(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            # Not a crash to retry: the command itself is wrong (missing, not executable).
            slog.error("agent.spawn_failed", command=self.command, error=str(exc))
            raise AgentCannotStartError(
                f"agent command {self.command[0]!r} cannot start: {exc.strerror or exc}"
            ) from None
        slog.info("agent.process_started", pid=process.pid, first=first["type"])
        session = Session(sup)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._log_stderr, process, slog)
                stdin, stdout = process.stdin, process.stdout
                if stdin is None or stdout is None:  # opened with PIPE: never None
                    raise RuntimeError("agent process has no stdin/stdout pipe")
                await stdin.send(_encode(first))
                async for line in _lines(stdout):
                    if line is None:
                        reply: dict[str, Any] = {
                            "type": "error",
                            "id": None,
                            "error": f"line longer than {MAX_LINE} bytes",
                        }
                    elif not line.strip():
                        continue
                    else:
                        reply = await session.handle(line)
                    if reply["type"] == "error":
                        slog.warning("agent.bad_request", error=reply["error"])
                    try:
                        await stdin.send(_encode(reply))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        break
                await process.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    await stop_group(process, grace_s=STOP_GRACE_S)
                await process.aclose()
        slog.info("agent.process_exited", exit_code=process.returncode)
        return process.returncode

    @staticmethod
    async def _log_stderr(process: anyio.abc.Process, slog: Logger) -> None:
        if process.stderr is None:
            return
        async for line in _lines(process.stderr):
            if line:
                slog.info("agent.stderr", line=line.decode(errors="replace")[:2000])


async def _lines(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[bytes | None]:
    """Lines from `stream`; None for a line longer than MAX_LINE (then skipped)."""
    buffer = bytearray()
    skipping = False
    while True:
        try:
            chunk = await stream.receive(65536)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            break
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_LINE and not skipping:
                    skipping = True
                    buffer.clear()
                    yield None
                elif skipping:
                    buffer.clear()
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if skipping:
                skipping = False
                continue
            yield line
    if buffer and not skipping:
        yield bytes(buffer)
