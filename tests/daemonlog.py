"""A daemon process's JSON log lines, read by a thread as they come.

The thread keeps the stderr pipe from filling, and every wait has a deadline even when
the daemon falls silent (a supervisor that failed writes nothing more) or exits.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from typing import Any

DEADLINE_S = 120.0


class LogLines:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[dict[str, Any]] = []
        self.ended = False
        self._cursor = 0  # where the next `until` looks from
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        # The pipe is closed under this thread when a test ends early: that ends it too.
        with contextlib.suppress(ValueError, OSError):
            for line in proc.stderr:
                if line.startswith("{"):
                    with self._changed:
                        self.seen.append(json.loads(line))
                        self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def count(self, event: str) -> int:
        return sum(1 for line in self.seen if line["event"] == event)

    def wait_for(self, event: str, count: int = 1, deadline_s: float = DEADLINE_S) -> None:
        """Until `count` lines of `event` were written; AssertionError at the deadline or
        when the daemon's output ends first."""
        with self._changed:
            self._changed.wait_for(lambda: self.count(event) >= count or self.ended, deadline_s)
            if self.count(event) < count:
                errors = [line for line in self.seen if line["level"] in ("error", "critical")]
                why = "the daemon's output ended" if self.ended else f"{deadline_s} s passed"
                raise AssertionError(f"fewer than {count} {event!r} lines ({why}): {errors}")

    def until(self, event: str, deadline_s: float = DEADLINE_S) -> list[dict[str, Any]]:
        """The lines seen up to the next `event` line after the one the last call
        returned at (the first one, at the first call)."""

        def found() -> int | None:
            for index in range(self._cursor, len(self.seen)):
                if self.seen[index]["event"] == event:
                    return index
            return None

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self.ended, deadline_s)
            index = found()
            if index is None:
                why = "the daemon's output ended" if self.ended else f"{deadline_s} s passed"
                raise AssertionError(f"no {event!r} line ({why}): {self.seen[-5:]}")
            self._cursor = index + 1
            return self.seen

    def close(self) -> None:
        self._thread.join(timeout=DEADLINE_S)
