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
reaches the daemon's task group. A status write that meets a database outage waits for
the database (the task's result is not lost), and the process runs with a scrubbed
environment: no database URL, no password, no daemon setting.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from daemon.errors import DaemonError, InvalidInputError
from daemon.limits import command_spec
from daemon.logs import get_logger
from daemon.models import TaskStatus
from daemon.runtime.environment import child_environment
from daemon.runtime.outage import through_outage
from daemon.store import WorkStore

log = get_logger()
OUTPUT_TAIL = 4_000
FINAL_WRITE_S = 30.0  # the longest a finished task's status write may hold up a stop


class TaskRunner:
    def __init__(
        self,
        store: WorkStore,
        tg: anyio.abc.TaskGroup,
        *,
        timeout_s: float = 600.0,
        finished: Callable[[str], None] = lambda _outcome: None,
    ) -> None:
        self._store = store
        self._tg = tg
        self._timeout_s = timeout_s
        # Told each task's outcome (succeeded, failed, timed_out, interrupted, error): metrics.
        self._finished = finished

    def start(
        self, task_id: uuid.UUID, spec: Any, *, supervisor_id: uuid.UUID, contract_id: uuid.UUID
    ) -> bool:
        """Run `spec` when it is a command task; False when it is not ours to run. A
        command spec the runner cannot run fails its task."""
        # Bound here so that `jq 'select(.supervisor_id == ...)'` finds a supervisor's tasks.
        tlog = log.bind(task_id=str(task_id), supervisor_id=str(supervisor_id),
                        contract_id=str(contract_id))  # fmt: skip
        try:
            command = command_spec(spec)
        except InvalidInputError as exc:
            self._tg.start_soon(self._refuse, task_id, exc, tlog)
            return True
        if command is None:
            return False
        ids = {"TASK_ID": task_id, "SUPERVISOR_ID": supervisor_id, "CONTRACT_ID": contract_id}
        env = child_environment({name: str(value) for name, value in ids.items()})
        timeout = command.timeout_s or self._timeout_s
        self._tg.start_soon(self._run, task_id, spec, timeout, env, tlog)
        return True

    async def resume(self, daemon_id: str, *, supervisors: set[uuid.UUID] | None = None) -> None:
        """Start the pending command tasks of this daemon's supervisors after a start
        (or of `supervisors` only, when it just took them over)."""
        rows = await through_outage(
            lambda: self._store.runnable_tasks(daemon_id), what="tasks to resume"
        )
        for row in rows:
            if supervisors is not None and row["supervisor_id"] not in supervisors:
                continue
            spec = row["spec"]
            tlog = log.bind(task_id=str(row["id"]), supervisor_id=str(row["supervisor_id"]),
                            contract_id=str(row["contract_id"]))  # fmt: skip
            try:
                command = command_spec(spec)
            except InvalidInputError as exc:
                await self._refuse(row["id"], exc, tlog)
                continue
            if command is None:  # e.g. an array holding "command": not a command task
                continue
            if row["status"] == TaskStatus.RUNNING and not command.idempotent:
                await self._set_status(
                    row["id"], TaskStatus.FAILED,
                    {"error": "interrupted: the daemon running it stopped"},
                )  # fmt: skip
                tlog.warning("task.interrupted")
                self._finished("interrupted")
                continue
            self.start(row["id"], spec, supervisor_id=row["supervisor_id"],
                       contract_id=row["contract_id"])  # fmt: skip

    async def _set_status(
        self, task_id: uuid.UUID, status: TaskStatus, result: dict[str, Any] | None = None
    ) -> None:
        await through_outage(
            lambda: self._store.set_task_status(task_id, status, result),
            what="a task's status", task_id=str(task_id),
        )  # fmt: skip

    # `timeout` is the subprocess's own deadline (move_on_after below), not the call's.
    async def _run(
        self,
        task_id: uuid.UUID,
        spec: dict[str, Any],
        timeout: float,  # noqa: ASYNC109
        env: dict[str, str],
        tlog: Any,
    ) -> None:
        try:
            await self._set_status(task_id, TaskStatus.RUNNING)
            tlog.info("task.started", command=spec["command"])
            result: dict[str, Any]
            with anyio.move_on_after(timeout) as scope:
                done = await anyio.run_process(
                    ["/bin/sh", "-c", spec["command"]], check=False,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
            if scope.cancelled_caught:
                status, result = TaskStatus.FAILED, {"error": f"timed out after {timeout} s"}
            else:
                tail = done.stdout.decode(errors="replace")[-OUTPUT_TAIL:]
                status = TaskStatus.SUCCEEDED if done.returncode == 0 else TaskStatus.FAILED
                result = {"exitCode": done.returncode, "outputTail": tail}
            # Written even when the daemon is stopping (shielded) and through an outage;
            # a stop during an outage gives up after a while and leaves the task
            # `running`, which the next start calls interrupted.
            with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_WRITE_S):
                await self._set_status(task_id, status, result)
            tlog.info("task.finished", status=status.value, result=result)
            self._finished("timed_out" if scope.cancelled_caught else status.value)
        except DaemonError as exc:
            tlog.error("task.runner_failed", error=str(exc))
            self._finished("error")
        except Exception as exc:  # noqa: BLE001 - one task's failure is its own, never the daemon's
            # OSError (the shell cannot start) or anything unforeseen: the task fails with
            # the reason rather than staying `running` with nobody left to finish it.
            reason = f"{type(exc).__name__}: {exc}"
            tlog.error("task.runner_failed", error=reason)
            self._finished("error")
            await self._fail(task_id, f"the task could not run: {reason}", tlog)

    async def _refuse(self, task_id: uuid.UUID, exc: InvalidInputError, tlog: Any) -> None:
        tlog.warning("task.invalid_spec", error=str(exc))
        await self._fail(task_id, f"invalid task spec: {exc}", tlog)

    async def _fail(self, task_id: uuid.UUID, error: str, tlog: Any) -> None:
        try:
            await self._set_status(task_id, TaskStatus.FAILED, {"error": error})
        except DaemonError as exc:
            tlog.error("task.runner_failed", error=str(exc))
