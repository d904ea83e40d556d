"""`supervisor-daemon web`: serve the page from the database, with or without a daemon.

It applies pending migrations at start, as `run` does (an advisory lock serialises
the two), so it can be the first thing started on a new database.

Refuses to start (ConfigError, exit 78) on an address other than loopback without a
token, and on an address it cannot bind. SIGTERM or SIGINT stops it: open event
streams are closed within a second or two.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Generator
from contextlib import contextmanager

import anyio
import uvicorn

from daemon.config import Settings
from daemon.db.database import open_database
from daemon.errors import ConfigError
from daemon.logs import get_logger
from daemon.runtime.components import crash_loop_guard
from daemon.services import Services
from daemon.store import Stores
from daemon.web.app import create_app
from daemon.web.live import Live
from daemon.web.security import is_loopback

log = get_logger()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ours asks it to stop, then the process
    exits 0 (uvicorn would re-raise the signal after its shutdown)."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve the web page at {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def check_address(host: str, port: int, token: str | None) -> bool:
    """True on loopback; raises ConfigError elsewhere without a token."""
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise ConfigError(
            f"serving the web page at {host}:{port}, beyond this machine, needs a token:"
            " set SUPERVISOR_DAEMON_WEB_TOKEN (16 characters or more)"
        )
    return loopback


async def serve(settings: Settings) -> None:
    host, port = settings.web_address
    loopback = check_address(host, port, settings.web_token)
    sock = bind(host, port)
    port = sock.getsockname()[1]  # port 0: the one the system chose
    shown = f"[{host}]" if ":" in host else host
    async with open_database(settings) as db:
        # Like `run`: the page may be the first thing started on a new database.
        await db.migrate()
        # The stores and people's commands, made once for the process (as each CLI
        # command makes them for itself).
        stores = Stores.of(db)
        services = Services(
            stores, guard=crash_loop_guard(settings), retention_days=settings.retention_days
        )
        live = Live(services)
        app = create_app(services, live=live, token=settings.web_token, loopback=loopback)
        config = uvicorn.Config(
            app,
            log_config=None,  # structlog renders our lines; uvicorn's own stay quiet
            access_log=False,  # paths are not logged: a query may hold what a person typed
            lifespan="off",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        server = _Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(live.run)
            tg.start_soon(_stop_on_signal, server, live)
            log.info("web.serving", address=f"{shown}:{port}", token=settings.web_token is not None)
            print(f"serving the web page at http://{shown}:{port}/ (Ctrl-C stops)",
                  file=sys.stderr, flush=True)  # fmt: skip
            try:
                await server.serve(sockets=[sock])
            finally:
                sock.close()
                tg.cancel_scope.cancel()


async def _stop_on_signal(server: uvicorn.Server, live: Live) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("web.stopping", signal=signal.Signals(signum).name)
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True
            live.close()  # open event streams end, so the server stops at once
