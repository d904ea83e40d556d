"""The questions channel as people's interfaces follow it.

Daemons deliver each question on the channel (NOTIFY supervisor_questions) with a
bounded preview; `whole` reads the whole one back by its id, and `follow` gives what
`questions follow` shows: the questions pending now, then each new one as it is
delivered, whole, once each. Services (daemon/services/__init__.py) holds the feed
open; nothing here holds a connection, prints or renders.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio.abc

from daemon.models import PendingQuestion
from daemon.services.views import InboxQuestion
from daemon.store import WorkStore
from daemon.work.delivery import payload

Body = dict[str, Any]


def delivered(item: InboxQuestion) -> Body:
    """A pending question as a daemon delivers it (the webhook body)."""
    return payload(item.supervisor_id, item.question, redelivery=False)


async def whole(work: WorkStore, body: Body) -> Body:
    """A delivered question in full: a NOTIFY carries a bounded preview (`truncated`
    says whether it is all of it); the whole one is read by its id while pending."""
    if not body.get("truncated"):
        return body
    try:
        found = await work.find_pending_question(uuid.UUID(str(body.get("questionId"))))
        if found is None:
            return body
        question = PendingQuestion.from_json(found["question"])
    except ValueError:  # not an id, or a question no longer readable: show the preview
        return body
    return payload(found["supervisor_id"], question, redelivery=bool(body.get("redelivery")))


async def follow(
    work: WorkStore,
    feed: anyio.abc.ObjectReceiveStream[Body],
    pending: Callable[[], Awaitable[list[InboxQuestion]]],
) -> AsyncIterator[Body]:
    """The questions pending now, then each one `feed` delivers, whole, once each. Ends
    when the feed does (its connection was lost)."""
    seen: set[str] = set()
    # The feed listens already, then the pending ones are listed: a question asked in
    # between shows once. One answered while no daemon ran waits for nobody: not shown.
    for item in await pending():
        if item.answer is None and str(item.question.id) not in seen:
            seen.add(str(item.question.id))
            yield delivered(item)
    async for body in feed:
        question_id = str(body.get("questionId"))
        if question_id not in seen:  # else redelivered on a restoration: shown already
            seen.add(question_id)
            yield await whole(work, body)
