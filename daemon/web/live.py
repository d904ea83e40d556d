"""Live news for open inbox pages: a question asked, answered, or no longer pending.

One LISTEN connection per web process (the daemons' `NOTIFY supervisor_questions`,
through Services.question_feed) feeds every open page, however many there are.
While that connection is down, and every `slow_poll_s` even when it is up, the
pending questions are read instead and compared with what was known: new ones are
announced, gone ones reported resolved. Pages deduplicate by question id, so a
question announced twice (notified, then found by a poll; redelivered on a
restoration) still shows once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from daemon.errors import DatabaseError
from daemon.logs import get_logger
from daemon.services import Services

log = get_logger()


@dataclasses.dataclass(frozen=True, slots=True)
class News:
    kind: str  # question | answered | resolved
    question_id: str


class Live:
    def __init__(
        self,
        services: Services,
        *,
        fast_poll_s: float = 2.0,
        slow_poll_s: float = 15.0,
        buffer: int = 1000,
    ) -> None:
        self._services = services
        self._fast_poll_s = fast_poll_s
        self._slow_poll_s = slow_poll_s
        self._buffer = buffer
        self._subscribers: set[MemoryObjectSendStream[News]] = set()
        self._known: set[str] | None = None  # pending ids as last read; None: not read yet
        self.listening = False
        self._woken = anyio.Event()
        self._closed = False

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[MemoryObjectReceiveStream[News]]:
        send, receive = anyio.create_memory_object_stream[News](self._buffer)
        if self._closed:
            send.close()  # stopping: the stream ends at once
        else:
            self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()

    def close(self) -> None:
        """End every open stream (the server stops: pages reconnect to the next one)."""
        self._closed = True
        for send in list(self._subscribers):
            send.close()
        self._subscribers.clear()

    def publish(self, kind: str, question_id: str) -> None:
        """Tell every open page; a page too far behind misses news rather than stalling
        the others (its next poll-driven snapshot, or a reload, catches it up)."""
        news = News(kind, question_id)
        for send in list(self._subscribers):
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                send.send_nowait(news)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listen)
            tg.start_soon(self._poll)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._services.question_feed() as feed:
                    self.listening = True
                    log.info("web.listening")
                    await self.poll_once()  # what was asked while nobody listened
                    async for body in feed:
                        question_id = str(body.get("questionId"))
                        if self._known is not None:
                            self._known.add(question_id)
                        self.publish("question", question_id)
            except DatabaseError as exc:
                log.warning("web.listen_failed", error=str(exc))
            finally:
                self.listening = False
            self._woken.set()  # poll fast from now on
            await anyio.sleep(self._fast_poll_s)

    async def _poll(self) -> None:
        while True:
            self._woken = anyio.Event()
            with anyio.move_on_after(self._slow_poll_s if self.listening else self._fast_poll_s):
                await self._woken.wait()
            try:
                await self.poll_once()
            except DatabaseError as exc:
                log.warning("web.poll_failed", error=str(exc))

    async def poll_once(self) -> None:
        pending = {str(item.question.id) for item in await self._services.pending_questions()}
        known, self._known = self._known, pending
        if known is None:
            return  # the first read: pages already show what is pending
        for question_id in sorted(pending - known):
            self.publish("question", question_id)
        for question_id in sorted(known - pending):
            self.publish("resolved", question_id)
