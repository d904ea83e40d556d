"""The built-in task runner: a task whose spec has a "command" runs as a subprocess.

Its status goes pending -> running -> succeeded/failed (exit status 0 or not, or the
timeout), with the exit status and the tail of its output as the result. A status
change NOTIFYs the supervisor waiting on it. After a restart, a task still `pending`
is started; one left `running` by a daemon that died is marked failed ("interrupted")
rather than run again, unless its spec says `"idempotent": true`: a command must not
run twice to completion without its author's say-so.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from daemon.errors import DaemonError
from daemon.logs import get_logger
from daemon.models import TaskStatus
from daemon.store import WorkStore

log = get_logger()
OUTPUT_TAIL = 4_000


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
        """Run `spec` when it is a command task; False when it is not ours to run."""
        if not isinstance(spec, dict) or not isinstance(spec.get("command"), str):
            return False
        # Bound here so that `jq 'select(.supervisor_id == ...)'` finds a supervisor's tasks.
        tlog = log.bind(task_id=str(task_id), supervisor_id=str(supervisor_id),
                        contract_id=str(contract_id))  # fmt: skip
        self._tg.start_soon(self._run, task_id, spec, tlog)
        return True

    async def resume(self, daemon_id: str, *, supervisors: set[uuid.UUID] | None = None) -> None:
        """Start the pending command tasks of this daemon's supervisors after a start
        (or of `supervisors` only, when it just took them over)."""
        for row in await self._store.runnable_tasks(daemon_id):
            if supervisors is not None and row["supervisor_id"] not in supervisors:
                continue
            spec = row["spec"]
            if row["status"] == TaskStatus.RUNNING and not spec.get("idempotent"):
                await self._store.set_task_status(
                    row["id"], TaskStatus.FAILED,
                    {"error": "interrupted: the daemon running it stopped"},
                )  # fmt: skip
                log.warning(
                    "task.interrupted",
                    task_id=str(row["id"]),
                    supervisor_id=str(row["supervisor_id"]),
                    contract_id=str(row["contract_id"]),
                )
                self._finished("interrupted")
                continue
            self.start(row["id"], spec, supervisor_id=row["supervisor_id"],
                       contract_id=row["contract_id"])  # fmt: skip

    async def _run(self, task_id: uuid.UUID, spec: dict[str, Any], tlog: Any) -> None:
        try:
            await self._store.set_task_status(task_id, TaskStatus.RUNNING)
            timeout = float(spec.get("timeoutS", self._timeout_s))
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
            self._finished("timed_out" if scope.cancelled_caught else status.value)
        except (DaemonError, OSError) as exc:
            tlog.error("task.runner_failed", error=str(exc))
            self._finished("error")
