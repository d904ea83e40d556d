"""Log lines: one JSON object each, with event, level, timestamp, daemon id; no secrets."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import structlog

from daemon import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure(log_format="json", level="debug", stream=out)
    logs.set_daemon_id("test-daemon-1")
    yield out
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_is_json_with_the_required_keys(stream: io.StringIO) -> None:
    log = logs.get_logger(supervisor_id="abc")
    log.info("supervisor.restored", action="proceed")
    log.warning("queue.retry", attempt=2)
    lines = _lines(stream)
    assert len(lines) == 2
    for line in lines:
        assert {"event", "level", "timestamp", "daemon_id"} <= line.keys()
        assert line["daemon_id"] == "test-daemon-1"
        assert datetime.fromisoformat(line["timestamp"]).tzinfo is not None
    assert lines[0]["supervisor_id"] == "abc"
    assert lines[1]["level"] == "warning"


def test_database_password_never_appears(stream: io.StringIO) -> None:
    logs.register_secret("hunter2-registered")
    log = logs.get_logger()
    log.info("db.connect", url="postgresql://app:s3cr3t-pw@db.example:5432/prod")
    log.info("db.connect", dsn="host=db password=kv-secret user=app")
    log.info("db.other", note="the password is hunter2-registered")
    try:
        raise ConnectionError("could not connect to postgresql://app:exc-secret@db/prod")
    except ConnectionError:
        log.exception("db.failed")
    text = stream.getvalue()
    for secret in ("s3cr3t-pw", "kv-secret", "hunter2-registered", "exc-secret"):
        assert secret not in text
    lines = _lines(stream)
    assert lines[0]["url"] == "postgresql://app:***@db.example:5432/prod"
    assert "***" in lines[3]["exception"]


def test_redact_leaves_passwordless_urls_alone() -> None:
    assert logs.redact("postgresql://postgres:@/postgres?host=/tmp/x") == (
        "postgresql://postgres:@/postgres?host=/tmp/x"
    )
    assert logs.redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_console_format_also_redacts() -> None:
    out = io.StringIO()
    logs.configure(log_format="console", level="info", stream=out)
    try:
        logs.get_logger().info("db.connect", url="postgresql://a:pw-console@h/db")
    finally:
        structlog.reset_defaults()
    assert "pw-console" not in out.getvalue()
    assert "db.connect" in out.getvalue()
