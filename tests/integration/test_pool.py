"""Connections as the daemon opens them."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from daemon.db.pool import SEND_BUFFER_BYTES

pytestmark = pytest.mark.asyncio

WMEM_MAX = Path("/proc/sys/net/core/wmem_max")


async def test_connections_ask_for_a_send_buffer_that_holds_a_batch(
    pool: asyncpg.Pool[Any],
) -> None:
    """A flush message of about a megabyte leaves in one write (the kernel caps the
    request at net.core.wmem_max and reports twice what it grants)."""
    cap = int(WMEM_MAX.read_text())  # noqa: ASYNC240 - a /proc file, read at once
    async with pool.acquire() as conn:
        # Through the pool's proxy to asyncpg's transport: the only way to its socket.
        raw: Any = getattr(conn, "_con")  # noqa: B009 - not in asyncpg's stubs
        sock = raw._transport.get_extra_info("socket")
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert granted == 2 * min(SEND_BUFFER_BYTES, cap)
