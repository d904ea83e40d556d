"""Stopping a child process with everything it started.

Task commands and command agents run in a session (and process group) of their own,
so that stopping one stops what it started too: `sh -c "build && test"` leaves no
`test` behind when its supervisor moves to another daemon. They are asked first
(SIGTERM to the group), then made to stop (SIGKILL) after a grace period. The daemon's
own terminal signals (Ctrl-C) do not reach them; the daemon stops them itself.
"""

from __future__ import annotations

import contextlib
import os
import signal

import anyio
import anyio.abc


def signal_group(process: anyio.abc.Process, signum: signal.Signals) -> None:
    """Send `signum` to the process group `process` leads (started with
    start_new_session=True); nothing when the group is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def stop_group(process: anyio.abc.Process, *, grace_s: float) -> None:
    """SIGTERM the group, wait up to `grace_s` for its leader, then SIGKILL the group.
    Shielded: a stop that is itself cancelled still leaves nothing running."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            signal_group(process, signal.SIGTERM)
            with anyio.move_on_after(grace_s):
                await process.wait()
        # Whatever is left of the group (children that outlived the leader, or a leader
        # that ignored SIGTERM) goes now.
        signal_group(process, signal.SIGKILL)
        if process.returncode is None:
            await process.wait()
