"""Chaos: daemons on one PostgreSQL, killed, paused and resumed at random, checked each round.

Real processes: `supervisor-daemon run` three times (by default) on one database, each
supervisor driven by a command agent (a small shell script speaking the agent protocol)
that appends numbered messages and now and then spawns a task. Each round does one
thing to one daemon: SIGKILL it, SIGTERM it (a handoff), pause it with everything it
started (SIGSTOP to the daemon and its agents and tasks: a paused VM, a closed lid), or
resume it (SIGCONT), or start a dead one again; then it waits a random part of a lease,
lets things settle, and checks:

- every unfinished supervisor is owned by a running daemon and driven by exactly one
  live agent process, started by its owner: none lost, none driven twice;
- every message an agent was told is committed (`ok` in the reply) is in the database;
- every task ran at most once (each task appends its id to a file when it starts, and
  the database counts its starts).

Usage (from the repository root):
    python -m bench.chaos [--rounds 200] [--daemons 3] [--supervisors 9] [--lease-s 2]
                          [--max-seconds 1800]
It prints one JSON object: rounds, violations (there must be none), takeover times
(from a SIGKILL, and from a pause past the lease), claim-round and restoration times
read from the daemons' logs. tests/test_chaos.py runs a short version in `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from bench._setup import fresh_database, machine, open_pool, run

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


@dataclasses.dataclass
class Figures:
    rounds: int = 0
    actions: Counter[str] = dataclasses.field(default_factory=Counter)
    violations: list[str] = dataclasses.field(default_factory=list)
    settle_s: list[float] = dataclasses.field(default_factory=list)
    takeover_after_kill_s: list[float] = dataclasses.field(default_factory=list)
    takeover_after_pause_s: list[float] = dataclasses.field(default_factory=list)


async def _taken_over(
    cluster: Cluster, pool: asyncpg.Pool[Any], name: str, before: dict[uuid.UUID, str | None]
) -> bool:
    owners = await cluster.owners(pool)
    return all(owners.get(sid) not in (None, name) for sid, o in before.items() if o == name)


async def chaos_round(
    cluster: Cluster, pool: asyncpg.Pool[Any], rng: random.Random, figures: Figures
) -> str:
    """One action on one daemon, a random wait, settle, check. The action, described."""
    names = list(cluster.daemons)
    running = [n for n in names if cluster.daemons[n].running]
    name = rng.choice(names)
    daemon = cluster.daemons[name]
    owners = await cluster.owners(pool)
    lease = cluster.lease_s
    if not daemon.alive:
        daemon.start()
        action = "start"
    elif daemon.paused:
        daemon.resume()
        action = "resume"
    elif running == [name]:  # the last one running stays: start or resume another
        others = [cluster.daemons[n] for n in names if n != name]
        other = rng.choice(others)
        if other.alive:
            other.resume()
            action = "resume"
        else:
            other.start()
            action = "start"
        name = other.name
    else:
        action = rng.choice(["kill", "kill", "pause", "pause", "terminate"])
        started = time.monotonic()
        if action == "kill":
            daemon.kill()
        elif action == "pause":
            daemon.pause(with_children=True)
        else:
            daemon.terminate()
        if action in ("kill", "pause") and any(o == name for o in owners.values()):
            await wait_for(lambda: _taken_over(cluster, pool, name, owners),
                           lease * 3 + 10, f"takeover from {name}")  # fmt: skip
            key = "takeover_after_kill_s" if action == "kill" else "takeover_after_pause_s"
            getattr(figures, key).append(time.monotonic() - started)
    figures.actions[action] += 1
    await anyio.sleep(rng.uniform(0, lease * 1.5))
    figures.settle_s.append(await cluster.settle(pool, lease * 3 + 20))
    found = await cluster.violations(pool)
    figures.violations += [f"round {figures.rounds + 1} ({action} {name}): {v}" for v in found]
    figures.rounds += 1
    return f"{action} {name}"


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(values),
        "median_s": round(statistics.median(ordered), 2),
        "p90_s": round(ordered[math.ceil(0.9 * len(ordered)) - 1], 2),
        "max_s": round(ordered[-1], 2),
    }


def log_figures(cluster: Cluster) -> dict[str, Any]:
    """Claim rounds and restorations as the daemons logged them."""
    elapsed = [
        float(line["elapsed_s"])
        for daemon in cluster.daemons.values()
        for line in daemon.events("restoration.summary")
        if line.get("supervisors")
    ]
    counts = Counter(
        line["event"]
        for daemon in cluster.daemons.values()
        for line in daemon.events()
        if line.get("event") in ("daemon.lease_lost", "daemon.lease_regained",
                                 "supervisor.dropped", "task.fenced", "task.interrupted",
                                 "queue.event_rejected", "daemon.released")
    )  # fmt: skip
    return {"restoration_s": _summary(elapsed), "events": dict(counts)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    async with fresh_database() as dsn:
        root = Path(args.dir or tempfile.mkdtemp(prefix="sd-chaos-"))
        pool = await open_pool(dsn, 2)
        cluster = Cluster(dsn, root, daemons=args.daemons, lease_s=args.lease_s)
        figures = Figures()
        started = time.monotonic()
        try:
            cluster.start_all()
            await wait_for(lambda: cluster.registered(pool, list(cluster.daemons)), 60,
                           "the daemons register")  # fmt: skip
            await cluster.create_supervisors(pool, args.supervisors)
            await cluster.settle(pool, 60)
            while figures.rounds < args.rounds and time.monotonic() - started < args.max_seconds:
                done = await chaos_round(cluster, pool, rng, figures)
                if args.verbose:
                    print(f"round {figures.rounds}: {done}", file=sys.stderr)
        finally:
            cluster.close()
            await pool.close()
    return {
        "benchmark": "chaos", "machine": machine(), "daemons": args.daemons,
        "supervisors": args.supervisors, "lease_s": args.lease_s, "rounds": figures.rounds,
        "seconds": round(time.monotonic() - started, 1), "actions": dict(figures.actions),
        "violations": figures.violations[:50], "violation_count": len(figures.violations),
        "acknowledged_messages": cluster.acknowledged(),
        "takeover_after_kill": _summary(figures.takeover_after_kill_s),
        "takeover_after_pause": _summary(figures.takeover_after_pause_s),
        "settle": _summary(figures.settle_s), **log_figures(cluster),
    }  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--supervisors", type=int, default=9)
    parser.add_argument("--lease-s", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", default=None, help="where the daemons' logs go")
    parser.add_argument("--verbose", action="store_true")
    run(main, parser.parse_args())
