"""The built-in task runner: a task whose spec has a "command" runs as a subprocess.

Its status goes pending -> running -> succeeded/failed (exit status 0 or not, or the
timeout), with the exit status and the tail of its output as the result. A status
change NOTIFYs the supervisor waiting on it. After a restart, a task still `pending`
is started; one left `running` by a daemon that died is marked failed ("interrupted")
rather than run again, unless its spec says `"idempotent": true`: a command must not
run twice to completion without its author's say-so.

Side effects are fenced like state: a process starts only after a compare-and-set
moved its task from pending to running under the epoch this daemon holds for the
supervisor (with its lease live), and its outcome is written only while that epoch
still holds. A daemon that learns it lost a supervisor (a refused write, a lapsed
lease) stops that supervisor's task processes at once, with whatever they started
(their own process group), and never starts one under that epoch again.

The Supervisor API refuses a spec the runner could not run (daemon.limits.command_spec)
before it is recorded; one read back from the database all the same (written by another
tool or an older version) fails its own task with the reason, and nothing a task does
reaches the daemon's task group. A status write that meets a database outage waits for
the database (the task's result is not lost), and the process runs with a scrubbed
environment: no database URL, no password, no daemon setting.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from daemon.db.outage import through_outage
from daemon.errors import DaemonError, InvalidInputError
from daemon.limits import CommandSpec, command_spec
from daemon.logs import Logger, get_logger
from daemon.models import TaskStatus
from daemon.store import TaskChange, WorkStore
from daemon.work.environment import child_environment
from daemon.work.processes import stop_group

log = get_logger()
OUTPUT_TAIL = 4_000
FINAL_WRITE_S = 30.0  # the longest a finished task's status write may hold up a stop
STOP_GRACE_S = 2.0  # SIGTERM, then SIGKILL: a task stopped because its owner moved on


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Owner:
    """Whose task it is: the supervisor and the epoch this daemon holds it under."""

    supervisor_id: uuid.UUID
    contract_id: uuid.UUID
    epoch: int


class TaskRunner:
    def __init__(
        self,
        store: WorkStore,
        tg: anyio.abc.TaskGroup,
        *,
        daemon_id: str,
        timeout_s: float = 600.0,
        finished: Callable[[str], None] = lambda _outcome: None,
    ) -> None:
        self._store = store
        self._tg = tg
        self._daemon_id = daemon_id
        self._timeout_s = timeout_s
        # Told each task's outcome (succeeded, failed, timed_out, interrupted, stopped,
        # error): metrics.
        self._finished = finished
        # Told of a supervisor a fenced task write found under a newer epoch (or with
        # this daemon's lease lapsed): the host stops it.
        self.on_lost: Callable[[uuid.UUID, int], object] = lambda _sid, _epoch: None
        # supervisor -> task -> (epoch, the scope its work runs in)
        self._scopes: dict[uuid.UUID, dict[uuid.UUID, tuple[int, anyio.CancelScope]]] = {}
        self._lost: set[tuple[uuid.UUID, int]] = set()  # never started again

    def start(
        self,
        task_id: uuid.UUID,
        spec: Any,
        *,
        supervisor_id: uuid.UUID,
        contract_id: uuid.UUID,
        epoch: int,
        rerun: bool = False,
    ) -> bool:
        """Run `spec` when it is a command task, under `epoch`; False when it is not ours
        to run. A command spec the runner cannot run fails its task."""
        owner = _Owner(supervisor_id=supervisor_id, contract_id=contract_id, epoch=epoch)
        # Bound here so that `jq 'select(.supervisor_id == ...)'` finds a supervisor's tasks.
        tlog = log.bind(task_id=str(task_id), supervisor_id=str(supervisor_id),
                        contract_id=str(contract_id))  # fmt: skip
        try:
            command = command_spec(spec)
        except InvalidInputError as exc:
            self._spawn(task_id, owner, self._refuse, task_id, owner, exc, tlog)
            return True
        if command is None:
            return False
        if (supervisor_id, epoch) not in self._lost:
            self._spawn(task_id, owner, self._run, task_id, owner, command, rerun, tlog)
        return True

    def stop(self, supervisor_id: uuid.UUID, epoch: int) -> int:
        """Stop the running tasks of a supervisor this daemon no longer drives under
        `epoch` (their processes get SIGTERM, then SIGKILL), and never start one under
        that epoch again; how many were stopped."""
        self._lost.add((supervisor_id, epoch))
        stopped = 0
        for task_epoch, scope in self._scopes.get(supervisor_id, {}).values():
            if task_epoch == epoch:
                scope.cancel()
                stopped += 1
        return stopped

    def stop_all(self) -> int:
        """Stop every running task (this daemon's lease lapsed); how many."""
        stopped = 0
        for supervisor_id, tasks in self._scopes.items():
            for epoch, scope in tasks.values():
                self._lost.add((supervisor_id, epoch))
                scope.cancel()
                stopped += 1
        return stopped

    def _spawn(
        self,
        task_id: uuid.UUID,
        owner: _Owner,
        work: Callable[..., Awaitable[None]],
        *args: Any,
    ) -> None:
        scope = anyio.CancelScope()
        self._scopes.setdefault(owner.supervisor_id, {})[task_id] = (owner.epoch, scope)
        self._tg.start_soon(self._scoped, task_id, owner, scope, work, *args)

    async def _scoped(
        self,
        task_id: uuid.UUID,
        owner: _Owner,
        scope: anyio.CancelScope,
        work: Callable[..., Awaitable[None]],
        *args: Any,
    ) -> None:
        try:
            with scope:
                await work(*args)
            if scope.cancelled_caught:
                self._finished("stopped")
        finally:
            tasks = self._scopes.get(owner.supervisor_id, {})
            if tasks.get(task_id, (0, None))[1] is scope:
                del tasks[task_id]
                if not tasks:
                    del self._scopes[owner.supervisor_id]

    async def resume(self, *, supervisors: set[uuid.UUID] | None = None) -> None:
        """Start the pending command tasks of this daemon's supervisors after a start
        (or of `supervisors` only, when it just took them over)."""
        rows = await through_outage(
            lambda: self._store.runnable_tasks(self._daemon_id), what="tasks to resume"
        )
        for row in rows:
            if supervisors is not None and row["supervisor_id"] not in supervisors:
                continue
            spec = row["spec"]
            owner = _Owner(supervisor_id=row["supervisor_id"], contract_id=row["contract_id"],
                           epoch=row["owner_epoch"])  # fmt: skip
            tlog = log.bind(task_id=str(row["id"]), supervisor_id=str(owner.supervisor_id),
                            contract_id=str(owner.contract_id))  # fmt: skip
            try:
                command = command_spec(spec)
            except InvalidInputError as exc:
                await self._refuse(row["id"], owner, exc, tlog)
                continue
            if command is None:  # e.g. an array holding "command": not a command task
                continue
            running = row["status"] == TaskStatus.RUNNING
            if running and not command.idempotent:
                await self._interrupt(row["id"], owner, tlog)
                continue
            self.start(row["id"], spec, supervisor_id=owner.supervisor_id,
                       contract_id=owner.contract_id, epoch=owner.epoch, rerun=running)  # fmt: skip

    async def _interrupt(self, task_id: uuid.UUID, owner: _Owner, tlog: Logger) -> None:
        error = {"error": "interrupted: the daemon running it stopped"}
        change = await through_outage(
            lambda: self._store.interrupt_task(
                task_id, error, supervisor_id=owner.supervisor_id,
                daemon_id=self._daemon_id, epoch=owner.epoch,
            ),
            what="a task's status", task_id=str(task_id),
        )  # fmt: skip
        if not change.owned:
            self._fenced(owner, "interrupt", tlog)
        elif change.changed:
            tlog.warning("task.interrupted")
            self._finished("interrupted")

    def _fenced(self, owner: _Owner, write: str, tlog: Logger) -> None:
        """A fenced task write found the supervisor under another epoch (or this
        daemon's lease lapsed): nothing was written; the host stops the supervisor."""
        tlog.warning("task.fenced", write=write, epoch=owner.epoch)
        self.on_lost(owner.supervisor_id, owner.epoch)

    async def _settle(
        self,
        task_id: uuid.UUID,
        owner: _Owner,
        status: TaskStatus,
        result: dict[str, Any],
        *,
        never_started: bool = False,
    ) -> TaskChange:
        return await through_outage(
            lambda: self._store.finish_task(
                task_id, status, result, supervisor_id=owner.supervisor_id,
                daemon_id=self._daemon_id, epoch=owner.epoch, never_started=never_started,
            ),
            what="a task's status", task_id=str(task_id),
        )  # fmt: skip

    async def _run(
        self, task_id: uuid.UUID, owner: _Owner, command: CommandSpec, rerun: bool, tlog: Logger
    ) -> None:
        try:
            started = await through_outage(
                lambda: self._store.start_task(
                    task_id, supervisor_id=owner.supervisor_id, daemon_id=self._daemon_id,
                    epoch=owner.epoch, rerun=rerun,
                ),
                what="a task's start", task_id=str(task_id),
            )  # fmt: skip
            if not started.owned:
                self._fenced(owner, "start", tlog)
                return
            if not started.changed:
                # Started by an earlier owner, or finished from outside meanwhile.
                tlog.info("task.not_started", reason="the task is no longer pending")
                return
            tlog.info("task.started", command=command.command)
            timeout = command.timeout_s or self._timeout_s
            ids = {"TASK_ID": task_id, "SUPERVISOR_ID": owner.supervisor_id,
                   "CONTRACT_ID": owner.contract_id}  # fmt: skip
            env = child_environment({name: str(value) for name, value in ids.items()})
            code, tail = await _run_command(command.command, env, timeout)
            result: dict[str, Any]
            if code is None:
                status, result = TaskStatus.FAILED, {"error": f"timed out after {timeout} s"}
            else:
                status = TaskStatus.SUCCEEDED if code == 0 else TaskStatus.FAILED
                result = {"exitCode": code, "outputTail": tail}
            # Written even when the daemon is stopping (shielded) and through an outage;
            # a stop during an outage gives up after a while and leaves the task
            # `running`, which the next start calls interrupted.
            with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_WRITE_S):
                settled = await self._settle(task_id, owner, status, result)
                if not settled.owned:
                    self._fenced(owner, "outcome", tlog)
                    self._finished("stopped")
                    return
                tlog.info("task.finished", status=status.value, result=result)
            self._finished("timed_out" if code is None else status.value)
        except DaemonError as exc:
            tlog.error("task.runner_failed", error=str(exc))
            self._finished("error")
        except Exception as exc:  # noqa: BLE001 - one task's failure is its own, never the daemon's
            # OSError (the shell cannot start) or anything unforeseen: the task fails with
            # the reason rather than staying `running` with nobody left to finish it.
            reason = f"{type(exc).__name__}: {exc}"
            tlog.error("task.runner_failed", error=reason)
            self._finished("error")
            await self._fail(task_id, owner, f"the task could not run: {reason}", tlog)

    async def _refuse(
        self, task_id: uuid.UUID, owner: _Owner, exc: InvalidInputError, tlog: Logger
    ) -> None:
        tlog.warning("task.invalid_spec", error=str(exc))
        await self._fail(task_id, owner, f"invalid task spec: {exc}", tlog, never_started=True)

    async def _fail(
        self,
        task_id: uuid.UUID,
        owner: _Owner,
        error: str,
        tlog: Logger,
        *,
        never_started: bool = False,
    ) -> None:
        try:
            settled = await self._settle(
                task_id, owner, TaskStatus.FAILED, {"error": error}, never_started=never_started
            )
        except DaemonError as exc:
            tlog.error("task.runner_failed", error=str(exc))
            return
        if not settled.owned:
            self._fenced(owner, "outcome", tlog)


async def _run_command(command: str, env: dict[str, str], timeout: float) -> tuple[int | None, str]:  # noqa: ASYNC109 - the process's own deadline
    """Run `command` with `/bin/sh -c` in a process group of its own; its exit status
    (None when it ran out of `timeout`) and the tail of its output. Cancelled (its
    supervisor moved on, the daemon stops), the whole group is stopped."""
    process = await anyio.open_process(
        ["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    tail = bytearray()
    try:
        with anyio.move_on_after(timeout) as deadline:
            if process.stdout is not None:
                async for chunk in process.stdout:
                    tail += chunk
                    del tail[: max(0, len(tail) - OUTPUT_TAIL * 4)]
            await process.wait()
    finally:
        if process.returncode is None:
            await stop_group(process, grace_s=STOP_GRACE_S)
        with anyio.CancelScope(shield=True):
            await process.aclose()
    text = tail.decode(errors="replace")[-OUTPUT_TAIL:]
    return (None if deadline.cancelled_caught else process.returncode), text
