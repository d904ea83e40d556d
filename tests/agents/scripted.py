"""A command agent for the tests: JSON lines on stdin/stdout (docs/agent-protocol.md).

`scripted.py work`: sends garbage, then walks a contract and completes.
`scripted.py die-once`: on `start` reports its pid and waits to be killed; on
`restoration` records the message it got and completes.
`scripted.py bad-spec`: sends a spawn_task whose spec the daemon must refuse, records
the reply it got, then runs a good task and completes.
`scripted.py ask`: asks one question and completes with the answer as its activity.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from typing import Any

ids = itertools.count(1)


def send(message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def receive() -> Any:
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    return json.loads(line)


def call(kind: str, **fields: Any) -> Any:
    request_id = next(ids)
    send({"id": request_id, "type": kind, **fields})
    while True:
        reply = receive()
        if reply.get("id") == request_id:
            if reply["type"] == "error":
                raise SystemExit(f"request {kind} failed: {reply['error']}")
            return reply.get("value")
        errors.append(reply)


errors: list[Any] = []
first = receive()
mode = sys.argv[1]
if mode == "work":
    sys.stdout.write("this is not json\n")
    send({"id": "t1", "type": "teleport"})
    send([1, 2, 3])
    sys.stdout.write("x" * (1024 * 1024 + 10) + "\n")
    sys.stdout.flush()
    call("change_phase", phase="implement")
    task = call("spawn_task", spec={"command": "echo from the agent"})
    statuses = call("wait_for_tasks", taskIds=[task])
    call("report_progress", progress=50, activity="halfway")
    call(
        "append_message",
        message={"errorsSeen": len(errors), "first": first["type"], "task": statuses[task]},
    )
    answer = call(
        "ask", question="Ship it?", choices=["yes", "no"], questionType="phase_confirmation"
    )
    call("report_activity", activity=f"answer was {answer}")
    call("complete")
elif mode == "die-once":
    if first["type"] == "start":
        call("report_activity", activity=f"pid {os.getpid()}")
        receive()  # wait to be killed
    else:
        call("append_message", message={"restoration": first["context"]})
        call("complete")
elif mode == "bad-spec":
    send({"id": "bad", "type": "spawn_task", "spec": {"command": "true", "timeoutS": "x"}})
    reply = receive()
    call("append_message", message={"reply": reply})
    task = call("spawn_task", spec={"command": "echo fine"})
    call("wait_for_tasks", taskIds=[task])
    call("complete")
elif mode == "ask":
    answer = call("ask", question="Still there?", choices=["yes", "no"])
    call("report_activity", activity=f"answer was {answer}")
    call("complete")
