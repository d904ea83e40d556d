"""A loopback TCP proxy in front of PostgreSQL that can cut its clients off.

`reset_clients()` resets every client connection (RST, as a network would) while the
server side stays open: the server goes on with what it already received, commits,
and its reply is thrown away. That is a commit whose outcome the client never saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from daemon.db.pool import SERVER_SETTINGS, init_connection


class _Pair:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.cut = False


class ResettingProxy:
    """`async with ResettingProxy(dsn) as proxy:` then connect to `proxy.dsn`."""

    def __init__(self, dsn: str) -> None:
        self.upstream = dsn
        self._pairs: list[_Pair] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    @property
    def dsn(self) -> str:
        parts = urlsplit(self.upstream)
        user = parts.username or "postgres"
        password = f":{parts.password}" if parts.password else ""
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
        query.append(("sslmode", "disable"))
        netloc = f"{user}{password}@127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self.upstream)
        query = dict(parse_qsl(parts.query))
        port = int(query.get("port") or parts.port or 5432)
        host = query.get("host") or parts.hostname or "localhost"
        if host.startswith("/"):
            return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host, port)

    async def __aenter__(self) -> ResettingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for pair in self._pairs:
            for writer in (pair.client, pair.server):
                writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def pool(self) -> asyncpg.Pool[Any]:
        """A pool of the daemon's kind (its codecs and session settings) through here."""
        pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=4, init=init_connection,
            server_settings=SERVER_SETTINGS,
        )  # fmt: skip
        assert pool is not None
        return pool

    def reset_clients(self) -> int:
        """Reset every client connection now; how many were reset."""
        count = 0
        for pair in self._pairs:
            if pair.cut:
                continue
            pair.cut = True
            sock = pair.client.get_extra_info("socket")
            if sock is not None:
                # Linger 0: close() sends RST rather than FIN, like a network reset. A
                # socket already closed (its server went away) has nothing to reset.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            pair.client.transport.abort()
            count += 1
        return count

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._open_upstream()
        self.connections += 1
        pair = _Pair(writer, up_writer)
        self._pairs.append(pair)
        for source, sink, to_server in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pump(pair, source, sink, to_server=to_server))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        pair: _Pair, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, to_server: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if pair.cut and not to_server:
                    continue  # the server's reply to a client that is gone
                if pair.cut:
                    return  # nothing more reaches the server once its client is cut
                sink.write(data)
                await sink.drain()
        if not pair.cut:  # one side closed: so does the other
            sink.transport.abort()
