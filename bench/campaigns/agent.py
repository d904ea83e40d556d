"""The command agent of the reliability campaigns: JSON lines on stdin/stdout
(docs/agent-protocol.md), standard library only, so that a hundred of them start fast.

Every reply it gets is written at once to an append-only ledger, one JSON line per
acknowledgement, flushed line by line, so that what the daemon acknowledged survives
the daemon's death (the file is the agent's, not the daemon's). A ledger line is
`{"k": kind, "m": marker, "t": time, "d": daemon pid, "a": agent pid, ...}`; each
request that changes the supervisor carries a marker unique to this agent process,
which the journal must then hold exactly once.

`agent.py LEDGER_DIR load INTERVAL_MS RUNS_FILE`: a steady mixed load, a request every
INTERVAL_MS: activity reports and messages, and every tenth request a phase change, a
command task (which appends its TASK_ID to RUNS_FILE, so a task that ran twice shows)
or a question. On a restoration it first waits for the answers of its pending
questions and for its awaited tasks.

`agent.py LEDGER_DIR fuzz LINES_FILE`: sends each line of LINES_FILE (any bytes: the
bad-input campaign writes them) and waits for its reply before the next one; the
ledger gets one line per reply. Blank lines get no reply and are never sent. Started
again (the daemon restarted), it goes on after the last line it had a reply to.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, BinaryIO, TextIO

PHASES = ("plan", "implement", "review")


class Agent:
    def __init__(self, ledger_dir: str, first: dict[str, Any]) -> None:
        self.supervisor_id = str(first["supervisorId"])
        path = os.path.join(ledger_dir, f"{self.supervisor_id}.jsonl")
        # Line-buffered, append-only: each acknowledgement is one write(2) as it arrives.
        self.ledger: TextIO = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self.run = os.urandom(4).hex()
        self.count = 0
        self.daemon = os.getppid()
        self.pid = os.getpid()
        self.out: BinaryIO = sys.stdout.buffer
        self.ids = 0

    def record(self, kind: str, **fields: Any) -> None:
        line = {"k": kind, "t": time.time(), "d": self.daemon, "a": self.pid, **fields}
        self.ledger.write(json.dumps(line) + "\n")

    def marker(self) -> str:
        self.count += 1
        return f"{self.run}.{self.count}"

    def send_raw(self, line: bytes) -> None:
        self.out.write(line + b"\n")
        self.out.flush()

    def call(self, kind: str, **fields: Any) -> tuple[bool, Any]:
        """(True, value) for a result, (False, error) for an error reply."""
        self.ids += 1
        request_id = self.ids
        self.send_raw(json.dumps({"id": request_id, "type": kind, **fields}).encode())
        while True:
            reply = receive()
            if reply.get("id") == request_id:
                if reply.get("type") == "error":
                    return False, reply.get("error")
                return True, reply.get("value")


def receive() -> dict[str, Any]:
    line = sys.stdin.buffer.readline()
    if not line:  # the daemon is gone (killed, or it stopped us): so are we
        sys.exit(0)
    value = json.loads(line)
    return value if isinstance(value, dict) else {}


def load(agent: Agent, first: dict[str, Any], interval_s: float, runs_file: str) -> None:
    for question in first.get("pendingQuestions") or []:
        ok, value = agent.call("await_answer", questionId=question["id"])
        agent.record("answer" if ok else "error", q=question["id"], v=value)
    if first.get("awaitedTaskIds"):
        agent.call("wait_for_tasks")
    task_command = f"printf '%s\\n' \"$TASK_ID\" >> '{runs_file}'"
    n = 0
    while True:
        n += 1
        mark = agent.marker()
        step = n % 10
        if step == 3:
            ok, value = agent.call("change_phase", phase=PHASES[(n // 10) % len(PHASES)])
            kind = "phase"
        elif step == 6:
            ok, value = agent.call("spawn_task", spec={"command": task_command, "mark": mark})
            kind = "task"
            if ok:
                agent.record(kind, m=mark, v=value)
                ok, value = agent.call("wait_for_tasks", taskIds=[value])
                kind = "waited"
        elif step == 9:
            ok, value = agent.call("ask", question=mark, choices=["yes", "no"])
            kind = "ask"
        elif step % 2:
            ok, value = agent.call("append_message", message={"m": mark})
            kind = "message"
        else:
            ok, value = agent.call("report_activity", activity=mark)
            kind = "activity"
        agent.record(kind if ok else "error", m=mark, v=value if kind != "waited" else None)
        if step == 5:
            agent.call("report_progress", progress=n % 101)  # coalesced: not a save point
        time.sleep(interval_s if ok else max(interval_s, 0.2))


def _replied(ledger_dir: str, supervisor_id: str) -> int:
    """The last line a previous process of this agent got a reply to (-1: none)."""
    last = -1
    with open(os.path.join(ledger_dir, f"{supervisor_id}.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and '"k": "fuzz"' in line:
                last = max(last, int(json.loads(line)["n"]))
    return last


def fuzz(agent: Agent, lines_file: str, ledger_dir: str) -> None:
    # Started again (the daemon restarted): go on after the last line replied to.
    done = _replied(ledger_dir, agent.supervisor_id)
    with open(lines_file, "rb") as lines:
        for n, line in enumerate(lines.read().split(b"\n")):
            if n <= done or not line.strip():
                continue
            agent.send_raw(line)
            reply = receive()
            agent.record("fuzz", n=n, r=str(reply.get("type")))
    agent.record("fuzz_done")
    while True:  # stay until the daemon stops: an agent that exits is started again
        receive()


def main() -> None:
    ledger_dir, mode = sys.argv[1], sys.argv[2]
    first = receive()
    agent = Agent(ledger_dir, first)
    agent.record("start", first=first.get("type"),
                 pq=[q.get("id") for q in first.get("pendingQuestions") or []])  # fmt: skip
    if mode == "load":
        load(agent, first, float(sys.argv[3]) / 1000, sys.argv[4])
    elif mode == "fuzz":
        fuzz(agent, sys.argv[3], ledger_dir)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
