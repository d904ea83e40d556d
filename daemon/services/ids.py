"""Ids as people type them: a whole UUID, or a unique prefix of at least 4 hex digits.

Pure: parsing a prefix into the range of UUIDs it stands for. Which ids exist in that
range is the store's business; what to do with none or several is the services'.
"""

from __future__ import annotations

import dataclasses
import re
import uuid

MIN_PREFIX = 4
_PREFIX = re.compile(r"^[0-9a-f-]+$")
_HYPHENS = (8, 12, 16, 20)  # where canonical UUID text has a hyphen, in hex digits


@dataclasses.dataclass(frozen=True, slots=True)
class TypedId:
    """What a person typed: a whole id, or the bounds of the ids it is a prefix of."""

    text: str
    whole: uuid.UUID | None
    low: str  # canonical UUID text, the prefix padded with 0
    high: str  # ... padded with f


def _canonical(digits: str) -> str:
    parts, start = [], 0
    for end in (*_HYPHENS, 32):
        parts.append(digits[start:end])
        start = end
    return "-".join(parts)


def parse_id(text: str) -> TypedId:
    """A TypedId, or ValueError saying what an id must look like."""
    typed = text.strip().lower()
    try:
        whole = uuid.UUID(typed)
    except ValueError:
        pass
    else:
        return TypedId(text=typed, whole=whole, low=str(whole), high=str(whole))
    digits = typed.replace("-", "")
    if (
        not _PREFIX.match(typed)
        or len(digits) < MIN_PREFIX
        or len(digits) > 32
        # Hyphens are optional, but where typed they sit where a UUID has them.
        or ("-" in typed and _canonical(digits.ljust(32, "0"))[: len(typed)] != typed)
    ):
        raise ValueError(
            f"{text!r} is not a UUID, nor a prefix of one of at least {MIN_PREFIX} hex digits"
        )
    return TypedId(
        text=typed,
        whole=None,
        low=_canonical(digits.ljust(32, "0")),
        high=_canonical(digits.ljust(32, "f")),
    )
