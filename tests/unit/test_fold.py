"""Folding a run of events into the rows and journal segments of one batch (pure logic)."""

from __future__ import annotations

import json
import uuid

from daemon.models import SupervisorStateKind
from daemon.persistence import events
from daemon.persistence.fold import fold
from tests.factories import new_question


def test_a_row_holds_only_what_its_events_set_and_the_journal_keeps_them_in_order() -> None:
    sid = uuid.uuid4()
    first = events.activity_reported(sid, "reading")
    second = events.phase_changed(sid, "implement")
    third = events.activity_reported(sid, "coding")
    batch = fold([first, second, third])
    assert batch.rows == [
        {"i": sid, "a": "coding", "ph": "implement", "n": 3, "le": third.id},
    ]
    assert batch.segments == [
        [
            (first.id, "activity_reported", {"activity": "reading"}),
            (second.id, "phase_changed", {"phase": "implement"}),
            (third.id, "activity_reported", {"activity": "coding"}),
        ]
    ]
    assert batch.last_event == {sid: third.id}


def test_tasks_answers_and_collected_tasks_become_array_literals() -> None:
    sid = uuid.uuid4()
    question = new_question()
    awaited, background, done = (events.new_id() for _ in range(3))
    batch = fold(
        [
            events.task_spawned(sid, awaited, spec={"command": "true"}),
            events.task_spawned(sid, background, awaited=False),
            events.question_asked(sid, question),
            events.question_answered(sid, question.id, "yes", answered_by="ann"),
            events.tasks_collected(sid, [done]),
        ]
    )
    (row,) = batch.rows
    assert row["tn"] == 2
    assert row["aw"] == f"{{{awaited}}}"
    assert row["ai"] == f"{{{question.id}}}"
    assert row["rt"] == f"{{{done}}}"
    assert row["st"] == "waiting_for_user"
    assert row["an"] == [{"q": str(question.id), "a": "yes", "by": "ann"}]


def test_coalesced_progress_applies_only_where_newer_than_the_critical_events() -> None:
    older, newer, alone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    critical = [
        events.completed(older),  # progress 100, at position 0
        events.activity_reported(newer, "step"),
    ]
    coalesced = [
        (0, events.progress_reported(older, 40)),  # queued before the completion
        (2, events.progress_reported(newer, 70, activity="later")),
        (2, events.heartbeat(alone)),
    ]
    batch = fold(critical, coalesced)
    rows = {row["i"]: row for row in batch.rows}
    assert rows[older]["p"] == 100
    assert rows[older]["st"] == SupervisorStateKind.COMPLETED.value
    assert (rows[newer]["p"], rows[newer]["a"]) == (70, "later")
    # A heartbeat-only row: no events, no journal segment, no last event.
    assert rows[alone] == {"i": alone, "n": 0}
    assert batch.segments[batch.rows.index(rows[alone])] is None
    assert alone not in batch.last_event


def test_parameters_are_the_document_the_ids_and_one_segment_text_per_row() -> None:
    writer, idle = uuid.uuid4(), uuid.uuid4()
    event = events.state_changed(writer, "working", epoch=7)
    batch = fold([event], [(1, events.heartbeat(idle, epoch=3))])
    document, ids, segments = batch.parameters()
    assert ids == [writer, idle]
    assert json.loads(document) == [
        {"i": str(writer), "ep": 7, "st": "working", "er": None, "n": 1, "le": event.id},
        {"i": str(idle), "ep": 3, "n": 0},
    ]
    assert segments[1] is None
    assert segments[0] is not None
    assert json.loads(segments[0]) == [
        [event.id, "state_changed", {"state": "working", "errorMessage": None}]
    ]


def test_messages_are_counted_for_their_sequence_numbers() -> None:
    sid = uuid.uuid4()
    batch = fold([events.message_appended(sid, {"n": n}) for n in range(3)])
    (row,) = batch.rows
    assert (row["m"], row["mn"]) == ([{"n": 0}, {"n": 1}, {"n": 2}], 3)
    assert "tn" not in row
