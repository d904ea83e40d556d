"""Runs the agents of the supervisors this daemon owns, and their heartbeats.

Each agent runs in the host's task group, in a cancel scope of its own. An agent that
raises fails its supervisor (with the error as its message) and nothing else; a
database outage that reaches it runs it again once the database is back; cancellation
(the daemon stopping) passes through. Heartbeats are sent for every running supervisor
on an interval.

A supervisor this daemon learns it lost (a write refused under its epoch, a fenced
task write, a lease that lapsed) is dropped at once: its agent is cancelled (a command
agent's process group stopped), its tasks stopped, its queued events withdrawn, and it
is never started again under that epoch; only a new claim (a new epoch) brings it back.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence

import anyio
import anyio.abc

from daemon import agents
from daemon.agents.supervisor import Supervisor
from daemon.db.outage import sleep_out
from daemon.errors import TransientDatabaseError
from daemon.logs import Logger, get_logger
from daemon.models import PendingQuestion, SupervisorRestorationContext
from daemon.persistence.queue import (
    EventRejectedError,
    PersistenceQueue,
    QueueClosedError,
    SupervisorLostError,
)
from daemon.restoration.records import CrashLoopGuard
from daemon.store import Store, WorkStore
from daemon.work.delivery import Delivery
from daemon.work.hub import Hub
from daemon.work.tasks import TaskRunner

log = get_logger()


class Host:
    def __init__(
        self,
        store: Store,
        work: WorkStore,
        daemon_id: str,
        *,
        queue: PersistenceQueue,
        hub: Hub,
        runner: TaskRunner,
        delivery: Delivery,
        tg: anyio.abc.TaskGroup,
        heartbeat_s: float = 5.0,
        history_tail: int = 50,
        guard: CrashLoopGuard | None = None,
    ) -> None:
        self._reads = store  # what agents read back: older history, spawned tasks
        self._guard = guard or CrashLoopGuard()  # how often a command agent is restarted
        self._work = work
        self._daemon_id = daemon_id
        self._queue = queue
        self._hub = hub
        self._runner = runner
        self.delivery = delivery
        self._tg = tg
        self._heartbeat_s = heartbeat_s
        self.running: dict[uuid.UUID, Supervisor] = {}
        self._history_tail = history_tail
        self._scopes: dict[uuid.UUID, anyio.CancelScope] = {}  # each running agent's
        # Grows each time every supervisor is dropped (the lease lapsed): a start that
        # began before must not start agents after.
        self._generation = 0
        self._lost: set[tuple[uuid.UUID, int]] = set()  # never started again

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
        generation = self._generation
        owned = await self._work.owned_supervisors(self._daemon_id, supervisor_ids)
        if generation != self._generation:
            return 0  # the lease lapsed meanwhile: these were claimed under the old one
        for state in owned:
            current = self.running.get(state.id)
            if current is not None:
                if current.epoch == state.owner_epoch:
                    continue
                # Claimed again (a newer epoch): the agent of the old one goes first.
                self.drop(state.id, current.epoch, reason="claimed again under a new epoch")
            if (state.id, state.owner_epoch) in self._lost:
                continue  # epochs only grow: one this daemon lost is never its own again
            if not state.agent:
                log.info("supervisor.no_agent", supervisor_id=str(state.id),
                         contract_id=str(state.contract_id))  # fmt: skip
                continue
            sup = Supervisor(
                state, queue=self._queue, hub=self._hub, runner=self._runner,
                deliver=self._deliver, restoration=contexts.get(state.id),
                reads=self._reads, history_tail=self._history_tail,
            )  # fmt: skip
            self.running[sup.id] = sup
            self._scopes[sup.id] = scope = anyio.CancelScope()
            self._tg.start_soon(self._run_agent, sup, scope, name=f"agent {sup.id}")
            started += 1
        return started

    def drop(self, supervisor_id: uuid.UUID, epoch: int | None, *, reason: str) -> bool:
        """Stop driving a supervisor this daemon lost under `epoch` (None: whichever
        epoch it runs under): cancel its agent, stop its tasks, withdraw its queued
        events. False when no agent of it runs here under that epoch."""
        sup = self.running.get(supervisor_id)
        if sup is None or (epoch is not None and sup.epoch != epoch):
            if epoch is not None:  # tasks can outlive their agent (not awaited)
                self._runner.stop(supervisor_id, epoch)
            return False
        sup.lost = True
        self._lost.add((supervisor_id, sup.epoch))
        del self.running[supervisor_id]
        self._scopes.pop(supervisor_id).cancel()
        tasks = self._runner.stop(supervisor_id, sup.epoch)
        withdrawn = self._queue.withdraw([(supervisor_id, sup.epoch)])
        log.warning("supervisor.dropped", supervisor_id=str(supervisor_id),
                    contract_id=str(sup.state.contract_id), epoch=sup.epoch, reason=reason,
                    tasks_stopped=tasks, events_withdrawn=withdrawn)  # fmt: skip
        return True

    def drop_all(self, *, reason: str) -> int:
        """Drop every supervisor (the lease can no longer be counted on), and every task
        still running without its agent; agents start again only after a new claim."""
        self._generation += 1
        dropped = sum(self.drop(sid, None, reason=reason) for sid in list(self.running))
        self._runner.stop_all()
        return dropped

    async def _run_agent(self, sup: Supervisor, scope: anyio.CancelScope) -> None:
        slog = log.bind(supervisor_id=str(sup.id), contract_id=str(sup.state.contract_id))
        spec = str(sup.state.agent)
        try:
            with scope:
                agent = agents.resolve(spec, guard=self._guard)
                slog.info("agent.started", agent=spec)
                await self._drive(agent, sup, slog)
                slog.info("agent.finished", state=sup.state.state.value)
        except QueueClosedError:
            pass  # the daemon is stopping: the supervisor resumes at the next start
        except SupervisorLostError as exc:
            # A write under this epoch was refused: another daemon owns it now.
            self.drop(sup.id, sup.epoch, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - an agent's failure is its supervisor's alone
            if sup.lost:  # it raised because it lost the supervisor: not its failure
                return
            slog.error("agent.crashed", agent=spec, error=f"{type(exc).__name__}: {exc}")
            # Stopping (resumes at next start), or no longer ours (another daemon took it
            # over: the fencing epoch refuses the write): either way, not this daemon's crash.
            with contextlib.suppress(QueueClosedError, EventRejectedError):
                await sup.fail(f"agent {spec} failed: {type(exc).__name__}: {exc}")
        finally:
            if self.running.get(sup.id) is sup:
                del self.running[sup.id]
                self._scopes.pop(sup.id, None)

    @staticmethod
    async def _drive(agent: agents.Agent, sup: Supervisor, slog: Logger) -> None:
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
                except SupervisorLostError:
                    continue  # dropped meanwhile
                except QueueClosedError:
                    return
