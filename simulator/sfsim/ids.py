"""Salesforce record ids: key prefixes, the 15/18-character forms and the case-safe checksum."""

from __future__ import annotations

import re
import string

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
CHECKSUM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
POD = "5g0"

_ID_RE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_PREFIX_RE = re.compile(r"[A-Za-z0-9]{3}")


def to_18(id15: str) -> str:
    """Append the case-safe checksum to a 15-character id."""
    if len(id15) != 15 or not _ID_RE.fullmatch(id15):
        raise ValueError(f"not a 15-character id: {id15!r}")
    suffix = []
    for start in (0, 5, 10):
        bits = 0
        for offset, char in enumerate(id15[start : start + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << offset
        suffix.append(CHECKSUM_ALPHABET[bits])
    return id15 + "".join(suffix)


def normalize_id(value: str) -> str | None:
    """The canonical 18-character form of a 15- or 18-character id, or None when malformed.

    15-character ids are case-sensitive. 18-character ids are case-insensitive: the checksum
    says which of the first 15 characters are upper case, so their case is restored from it.
    """
    if not _ID_RE.fullmatch(value):
        return None
    if len(value) == 15:
        return to_18(value)
    chars = list(value[:15])
    for chunk, check in enumerate(value[15:]):
        bits = CHECKSUM_ALPHABET.find(check.upper())
        if bits < 0:
            return None
        for offset in range(5):
            pos = chunk * 5 + offset
            upper = bool(bits >> offset & 1)
            if chars[pos].isalpha():
                chars[pos] = chars[pos].upper() if upper else chars[pos].lower()
            elif upper:
                return None
    return to_18("".join(chars))


def is_valid_prefix(prefix: str) -> bool:
    return bool(_PREFIX_RE.fullmatch(prefix))


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(BASE62[rem])
    return "".join(reversed(digits)).rjust(width, "0")


class IdFactory:
    """Hands out realistic, never repeating 18-character ids."""

    def __init__(self, start: int = 1_000_000_000_000) -> None:
        self._counter = start

    def new(self, prefix: str) -> str:
        if not is_valid_prefix(prefix):
            raise ValueError(f"bad key prefix: {prefix!r}")
        body = POD + _base62(self._counter, 9)
        self._counter += 1
        return to_18(prefix + body)
