"""Salesforce record ids as Salesforce compares them: a 15-character id (case-sensitive) and its
18-character form (the 15 plus a checksum of where the capitals are; case-insensitive) name the
same record."""

from __future__ import annotations

import re

_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")


def _suffix(id15: str) -> str:
    out = []
    for start in (0, 5, 10):
        bits = sum(1 << i for i, c in enumerate(id15[start : start + 5]) if "A" <= c <= "Z")
        out.append(_CHECKSUM[bits])
    return "".join(out)


def canonical_id(value: str) -> str | None:
    """The 18-character form of a 15- or 18-character id (the case of an 18-character one
    restored from its checksum), or None when `value` is not an id."""
    if not _ID.fullmatch(value):
        return None
    if len(value) == 15:
        return value + _suffix(value)
    chars = list(value[:15])
    for chunk, check in enumerate(value[15:]):
        bits = _CHECKSUM.find(check.upper())
        if bits < 0:
            return None
        for offset in range(5):
            pos = chunk * 5 + offset
            upper = bool(bits >> offset & 1)
            if chars[pos].isalpha():
                chars[pos] = chars[pos].upper() if upper else chars[pos].lower()
            elif upper:
                return None
    id15 = "".join(chars)
    return id15 + _suffix(id15)
