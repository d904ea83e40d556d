"""What drives a supervisor: the agent API, command agents, the demo, and resolving a spec.

An agent is an async callable taking a `daemon.agents.supervisor.Supervisor` (the
in-process API); `daemon.agents.command` serves the same API to a process over JSON
lines; `daemon.agents.demo` is the agent that ships with the daemon. A supervisor's
`agent` column names it as `module:callable`, `cmd:COMMAND`, or a short alias.
"""

from __future__ import annotations

import importlib
import shlex
from collections.abc import Awaitable, Callable

from daemon.agents.command import CommandAgent
from daemon.agents.supervisor import Supervisor
from daemon.restoration.records import CrashLoopGuard

Agent = Callable[[Supervisor], Awaitable[None]]
ALIASES = {"demo": "daemon.agents.demo:run"}


def resolve(spec: str, *, guard: CrashLoopGuard | None = None) -> Agent:
    """The callable `spec` names; ValueError with a readable reason otherwise.

    `cmd:COMMAND ARGS...` is a command agent (docs/agent-protocol.md): one process per
    supervisor, speaking JSON lines on stdin/stdout.
    """
    if spec.startswith("cmd:"):
        argv = shlex.split(spec[4:])
        if not argv:
            raise ValueError("agent 'cmd:' names no command")
        return CommandAgent(argv, guard)
    path = ALIASES.get(spec, spec)
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"agent {spec!r} is not 'module:callable' nor a known alias")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"agent module {module_name!r} cannot be imported: {exc}") from None
    agent = getattr(module, attribute, None)
    if not callable(agent):
        raise ValueError(f"{module_name} has no callable {attribute!r}")
    return agent  # type: ignore[no-any-return]
