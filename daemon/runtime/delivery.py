"""Question delivery: a log line, a NOTIFY and (when configured) a webhook POST.

Every delivery carries the question id, so consumers can deduplicate: a question is
delivered at least once when asked and again on every restoration. The webhook is
retried with exponential backoff (tenacity) in the background; it never blocks the
supervisor that asked.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from daemon.logs import get_logger
from daemon.models import PendingQuestion, SupervisorRestorationContext
from daemon.store import notify_question

log = get_logger()
NOTIFY_QUESTION_CHARS = 2_000  # a NOTIFY payload must stay under 8,000 bytes


def payload(
    supervisor_id: uuid.UUID, question: PendingQuestion, redelivery: bool
) -> dict[str, Any]:
    """The webhook body: everything a person needs to answer."""
    return {
        "supervisorId": str(supervisor_id),
        "questionId": str(question.id),
        "question": question.question,
        "choices": list(question.choices),
        "context": question.context,
        "questionType": question.question_type.value,
        "redelivery": redelivery,
    }


def notify_payload(
    supervisor_id: uuid.UUID, question: PendingQuestion, redelivery: bool
) -> dict[str, Any]:
    """The NOTIFY payload: the webhook body, trimmed to fit PostgreSQL's 8,000 bytes."""
    body = payload(supervisor_id, question, redelivery)
    body["question"] = question.question[:NOTIFY_QUESTION_CHARS]
    del body["context"]
    return body


def log_delivered(
    supervisor_id: uuid.UUID,
    question: PendingQuestion,
    redelivery: bool,
    *,
    contract_id: uuid.UUID | None,
) -> None:
    log.info("question.delivered", supervisor_id=str(supervisor_id),
             contract_id=str(contract_id), question_id=str(question.id),
             question=question.question, choices=list(question.choices),
             question_type=question.question_type.value, redelivery=redelivery)  # fmt: skip


class Delivery:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        tg: anyio.abc.TaskGroup,
        *,
        webhook_url: str | None = None,
        attempts: int = 8,
    ) -> None:
        self._pool = pool
        self._tg = tg
        self._webhook_url = webhook_url
        self._attempts = attempts

    async def deliver(
        self,
        supervisor_id: uuid.UUID,
        question: PendingQuestion,
        *,
        redelivery: bool = False,
        contract_id: uuid.UUID | None = None,
    ) -> None:
        """A question just asked: log line, NOTIFY, webhook."""
        log_delivered(supervisor_id, question, redelivery, contract_id=contract_id)
        await notify_question(
            self._pool, json.dumps(notify_payload(supervisor_id, question, redelivery))
        )
        self.webhook(supervisor_id, question, redelivery=redelivery, contract_id=contract_id)

    def webhook(
        self,
        supervisor_id: uuid.UUID,
        question: PendingQuestion,
        *,
        redelivery: bool,
        contract_id: uuid.UUID | None = None,
    ) -> None:
        """POST the question in the background, when a webhook is configured."""
        if self._webhook_url:
            qlog = log.bind(supervisor_id=str(supervisor_id), contract_id=str(contract_id),
                            question_id=str(question.id))  # fmt: skip
            self._tg.start_soon(self._post, payload(supervisor_id, question, redelivery), qlog)

    def webhook_redeliveries(
        self,
        contexts: dict[uuid.UUID, SupervisorRestorationContext],
        contracts: Mapping[uuid.UUID, uuid.UUID | None] | None = None,
    ) -> None:
        """The webhook share of a restoration's redeliveries (the restoration itself
        already logged them and sent their NOTIFYs when it committed)."""
        if not self._webhook_url:
            return
        for supervisor_id, context in contexts.items():
            contract_id = (contracts or {}).get(supervisor_id)
            for question in context.pending_questions:
                self.webhook(supervisor_id, question, redelivery=True, contract_id=contract_id)

    async def _post(self, body: dict[str, Any], qlog: Any) -> None:
        url = str(self._webhook_url)
        data = json.dumps(body).encode()

        def send() -> None:
            request = urllib.request.Request(  # noqa: S310 - an operator-configured URL
                url, data=data, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    response.read()
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response open
                raise OSError(f"webhook answered HTTP {exc.code}") from None

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(OSError),
                wait=wait_exponential(multiplier=0.5, max=30),
                stop=stop_after_attempt(self._attempts),
                reraise=True,
            ):
                with attempt:
                    await anyio.to_thread.run_sync(send)
        except OSError as exc:
            qlog.error("question.webhook_failed", error=str(exc), attempts=self._attempts)
        else:
            qlog.info("question.webhook_delivered")
