"""The built-in task runner: a task whose spec has a "command" runs as a subprocess.

Its status goes pending -> running -> succeeded/failed (exit status 0 or not, or the
timeout), with the exit status and the tail of its output as the result. A status
change NOTIFYs the supervisor waiting on it. After a restart, a task still `pending`
is started; one left `running` by a daemon that died is marked failed ("interrupted")
rather than run again, unless its spec says `"idempotent": true`: a command must not
run twice to completion without its author's say-so.

The Supervisor API refuses a spec the runner could not run (daemon.limits.command_spec)
before it is recorded; one read back from the database all the same (written by another
tool or an older version) fails its own task with the reason, and nothing a task does
reaches the daemon's task group.
"""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import anyio
import anyio.abc

from daemon.errors import DaemonError, InvalidInputError
from daemon.limits import command_spec
from daemon.logs import get_logger
from daemon.models import TaskStatus
from daemon.store import WorkStore

log = get_logger()
OUTPUT_TAIL = 4_000


class TaskRunner:
    def __init__(
        self, store: WorkStore, tg: anyio.abc.TaskGroup, *, timeout_s: float = 600.0
    ) -> None:
        self._store = store
        self._tg = tg
        self._timeout_s = timeout_s

    def start(self, task_id: uuid.UUID, spec: Any) -> bool:
        """Run `spec` when it is a command task; False when it is not ours to run. A
        command spec the runner cannot run fails its task."""
        try:
            command = command_spec(spec)
        except InvalidInputError as exc:
            self._tg.start_soon(self._refuse, task_id, exc)
            return True
        if command is None:
            return False
        self._tg.start_soon(self._run, task_id, spec, command.timeout_s or self._timeout_s)
        return True

    async def resume(self, daemon_id: str, *, supervisors: set[uuid.UUID] | None = None) -> None:
        """Start the pending command tasks of this daemon's supervisors after a start
        (or of `supervisors` only, when it just took them over)."""
        for row in await self._store.runnable_tasks(daemon_id):
            if supervisors is not None and row["supervisor_id"] not in supervisors:
                continue
            spec = row["spec"]
            try:
                command = command_spec(spec)
            except InvalidInputError as exc:
                await self._refuse(row["id"], exc)
                continue
            if command is None:  # e.g. an array holding "command": not a command task
                continue
            if row["status"] == TaskStatus.RUNNING and not command.idempotent:
                await self._store.set_task_status(
                    row["id"], TaskStatus.FAILED,
                    {"error": "interrupted: the daemon running it stopped"},
                )  # fmt: skip
                log.warning(
                    "task.interrupted",
                    task_id=str(row["id"]),
                    supervisor_id=str(row["supervisor_id"]),
                )
                continue
            self.start(row["id"], spec)

    # `timeout` is the subprocess's own deadline (move_on_after below), not the call's.
    async def _run(
        self,
        task_id: uuid.UUID,
        spec: dict[str, Any],
        timeout: float,  # noqa: ASYNC109
    ) -> None:
        tlog = log.bind(task_id=str(task_id))
        try:
            await self._store.set_task_status(task_id, TaskStatus.RUNNING)
            tlog.info("task.started", command=spec["command"])
            result: dict[str, Any]
            with anyio.move_on_after(timeout) as scope:
                done = await anyio.run_process(
                    ["/bin/sh", "-c", spec["command"]], check=False,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                )  # fmt: skip
            if scope.cancelled_caught:
                status, result = TaskStatus.FAILED, {"error": f"timed out after {timeout} s"}
            else:
                tail = done.stdout.decode(errors="replace")[-OUTPUT_TAIL:]
                status = TaskStatus.SUCCEEDED if done.returncode == 0 else TaskStatus.FAILED
                result = {"exitCode": done.returncode, "outputTail": tail}
            with anyio.CancelScope(shield=True):
                await self._store.set_task_status(task_id, status, result)
            tlog.info("task.finished", status=status.value, result=result)
        except DaemonError as exc:
            tlog.error("task.runner_failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one task's failure is its own, never the daemon's
            # OSError (the shell cannot start) or anything unforeseen: the task fails with
            # the reason rather than staying `running` with nobody left to finish it.
            reason = f"{type(exc).__name__}: {exc}"
            tlog.error("task.runner_failed", error=reason)
            await self._fail(task_id, f"the task could not run: {reason}")

    async def _refuse(self, task_id: uuid.UUID, exc: InvalidInputError) -> None:
        log.warning("task.invalid_spec", task_id=str(task_id), error=str(exc))
        await self._fail(task_id, f"invalid task spec: {exc}")

    async def _fail(self, task_id: uuid.UUID, error: str) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self._store.set_task_status(task_id, TaskStatus.FAILED, {"error": error})
        except DaemonError as exc:
            log.error("task.runner_failed", task_id=str(task_id), error=str(exc))
