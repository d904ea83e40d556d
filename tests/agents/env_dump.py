"""A command agent that records what it was given: `env_dump.py AGENT_FILE TASK_FILE`.

It writes its own environment to AGENT_FILE (JSON), runs a command task that writes the
task's environment to TASK_FILE (`env -0`), waits for it and completes.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import sys
from typing import Any

ids = itertools.count(1)


def call(kind: str, **fields: Any) -> Any:
    request_id = next(ids)
    sys.stdout.write(json.dumps({"id": request_id, "type": kind, **fields}) + "\n")
    sys.stdout.flush()
    reply = json.loads(sys.stdin.readline())
    if reply["type"] == "error":
        raise SystemExit(f"request {kind} failed: {reply['error']}")
    return reply.get("value")


agent_file, task_file = sys.argv[1], sys.argv[2]
sys.stdin.readline()  # start
with open(agent_file, "w") as out:
    json.dump(dict(os.environ), out)
task = call("spawn_task", spec={"command": f"env -0 > {shlex.quote(task_file)}"})
statuses = call("wait_for_tasks", taskIds=[task])
call("complete" if statuses[task] == "succeeded" else "fail", errorMessage="task failed")
