"""Runs the agents of the supervisors this daemon owns, and their heartbeats.

Each agent runs in the host's task group. An agent that raises fails its supervisor
(with the error as its message) and nothing else; a database outage that reaches it
runs it again once the database is back; cancellation (the daemon stopping) passes
through. Heartbeats are sent for every running supervisor on an interval.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import asyncpg

from daemon import agents
from daemon.errors import TransientDatabaseError
from daemon.logs import get_logger
from daemon.models import PendingQuestion, SupervisorRestorationContext
from daemon.queue import EventRejectedError, PersistenceQueue, QueueClosedError
from daemon.runtime.delivery import Delivery
from daemon.runtime.hub import Hub
from daemon.runtime.outage import sleep_out
from daemon.runtime.supervisor import Supervisor
from daemon.runtime.tasks import TaskRunner
from daemon.store import WorkStore

log = get_logger()


class Host:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        daemon_id: str,
        *,
        queue: PersistenceQueue,
        hub: Hub,
        runner: TaskRunner,
        delivery: Delivery,
        tg: anyio.abc.TaskGroup,
        heartbeat_s: float = 5.0,
    ) -> None:
        self._pool = pool
        self._daemon_id = daemon_id
        self._queue = queue
        self._hub = hub
        self._runner = runner
        self.delivery = delivery
        self._tg = tg
        self._heartbeat_s = heartbeat_s
        self.running: dict[uuid.UUID, Supervisor] = {}

    def contract_of(self, supervisor_id: uuid.UUID) -> uuid.UUID | None:
        """The contract of a supervisor running here (None otherwise), for log lines."""
        sup = self.running.get(supervisor_id)
        return sup.state.contract_id if sup is not None else None

    async def _deliver(self, supervisor_id: uuid.UUID, question: PendingQuestion) -> None:
        await self.delivery.deliver(
            supervisor_id, question, contract_id=self.contract_of(supervisor_id)
        )

    async def start(
        self,
        contexts: dict[uuid.UUID, SupervisorRestorationContext],
        supervisor_ids: Sequence[uuid.UUID] | None = None,
    ) -> int:
        """Start an agent for every owned supervisor (of `supervisor_ids`, when given:
        the ones just claimed) that names one and is not running yet; how many started."""
        started = 0
        owned = WorkStore(self._pool).owned_supervisors(self._daemon_id, supervisor_ids)
        for state in await owned:
            if state.id in self.running:
                continue
            if not state.agent:
                log.info("supervisor.no_agent", supervisor_id=str(state.id),
                         contract_id=str(state.contract_id))  # fmt: skip
                continue
            sup = Supervisor(
                state, queue=self._queue, hub=self._hub, runner=self._runner,
                deliver=self._deliver, restoration=contexts.get(state.id),
            )  # fmt: skip
            self.running[sup.id] = sup
            self._tg.start_soon(self._run_agent, sup, name=f"agent {sup.id}")
            started += 1
        return started

    async def _run_agent(self, sup: Supervisor) -> None:
        slog = log.bind(supervisor_id=str(sup.id), contract_id=str(sup.state.contract_id))
        spec = str(sup.state.agent)
        try:
            agent = agents.resolve(spec)
            slog.info("agent.started", agent=spec)
            await self._drive(agent, sup, slog)
            slog.info("agent.finished", state=sup.state.state.value)
        except QueueClosedError:
            pass  # the daemon is stopping: the supervisor resumes at the next start
        except Exception as exc:  # noqa: BLE001 - an agent's failure is its supervisor's alone
            slog.error("agent.crashed", agent=spec, error=f"{type(exc).__name__}: {exc}")
            # Stopping (resumes at next start), or no longer ours (another daemon took it
            # over: the fencing epoch refuses the write): either way, not this daemon's crash.
            with contextlib.suppress(QueueClosedError, EventRejectedError):
                await sup.fail(f"agent {spec} failed: {type(exc).__name__}: {exc}")
        finally:
            self.running.pop(sup.id, None)

    @staticmethod
    async def _drive(agent: agents.Agent, sup: Supervisor, slog: Any) -> None:
        """Run `agent`; when a database outage interrupts it, run it again once the
        database answers. An outage is no verdict on the supervisor: the agent resumes
        from the supervisor's saved state, as after a restoration."""
        wait = 0.5
        while True:
            try:
                await agent(sup)
                return
            except TransientDatabaseError as exc:
                slog.warning("agent.interrupted", error=str(exc), retry_in_s=wait)
                await sleep_out(wait)  # or less: until the database answers again
                wait = min(wait * 2, 30.0)

    async def heartbeats(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat_s)
            for sup in list(self.running.values()):
                try:
                    sup.heartbeat()
                except QueueClosedError:
                    return
