"""The environment of the processes the daemon starts: command agents and task commands.

They get what a program needs to run (PATH, HOME, the user, the locale, the time zone,
TMPDIR, TERM), the ids saying whom they work for (SUPERVISOR_ID, CONTRACT_ID, TASK_ID),
and the variables an operator lets through by name (`SUPERVISOR_DAEMON_AGENT_ENV`);
nothing else. The daemon's own settings (`SUPERVISOR_DAEMON_*`, the database URL with its
password among them), libpq's password variables and any value holding a registered
secret stay with the daemon, whatever the allow-list says.

The allow-list is set once at start (`allow`), like the daemon id in daemon/logs.py: the
agents that use it are resolved far from the settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from daemon.config import WITHHELD_NAMES, WITHHELD_PREFIX, check_name
from daemon.logs import get_logger, holds_secret

log = get_logger()

# What any program expects to find; none of it is a secret.
BASE_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
})  # fmt: skip
BASE_PREFIXES = ("LC_",)
_allowed: tuple[str, ...] = ()
_warned: set[str] = set()


def allow(names: Iterable[str]) -> None:
    """Let these variables (or `PREFIX*`) through from now on; checked by `check_name`."""
    global _allowed  # noqa: PLW0603 - one process, one allow-list, set once at start
    _allowed = tuple(check_name(name) for name in names)


def _passes(name: str) -> bool:
    if name.startswith(WITHHELD_PREFIX) or name in WITHHELD_NAMES:
        return False
    if name in BASE_NAMES or name.startswith(BASE_PREFIXES):
        return True
    return any(
        name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern
        for pattern in _allowed
    )


def child_environment(
    ids: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a child process: the allowed part of `environ` (the daemon's
    own by default) plus `ids` (SUPERVISOR_ID and the like), which win."""
    source = os.environ if environ is None else environ
    env: dict[str, str] = {}
    for name, value in source.items():
        if not _passes(name):
            continue
        if holds_secret(value):
            if name not in _warned:
                _warned.add(name)
                log.warning("environment.withheld", variable=name,
                            reason="its value holds a secret of the daemon")  # fmt: skip
            continue
        env[name] = value
    env.update(ids)
    return env
