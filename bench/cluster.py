"""Real daemon processes on one database, the agents that drive their supervisors, and
the checks that must hold whatever is done to them (bench/chaos.py, tests/acceptance/test_chaos.py).

A daemon's log goes to a file, never a pipe (a pipe nobody reads would stall it). The
agent is a shell script speaking the agent protocol: it appends numbered messages,
recording each one the daemon acknowledged, and now and then spawns a task that records
its id when it starts; the checks compare those records with the database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg

# The agent: reads the first message, then forever appends a message `{"agent": PID,
# "n": N}` (recording it in `acked` once the daemon answered ok: committed) and, every
# tenth time, spawns a task that records its id in `runs` when it starts. It exits when
# its daemon goes away (end of input, or a broken pipe).
AGENT = r"""
dir=$1
task_s=$2
read -r first || exit 0
n=0
while :; do
  n=$((n+1))
  if [ $((n % 10)) -eq 1 ]; then
    spec="{\"command\": \"echo \$TASK_ID >> $dir/runs; sleep $task_s\"}"
    echo "{\"id\": $n, \"type\": \"spawn_task\", \"awaited\": false, \"spec\": $spec}" || exit 0
    read -r reply || exit 0
  else
    message="{\"agent\": $$, \"n\": $n}"
    echo "{\"id\": $n, \"type\": \"append_message\", \"message\": $message}" || exit 0
    read -r reply || exit 0
    case "$reply" in
      *'"ok":true'*) echo "$SUPERVISOR_ID $$ $n" >> "$dir/acked" ;;
    esac
  fi
  sleep 0.3
done
"""
UNFINISHED = "state NOT IN ('completed', 'failed', 'blocked')"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _processes() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children."""
    children: dict[int, list[int]] = {}
    for other in _processes():
        found = _stat(other)
        if found is not None:
            children.setdefault(found[1], []).append(other)
    order: list[int] = []
    todo = list(children.get(pid, ()))
    while todo:
        child = todo.pop(0)
        order.append(child)
        todo.extend(children.get(child, ()))
    return order


@dataclasses.dataclass(frozen=True, slots=True)
class AgentProcess:
    pid: int
    parent: int
    supervisor_id: uuid.UUID
    live: bool  # neither paused (SIGSTOP) nor a zombie


def agent_processes(script: Path) -> list[AgentProcess]:
    """The running copies of the chaos agent, with the supervisor each drives."""
    found = []
    marker = str(script).encode()
    for pid in _processes():
        try:
            if marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        stat = _stat(pid)
        sid = next((v[14:] for v in environ if v.startswith(b"SUPERVISOR_ID=")), None)
        if stat is None or sid is None:
            continue
        found.append(AgentProcess(pid, stat[1], uuid.UUID(sid.decode()), stat[0] not in "TtZX"))
    return found


class DaemonProcess:
    """One `supervisor-daemon run`, its JSON log in a file (never a pipe: a pipe nobody
    reads would stall the daemon), and what was done to it."""

    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "log.jsonl"
        self.env = {**env, "SUPERVISOR_DAEMON_DAEMON_ID": name,
                    "SUPERVISOR_DAEMON_DATA_DIR": str(self.dir)}  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused: list[int] = []  # the pids stopped with SIGSTOP, the daemon first
        self._read = 0
        self.lines: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"daemon {self.name} was never started")
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def running(self) -> bool:
        return self.alive and not self.paused

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run"], env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: no drain, no handoff. What it had paused is resumed, to exit on its
        own (agents see the end of their input; tasks run to their end)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        for pid in self.paused[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused = []

    def terminate(self, timeout_s: float = 60) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def pause(self, *, with_children: bool) -> None:
        """SIGSTOP the daemon (first) and, as a paused machine would, what it started."""
        pids = [self.pid, *(descendants(self.pid) if with_children else ())]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.paused = pids

    def resume(self) -> None:
        for pid in self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused = []

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The log lines written so far (of one event, when named)."""
        with self.log_path.open("rb") as log:
            log.seek(self._read)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self._read += end
        for raw in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict):
                    self.lines.append(line)
        return [line for line in self.lines if name is None or line.get("event") == name]


class Cluster:
    """Daemons on one database, their agents, and the checks."""

    def __init__(
        self,
        dsn: str,
        root: Path,
        *,
        daemons: int = 3,
        lease_s: float = 2.0,
        claim_interval_s: float = 0.2,
        task_s: float = 1.0,
    ) -> None:
        self.dsn = dsn
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.lease_s = lease_s
        self.script = root / "agent.sh"
        self.script.write_text(AGENT)
        self.agent = f"cmd:/bin/sh {self.script} {root} {task_s}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_DAEMON_")}
        env.update({
            "SUPERVISOR_DAEMON_DATABASE_URL": dsn,
            "SUPERVISOR_DAEMON_LOG_FORMAT": "json",
            "SUPERVISOR_DAEMON_LEASE_S": str(lease_s),
            "SUPERVISOR_DAEMON_CLAIM_INTERVAL_S": str(claim_interval_s),
            "SUPERVISOR_DAEMON_HEARTBEAT_INTERVAL_S": "1",
            "SUPERVISOR_DAEMON_POLL_INTERVAL_S": "0.5",
            "SUPERVISOR_DAEMON_POOL_MIN_SIZE": "1",
            "SUPERVISOR_DAEMON_POOL_MAX_SIZE": "4",
            "SUPERVISOR_DAEMON_DRAIN_TIMEOUT_S": "2",
            # Every takeover is a restoration: the crash-loop guard would park them all.
            "SUPERVISOR_DAEMON_CRASH_LOOP_MAX_RESTORATIONS": "1000000",
        })  # fmt: skip
        self.daemons = {f"d{n}": DaemonProcess(f"d{n}", root, env) for n in range(1, daemons + 1)}

    def by_pid(self) -> dict[int, DaemonProcess]:
        return {d.pid: d for d in self.daemons.values() if d.alive}

    def start_all(self) -> None:
        for daemon in self.daemons.values():
            daemon.start()

    def close(self) -> None:
        for daemon in self.daemons.values():
            if daemon.alive:
                daemon.kill()
        # Paused or orphaned agents and tasks of this run: nothing may outlive it.
        for process in agent_processes(self.script):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)

    async def registered(self, pool: asyncpg.Pool[Any], names: list[str]) -> bool:
        try:
            rows = await pool.fetch(
                "SELECT id FROM daemons WHERE stopped_at IS NULL AND lease_expires_at > now()"
            )
        except asyncpg.UndefinedTableError:
            return False  # not migrated yet: the first daemon does it
        return set(names) <= {row["id"] for row in rows}

    async def create_supervisors(self, pool: asyncpg.Pool[Any], count: int) -> list[uuid.UUID]:
        ids = [uuid.uuid4() for _ in range(count)]
        await pool.executemany(
            "INSERT INTO supervisor_states (id, contract_id, task_id, phase, agent)"
            " VALUES ($1, $2, $3, 'implement', $4)",
            [(sid, uuid.uuid4(), uuid.uuid4(), self.agent) for sid in ids],
        )
        return ids

    async def owners(self, pool: asyncpg.Pool[Any]) -> dict[uuid.UUID, str | None]:
        rows = await pool.fetch(
            f"SELECT id, owner_daemon_id FROM supervisor_states WHERE {UNFINISHED}"
        )
        return {row["id"]: row["owner_daemon_id"] for row in rows}

    async def unsettled(self, pool: asyncpg.Pool[Any]) -> list[str]:
        """Why the cluster is not settled yet (nothing: every supervisor has a running
        owner, which runs its one live agent, and no other agent of it lives)."""
        owners = await self.owners(pool)
        by_pid = self.by_pid()
        agents: dict[uuid.UUID, list[AgentProcess]] = {}
        for process in agent_processes(self.script):
            if process.live:
                agents.setdefault(process.supervisor_id, []).append(process)
        problems = []
        for sid, owner in owners.items():
            daemon = self.daemons.get(owner or "")
            if daemon is None or not daemon.running:
                problems.append(f"{sid} is owned by {owner}, not a running daemon")
                continue
            live = agents.pop(sid, [])
            if [p.parent for p in live] != [daemon.pid]:
                problems.append(f"{sid} (owner {owner}) has live agents {live}")
        for sid, live in agents.items():
            parents = [by_pid[p.parent].name if p.parent in by_pid else p.parent for p in live]
            problems.append(f"{sid} is not unfinished-and-owned but has live agents of {parents}")
        return problems

    async def settle(self, pool: asyncpg.Pool[Any], deadline_s: float) -> float:
        """Wait until settled; how long it took."""
        started = time.monotonic()
        problems: list[str] = []
        while time.monotonic() - started < deadline_s:
            problems = await self.unsettled(pool)
            if not problems:
                return time.monotonic() - started
            await anyio.sleep(0.1)
        raise AssertionError(f"not settled after {deadline_s} s: {problems}")

    async def violations(self, pool: asyncpg.Pool[Any]) -> list[str]:
        """What must never happen, whatever was done to the daemons."""
        found = []
        live: Counter[uuid.UUID] = Counter(
            p.supervisor_id for p in agent_processes(self.script) if p.live
        )
        found += [f"{sid} has {n} live agent processes" for sid, n in live.items() if n > 1]
        acked: dict[str, set[tuple[int, int]]] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in (self.root / "acked").read_text().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    acked.setdefault(parts[0], set()).add((int(parts[1]), int(parts[2])))
        rows = await pool.fetch("SELECT id, conversation_history FROM supervisor_states")
        for row in rows:
            history = json.loads(row[1]) if isinstance(row[1], str) else row[1]
            present = {(m.get("agent"), m.get("n")) for m in history if isinstance(m, dict)}
            missing = acked.get(str(row[0]), set()) - present
            found += [f"{row[0]}: acknowledged message {m} is missing" for m in sorted(missing)]
        with contextlib.suppress(FileNotFoundError):
            runs = Counter((self.root / "runs").read_text().split())
            found += [f"task {t} ran {n} times" for t, n in runs.items() if n > 1]
        started = await pool.fetch("SELECT id, runs FROM supervisor_tasks WHERE runs > 1")
        found += [f"task {row['id']} was started {row['runs']} times" for row in started]
        return found

    def acknowledged(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            return len((self.root / "acked").read_text().splitlines())
        return 0


async def wait_for(predicate: Any, deadline_s: float, what: str) -> float:
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > deadline_s:
            raise AssertionError(f"{what}: not within {deadline_s} s")
        await anyio.sleep(0.05)
    return time.monotonic() - started
