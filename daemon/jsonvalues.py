"""JSON values as PostgreSQL hands them back: decoded fast, and never refused whole.

PostgreSQL's json and jsonb accept what the daemon's fast decoder (orjson) refuses: a
number out of a double's range such as `1e400` (stored exactly as numeric), or nesting
deeper than 1,024 levels. Such a value, written by another tool, must not fail the
statement that reads it (a restoration loads supervisors by the thousand). So `decode`
falls back, only when orjson refused, to the standard library (which reads `1e400` as
infinity, or as the exact integer jsonb prints it back as), and marks what it returns:

- an array or object comes back as a `RefusedList` / `RefusedDict` (a list or dict, so
  readers that list or show it still work), with `issue` naming what was refused;
- anything else (a bare number, text not even the standard library reads) comes back
  as an `Unreadable`, which no reader mistakes for a value.

`issue_of(value)` says whether a decoded value is one of these; restoration validation
names it and parks the supervisor for an operator rather than restore or overwrite what
it cannot read (daemon/restoration/plan.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any, overload

import orjson


class RefusedList(list[Any]):
    """A JSON array orjson refused and the standard library read."""

    __slots__ = ("issue",)

    def __init__(self, items: list[Any], issue: str) -> None:
        super().__init__(items)
        self.issue = issue


class RefusedDict(dict[str, Any]):
    """A JSON object orjson refused and the standard library read."""

    __slots__ = ("issue",)

    def __init__(self, items: dict[str, Any], issue: str) -> None:
        super().__init__(items)
        self.issue = issue


@dataclasses.dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored JSON value the daemon cannot use at all."""

    issue: str


def decode(text: str) -> Any:
    """The codec's decoder: orjson, and the marked fallback when orjson refuses."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _fallback(text, exc)


NON_FINITE = "a non-finite number (beyond a double's range, such as 1e400)"


def _fallback(text: str, refused: orjson.JSONDecodeError) -> Any:
    # orjson reads every number as a double: one out of its range is "infinity".
    too_large = "infinity" in str(refused)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # e.g. 1e5000, printed by PostgreSQL in full
        return Unreadable(NON_FINITE if too_large else f"undecodable JSON ({refused})")
    too_large = too_large or _has_non_finite(value)
    issue = NON_FINITE if too_large else f"undecodable JSON ({refused})"
    if isinstance(value, list):
        return RefusedList(value, issue)
    if isinstance(value, dict):
        return RefusedDict(value, issue)
    return Unreadable(issue)


def _has_non_finite(value: Any) -> bool:
    """A number no double holds: infinity, or an integer beyond a double's range (jsonb
    prints 1e400 in full, and the standard library reads that as an int)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, int) and abs(item) > sys.float_info.max:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def issue_of(value: Any) -> str | None:
    """What the decoder refused in `value`, or None for an ordinary value."""
    if isinstance(value, RefusedList | RefusedDict | Unreadable):
        return value.issue
    return None


class JsonTail(Sequence[Any]):
    """The newest messages of a history as the database sent them - a JSON array,
    newest first - decoded (oldest first) the first time something reads them.

    Restoring thousands of supervisors builds no message objects that nobody reads:
    decoding the tails was most of what a long history added to a restoration.
    Compares equal to a tuple of the same messages.
    """

    __slots__ = ("_items", "_text")

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self._items: tuple[Any, ...] = ()

    def _loaded(self) -> tuple[Any, ...]:
        if self._text is not None:
            # The tolerant decoder: a message another tool wrote with a number no double
            # holds (1e400) is read, not raised on when an agent first reads its tail.
            items = decode(self._text)
            messages = list(items) if isinstance(items, list) else []
            messages.reverse()
            self._items, self._text = tuple(messages), None
        return self._items

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Any, ...]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self._loaded()[index]

    def __len__(self) -> int:
        return len(self._loaded())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._loaded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JsonTail | tuple | list):
            return self._loaded() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._loaded())

    def __repr__(self) -> str:
        return f"JsonTail({self._loaded()!r})"
