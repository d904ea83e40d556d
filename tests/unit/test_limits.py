"""The limits at the boundary, the bounded NOTIFY preview and the JSON decoder's
fallback: pure logic, no database."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import jsonvalues, limits
from daemon.agents.command import Session
from daemon.agents.supervisor import Supervisor
from daemon.errors import InvalidInputError
from daemon.work.delivery import NOTIFY_MAX_BYTES, clip, notify_body
from tests.factories import json_values, new_question, new_state

# -- text: bytes of UTF-8, storable ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a" * limits.MAX_TEXT_BYTES, True),
        ("a" * (limits.MAX_TEXT_BYTES + 1), False),
        ("é" * (limits.MAX_TEXT_BYTES // 2), True),  # 2 bytes each
        ("é" * (limits.MAX_TEXT_BYTES // 2 + 1), False),
        ("確" * (limits.MAX_TEXT_BYTES // 3), True),  # 3 bytes each
        ("確" * (limits.MAX_TEXT_BYTES // 3 + 1), False),
        ("\U0001f600" * (limits.MAX_TEXT_BYTES // 4), True),  # 4 bytes each
        ("\U0001f600" * (limits.MAX_TEXT_BYTES // 4 + 1), False),
    ],
)
def test_text_is_measured_in_bytes_of_utf8(value: str, ok: bool) -> None:
    if ok:
        assert limits.text("question", value) == value
    else:
        with pytest.raises(InvalidInputError, match=r"question is [\d,]+ bytes of UTF-8"):
            limits.text("question", value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a\x00b", "NUL character"),
        ("half \ud800 a pair", "lone surrogate"),
        (42, "must be a string, not int"),
        (None, "must be a string, not NoneType"),
    ],
)
def test_text_postgresql_cannot_store_is_refused(value: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        limits.text("activity", value)


def test_choices() -> None:
    assert limits.choices(None) == ()
    assert limits.choices(["yes", "no"]) == ("yes", "no")
    assert len(limits.choices(["c"] * limits.MAX_CHOICES)) == limits.MAX_CHOICES
    refused = {
        "yes": "must be a list of strings, not str",
        ("c",) * (limits.MAX_CHOICES + 1): "at most 50",
        ("ok", "x" * (limits.MAX_CHOICE_BYTES + 1)): r"choices\[1\] is",
        ("ok", " "): r"choices\[1\] is empty",
        ("ok", 2): r"choices\[1\] must be a string",
    }
    for value, message in refused.items():
        with pytest.raises(InvalidInputError, match=message):
            limits.choices(value if isinstance(value, str) else list(value))
    assert limits.choices(["確" * (limits.MAX_CHOICE_BYTES // 3)])  # a few thousand bytes


def test_a_question_is_checked_whole() -> None:
    assert limits.question(new_question())
    refused: list[tuple[dict[str, Any], str]] = [
        ({"question": "  "}, "question is empty"),
        ({"context": "x" * (limits.MAX_TEXT_BYTES + 1)}, "context is"),
        ({"choices": ("",)}, r"choices\[0\] is empty"),
        ({"question_type": "urgent"}, "unknown questionType 'urgent'"),
    ]
    for changes, message in refused:
        with pytest.raises(InvalidInputError, match=message):
            limits.question(new_question(**changes))


# -- JSON values: depth, numbers, NUL, size ----------------------------------------------


def _nested(levels: int) -> Any:
    value: Any = "core"
    for n in range(levels):
        value = [value] if n % 2 else {"k": value}
    return value


def test_json_values() -> None:
    assert limits.json_value("message", _nested(limits.MAX_DEPTH), limit=10_000)
    refused: list[tuple[Any, str]] = [
        (_nested(limits.MAX_DEPTH + 1), "nested too deep"),
        ({"x": float("nan")}, "nan, which JSON cannot carry"),
        ([1, [float("inf")]], "inf, which JSON cannot carry"),
        ({"a\x00": 1}, "NUL"),
        ([{"a": "b\x00"}], "NUL"),
        ({"when": object()}, "not JSON-serialisable"),
        ({1: "key"}, "not JSON-serialisable"),
        ({"big": 2**70}, "not JSON-serialisable"),
        ({"text": "é" * 600}, "1,211 bytes of JSON; at most 1,000"),
    ]
    for value, message in refused:
        with pytest.raises(InvalidInputError, match=message):
            limits.json_value("message", value, limit=1_000)


# -- command task specs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"kind": "review"}, None),  # finished from outside
        (["command"], None),
        ("command", None),
        ({"command": "make"}, limits.CommandSpec(command="make")),
        ({"command": "make", "timeoutS": 1.5, "idempotent": True},
         limits.CommandSpec(command="make", timeout_s=1.5, idempotent=True)),
        ({"command": "make", "timeoutS": None, "idempotent": None},
         limits.CommandSpec(command="make")),
        ({"command": "make", "timeoutS": limits.MAX_TASK_TIMEOUT_S},
         limits.CommandSpec(command="make", timeout_s=float(limits.MAX_TASK_TIMEOUT_S))),
    ],
)  # fmt: skip
def test_command_specs_the_runner_runs(spec: Any, expected: limits.CommandSpec | None) -> None:
    assert limits.command_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"command": "make", "timeoutS": "x"}, "timeoutS must be a number of seconds, not 'x'"),
        ({"command": "make", "timeoutS": True}, "timeoutS must be a number"),
        ({"command": "make", "timeoutS": 0}, "timeoutS must be more than 0"),
        ({"command": "make", "timeoutS": float("nan")}, "timeoutS must be more than 0"),
        ({"command": "make", "timeoutS": float("inf")}, "at most 604800 seconds"),
        ({"command": "make", "timeoutS": 10**400}, "at most 604800 seconds"),
        ({"command": "make", "idempotent": "no"}, "idempotent must be true or false"),
        ({"command": "make", "idempotent": 1}, "idempotent must be true or false"),
        ({"command": None}, "command must be a string"),
        ({"command": ""}, "command is empty"),
        ({"command": "x" * (limits.MAX_COMMAND_BYTES + 1)}, "command is"),
        ({"command": "a\x00b"}, "NUL"),
    ],
)
def test_command_specs_the_runner_cannot_run(spec: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        limits.command_spec(spec)
    with pytest.raises(InvalidInputError, match=message):
        limits.task_spec(spec)


def test_task_ids() -> None:
    ids = [uuid.uuid4(), str(uuid.uuid4())]
    assert limits.task_ids(ids) == [ids[0], uuid.UUID(str(ids[1]))]
    with pytest.raises(InvalidInputError, match="not a task id"):
        limits.task_ids(["nope"])
    with pytest.raises(InvalidInputError, match="at most 10,000"):
        limits.task_ids([ids[0]] * (limits.MAX_TASK_IDS + 1))


# -- every request an agent may send: a reply, and only runnable specs accepted ------------


class _Accepting:
    """Queue, hub and runner stand-ins: whatever passes the Supervisor API's checks is
    accepted, and the runner asserts it can run every spec it is handed."""

    async def submit(self, event: Any) -> None:
        pass

    def submit_nowait(self, event: Any) -> None:
        pass

    async def wait_answer(self, question_id: uuid.UUID) -> tuple[str, None]:
        return "yes", None

    async def wait_tasks(self, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        return {}

    def start(self, task_id: uuid.UUID, spec: Any, **_ids: uuid.UUID) -> bool:
        try:
            return limits.command_spec(spec) is not None
        except InvalidInputError as exc:  # (an AssertionError is no reply: it escapes)
            raise AssertionError(f"spawn_task accepted a spec the runner refuses: {exc}") from None

    async def deliver(self, supervisor_id: uuid.UUID, question: Any) -> None:
        pass


specs = json_values | st.fixed_dictionaries(
    {"command": json_values | st.text(max_size=20)},
    optional={"timeoutS": json_values | st.floats() | st.integers(min_value=-(10**30)),
              "idempotent": json_values},
)  # fmt: skip
agent_requests = st.fixed_dictionaries(
    {"type": st.sampled_from(["spawn_task", "ask", "append_message", "report_activity",
                              "wait_for_tasks", "fail"])},
    optional={"spec": specs, "question": json_values | st.text(), "choices": json_values,
              "context": json_values, "message": json_values, "activity": json_values,
              "taskIds": json_values, "errorMessage": json_values, "id": st.integers()},
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(request=agent_requests)
def test_every_request_gets_a_reply_and_a_spawned_spec_is_runnable(request: Any) -> None:
    stub = _Accepting()
    sup = Supervisor(
        new_state(), queue=cast(Any, stub), hub=cast(Any, stub), runner=cast(Any, stub),
        deliver=stub.deliver,
    )  # fmt: skip

    async def check() -> None:
        reply = await Session(sup).handle(json.dumps(request).encode())
        assert reply["type"] in {"result", "error"}
        if reply["type"] == "error":
            assert isinstance(reply["error"], str)
            assert not reply["error"].startswith(("TypeError", "AttributeError", "KeyError"))

    anyio.run(check)


# -- the NOTIFY: bounded whatever the question ---------------------------------------------


def test_clip_cuts_on_encoded_bytes() -> None:
    assert clip("short", 10) == ("short", False)
    assert clip("x" * 10, 10) == ("x" * 10, False)
    cut, truncated = clip("確" * 100, 30)
    assert truncated
    assert cut == "確" * 9 + "\u2026"  # 27 + 3 bytes
    cut, truncated = clip("\x01" * 100, 30)  # 6 bytes of JSON each
    assert (cut, truncated) == ("\x01" * 4 + "\u2026", True)


@settings(max_examples=200, deadline=None)
@given(
    question=st.text(min_size=1, max_size=20_000),
    choices=st.lists(st.text(min_size=1, max_size=2_000), max_size=limits.MAX_CHOICES),
    redelivery=st.booleans(),
)
def test_a_notify_body_fits_whatever_the_question(
    question: str, choices: list[str], redelivery: bool
) -> None:
    asked = new_question(question=question, choices=tuple(choices))
    sid = uuid.uuid4()
    body = notify_body(sid, asked, redelivery)
    assert len(body.encode()) <= NOTIFY_MAX_BYTES < 8_000
    sent = json.loads(body)
    assert (sent["supervisorId"], sent["questionId"]) == (str(sid), str(asked.id))
    assert sent["redelivery"] is redelivery
    assert "context" not in sent
    if not sent["truncated"]:
        assert (sent["question"], sent["choices"]) == (question, choices)
    else:
        assert question.startswith(sent["question"].removesuffix("\u2026"))
        assert len(sent["choices"]) <= len(choices)


# -- the JSON decoder's fallback ---------------------------------------------------------


def test_the_decoder_marks_what_orjson_refuses() -> None:
    plain = jsonvalues.decode('[{"role": "user"}]')
    assert type(plain) is list
    assert jsonvalues.issue_of(plain) is None
    # 1e400 as another tool wrote it, and as jsonb prints it back (in full).
    for text in ('[{"content": 1e400}]', '[{"content": 1' + "0" * 400 + "}]"):
        refused = jsonvalues.decode(text)
        assert isinstance(refused, jsonvalues.RefusedList)
        assert refused[0]["content"] in (float("inf"), 10**400)
        assert jsonvalues.issue_of(refused) == jsonvalues.NON_FINITE
    spec = jsonvalues.decode('{"command": "true", "timeoutS": 1e400}')
    assert isinstance(spec, jsonvalues.RefusedDict)
    with pytest.raises(InvalidInputError, match="timeoutS"):
        limits.command_spec(spec)
    assert jsonvalues.decode("-1e400") == jsonvalues.Unreadable(jsonvalues.NON_FINITE)
    deep = jsonvalues.decode("[" * 5_000 + "]" * 5_000)
    assert isinstance(deep, jsonvalues.Unreadable)
    assert "undecodable JSON (depth limit exceeded" in deep.issue


def test_the_protocol_schema_states_the_same_limits() -> None:
    schema = json.loads((Path(__file__).parents[2] / "docs" / "agent-protocol.schema.json")
                        .read_text())  # fmt: skip
    requests = {
        option["properties"]["type"]["const"]: option["properties"]
        for option in schema["$defs"]["agentRequest"]["oneOf"]
    }
    assert requests["ask"]["choices"]["maxItems"] == limits.MAX_CHOICES
    assert requests["wait_for_tasks"]["taskIds"]["maxItems"] == limits.MAX_TASK_IDS
    command = schema["$defs"]["commandSpec"]["properties"]
    assert command["timeoutS"]["maximum"] == limits.MAX_TASK_TIMEOUT_S
    assert f"{limits.MAX_TEXT_BYTES:,} bytes" in schema["$defs"]["text64k"]["description"]
    assert f"{limits.MAX_COMMAND_BYTES:,} bytes" in command["command"]["description"]
