"""Event ids: unique UUID strings made from a per-process prefix and a counter."""

from __future__ import annotations

import itertools
import uuid

import pytest

from daemon.persistence import events


@pytest.mark.parametrize("start", [1, 4_090, (1 << 36) - 3])
def test_ids_are_the_counter_in_hex_across_cached_blocks(
    monkeypatch: pytest.MonkeyPatch, start: int
) -> None:
    monkeypatch.setattr(events, "_ids", itertools.count(start))
    made = [events.new_event_id() for _ in range(10)]
    prefix = events._ID_PREFIX
    assert made == [f"{prefix}{n:012x}" for n in range(start, start + 10)]
    assert len({uuid.UUID(i) for i in made}) == 10


def test_critical_events_get_an_id_and_coalesced_ones_none() -> None:
    sid = uuid.uuid4()
    first, second = events.activity_reported(sid, "a"), events.activity_reported(sid, "b")
    assert first.id != second.id
    assert uuid.UUID(first.id)
    assert events.heartbeat(sid).id == ""
