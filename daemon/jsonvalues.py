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
it cannot read (daemon/restoration.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from typing import Any

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
