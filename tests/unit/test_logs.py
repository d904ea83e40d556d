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


# A password a JSON renderer escapes (`"` becomes `\"`, `\` becomes `\\`): masking after
# rendering would look for the raw text in the escaped line and miss it.
AWKWARD = "pa\"ss\\wo'rd-42"


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_password_with_quotes_and_backslashes_is_masked(log_format: str) -> None:
    out = io.StringIO()
    logs.configure(log_format=log_format, level="info", stream=out)
    logs.register_secret(AWKWARD)
    log = logs.get_logger()
    try:
        log.info("plain", note=f"the password is {AWKWARD}")
        log.info("nested", detail={"attempts": [{"dsn": f"host=h dbname={AWKWARD}"}], "n": 1})
        log.info("tuple", pair=("ok", AWKWARD))
        log.info("object", error=ConnectionError(f"refused {AWKWARD}"))
        try:
            raise ConnectionError(f"could not connect with {AWKWARD}")
        except ConnectionError:
            log.exception("failed")
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    escaped = json.dumps(AWKWARD)[1:-1]
    for form in (AWKWARD, escaped, repr(AWKWARD)[1:-1], "pa\\", 'pa"ss', "wo'rd"):
        assert form not in text, (form, text)
    assert text.count("***") >= 5
    if log_format == "json":
        lines = _lines(out)
        assert lines[1]["detail"] == {"attempts": [{"dsn": "host=h dbname=***"}], "n": 1}
        assert lines[2]["pair"] == ["ok", "***"]
        assert lines[3]["error"] == "refused ***"


def test_values_without_secrets_render_as_before(stream: io.StringIO) -> None:
    import uuid

    ident = uuid.uuid4()
    logs.get_logger().info("plain", n=3, ok=True, ratio=0.5, id=ident, none=None, items=[1, "a"])
    (line,) = _lines(stream)
    assert (line["n"], line["ok"], line["ratio"], line["id"], line["none"], line["items"]) == (
        3, True, 0.5, str(ident), None, [1, "a"]
    )  # fmt: skip
