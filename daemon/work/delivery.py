"""Question delivery: a log line, a NOTIFY and (when configured) a webhook POST.

Every delivery carries the question id, so consumers can deduplicate: a question is
delivered at least once when asked and again on every restoration. Delivery is best
effort after the durable write: a NOTIFY that fails is logged (`question.notify_failed`)
and never fails the question, which stays pending and answerable. The webhook is
retried with exponential backoff (tenacity) in the background; it never blocks the
supervisor that asked.

The log line and the NOTIFY carry the ids and a bounded preview of the question, never
the whole text: PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more, and a
question may hold 64 KiB and 50 choices of 4 KiB (daemon.limits). Sizes are measured
on the encoded JSON, in bytes of UTF-8, whatever the script. The webhook gets it all.
It goes to the configured URL and nowhere else: a redirect is
not followed (it fails the delivery), the proxy variables of the environment are
ignored unless `webhook_use_proxy` is set, and at most WEBHOOK_CONCURRENCY POSTs run at
once, so a restoration redelivering thousands of questions neither floods the
receiver nor takes every worker thread.
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
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from daemon.errors import DaemonError
from daemon.logs import Logger, get_logger
from daemon.models import PendingQuestion, SupervisorRestorationContext
from daemon.store import WorkStore

log = get_logger()
# Bytes of encoded JSON. PostgreSQL's limit on a NOTIFY payload is 8,000 bytes; half of
# it leaves room for anything a consumer or a later field may add.
NOTIFY_MAX_BYTES = 4_000
PREVIEW_QUESTION_BYTES = 1_000
PREVIEW_CHOICE_BYTES = 100
PREVIEW_CHOICES_BYTES = 1_000
ELLIPSIS = "\u2026"
WEBHOOK_CONCURRENCY = 4


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


def _json_size(text: str) -> int:
    return len(orjson.dumps(text)) - 2  # the quotes


def clip(text: str, budget: int) -> tuple[str, bool]:
    """The longest prefix of `text` whose JSON encoding fits in `budget` bytes (an
    ellipsis marks a cut), and whether it was cut."""
    if len(text) * 6 <= budget or _json_size(text) <= budget:  # 6: the most per character
        return text, False
    budget -= len(ELLIPSIS.encode())
    # The longest prefix of at most `budget` bytes of UTF-8; escapes (a control
    # character takes 6 bytes of JSON) may still make it too long.
    cut = text.encode()[:budget].decode(errors="ignore")
    while (size := _json_size(cut)) > budget:
        # Too long by `size - budget` bytes, and no character takes more than 6.
        cut = cut[: len(cut) - max(1, (size - budget + 5) // 6)]
    return cut + ELLIPSIS, True


def preview(question: PendingQuestion) -> dict[str, Any]:
    """The question and its choices, clipped to a bounded size; `truncated` tells."""
    text, truncated = clip(question.question, PREVIEW_QUESTION_BYTES)
    choices: list[str] = []
    left = PREVIEW_CHOICES_BYTES
    for choice in question.choices:
        shown, cut = clip(choice, PREVIEW_CHOICE_BYTES)
        left -= _json_size(shown) + 3  # quotes and comma
        if left < 0:
            truncated = True
            break
        choices.append(shown)
        truncated = truncated or cut
    return {"question": text, "choices": choices, "truncated": truncated}


def notify_body(supervisor_id: uuid.UUID, question: PendingQuestion, redelivery: bool) -> str:
    """The NOTIFY payload: ids, type, and a preview of the question (no context); at
    most NOTIFY_MAX_BYTES bytes. `truncated` says whether the preview is the whole
    question; the whole one is in supervisor_states, found by its id."""
    body = {
        "supervisorId": str(supervisor_id),
        "questionId": str(question.id),
        "questionType": question.question_type.value,
        "redelivery": redelivery,
        **preview(question),
    }
    encoded = orjson.dumps(body)
    if len(encoded) > NOTIFY_MAX_BYTES:  # cannot happen with the budgets above
        body.update(question="", choices=[], truncated=True)
        encoded = orjson.dumps(body)
    return encoded.decode()


def log_delivered(
    supervisor_id: uuid.UUID,
    question: PendingQuestion,
    redelivery: bool,
    *,
    contract_id: uuid.UUID | None,
) -> None:
    shown = preview(question)
    log.info("question.delivered", supervisor_id=str(supervisor_id),
             contract_id=str(contract_id), question_id=str(question.id),
             question=shown["question"], choices=shown["choices"],
             truncated=shown["truncated"], question_type=question.question_type.value,
             redelivery=redelivery)  # fmt: skip


class WebhookRedirectError(OSError):
    """The webhook answered with a redirect: not followed, and not worth retrying."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx code


def webhook_opener(*, use_proxy: bool) -> urllib.request.OpenerDirector:
    """An opener that follows no redirect and, unless `use_proxy`, uses no proxy."""
    proxies = urllib.request.ProxyHandler() if use_proxy else urllib.request.ProxyHandler({})
    return urllib.request.build_opener(_RefuseRedirects, proxies)


class Delivery:
    def __init__(
        self,
        store: WorkStore,
        tg: anyio.abc.TaskGroup,
        *,
        webhook_url: str | None = None,
        use_proxy: bool = False,
        attempts: int = 8,
        concurrency: int = WEBHOOK_CONCURRENCY,
    ) -> None:
        self._store = store
        self._tg = tg
        self._webhook_url = webhook_url
        self._attempts = attempts
        self._opener = webhook_opener(use_proxy=use_proxy)
        # POSTs waiting for a slot wait here, not in anyio's shared thread pool.
        self.limiter = anyio.CapacityLimiter(concurrency)

    async def deliver(
        self,
        supervisor_id: uuid.UUID,
        question: PendingQuestion,
        *,
        redelivery: bool = False,
        contract_id: uuid.UUID | None = None,
    ) -> None:
        """A question just asked (and recorded): log line, NOTIFY, webhook. Never raises
        for a failed delivery: the question is pending all the same."""
        log_delivered(supervisor_id, question, redelivery, contract_id=contract_id)
        try:
            await self._store.notify_question(notify_body(supervisor_id, question, redelivery))
        except DaemonError as exc:
            log.warning("question.notify_failed", supervisor_id=str(supervisor_id),
                        contract_id=str(contract_id), question_id=str(question.id),
                        error=str(exc))  # fmt: skip
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

    async def _post(self, body: dict[str, Any], qlog: Logger) -> None:
        url = str(self._webhook_url)
        data = json.dumps(body).encode()

        def send() -> None:
            request = urllib.request.Request(  # noqa: S310 - an operator-configured URL
                url, data=data, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with self._opener.open(request, timeout=10) as response:
                    response.read()
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response open
                if 300 <= exc.code < 400:
                    raise WebhookRedirectError(
                        f"webhook answered HTTP {exc.code} (a redirect, not followed:"
                        " configure the URL it points to)"
                    ) from None
                raise OSError(f"webhook answered HTTP {exc.code}") from None

        tries = 0
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(OSError)
                & retry_if_not_exception_type(WebhookRedirectError),
                wait=wait_exponential(multiplier=0.5, max=30),
                stop=stop_after_attempt(self._attempts),
                reraise=True,
            ):
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    await anyio.to_thread.run_sync(send, limiter=self.limiter)
        except OSError as exc:
            qlog.error("question.webhook_failed", error=str(exc), attempts=tries)
        else:
            qlog.info("question.webhook_delivered")
