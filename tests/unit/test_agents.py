"""Resolving an agent spec: aliases, `module:callable`, command agents."""

from __future__ import annotations

from datetime import timedelta

import pytest

from daemon import agents
from daemon.agents.command import CommandAgent
from daemon.restoration.records import CrashLoopGuard


def test_a_command_agent_is_restarted_under_the_daemons_crash_loop_guard() -> None:
    guard = CrashLoopGuard(max_restorations=2, window=timedelta(seconds=30))
    agent = agents.resolve("cmd:python3 -m my_agent --fast", guard=guard)
    assert isinstance(agent, CommandAgent)
    assert agent.command == ["python3", "-m", "my_agent", "--fast"]
    assert agent.guard is guard


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("cmd:", "names no command"),
        ("nothing", "is not 'module:callable'"),
        ("no.such.module:run", "cannot be imported"),
        ("daemon.agents.demo:missing", "has no callable"),
    ],
)
def test_a_spec_that_names_no_agent_says_why(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        agents.resolve(spec)
