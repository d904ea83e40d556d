"""The web page and its JSON API, in process (httpx over ASGI) on real PostgreSQL."""

from __future__ import annotations

import pytest

from daemon.errors import ConfigError
from daemon.web.serve import check_address
from tests.factories import WEB_TOKEN
from tests.processes import run_cli


def test_another_address_needs_a_token() -> None:
    assert check_address("127.0.0.1", 8765, None)
    assert check_address("::1", 8765, None)
    everywhere = "0.0.0.0"  # noqa: S104 - checked, never bound
    assert not check_address(everywhere, 8765, WEB_TOKEN)
    with pytest.raises(ConfigError, match="SUPERVISOR_DAEMON_WEB_TOKEN"):
        check_address(everywhere, 8765, None)
    refused = run_cli("web", "--address", f"{everywhere}:8765")
    assert refused.returncode == 78
    assert refused.stderr.strip().splitlines() == [
        "supervisor-daemon: error: serving the web page at 0.0.0.0:8765, beyond this machine,"
        " needs a token: set SUPERVISOR_DAEMON_WEB_TOKEN (16 characters or more)"
    ]
    weak = run_cli("web", env={"SUPERVISOR_DAEMON_WEB_TOKEN": "short"})
    assert weak.returncode == 78
    assert "short" not in weak.stderr
