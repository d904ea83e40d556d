"""Unit tests run without a database: asking for one here is a test at the wrong depth."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pg_server() -> None:
    pytest.fail("a unit test asked for PostgreSQL: it belongs in tests/integration")
