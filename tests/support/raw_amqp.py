"""Publishing what aio-pika would refuse to encode but other clients send: short strings that
are not UTF-8, timestamps past the year 9999. Patches pamqp's *encoders* in the test process
(`raw_encoding()`); values of the marker types below are written byte for byte."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import Any

from pamqp import common, encode


class RawStr(str):
    """A short string whose wire bytes are `raw` (e.g. not UTF-8)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawStr:
        made = super().__new__(cls, raw.decode("utf-8", "replace"))
        made.raw = raw
        return made

    def __repr__(self) -> str:
        return f"RawStr({self.raw!r})"


class RawTimestamp(datetime.datetime):
    """A timestamp whose wire value is the 64-bit `raw`."""

    raw: int

    def __new__(cls, raw: int) -> RawTimestamp:
        made = super().__new__(cls, 2000, 1, 1, tzinfo=datetime.UTC)
        made.raw = raw
        return made

    def __repr__(self) -> str:
        return f"RawTimestamp({self.raw})"


@contextlib.contextmanager
def raw_encoding() -> Iterator[None]:
    short_string, timestamp = encode.short_string, encode.timestamp

    def raw_short_string(value: Any) -> bytes:
        if isinstance(value, RawStr):
            return common.Struct.byte.pack(len(value.raw)) + value.raw
        return short_string(value)

    def raw_timestamp(value: Any) -> bytes:
        if isinstance(value, RawTimestamp):
            return common.Struct.timestamp.pack(value.raw)
        return timestamp(value)

    saved = dict(encode.METHODS)
    encode.METHODS["shortstr"] = raw_short_string
    encode.METHODS["timestamp"] = raw_timestamp
    encode.short_string = raw_short_string  # type: ignore[assignment]
    encode.timestamp = raw_timestamp  # type: ignore[assignment]
    try:
        yield
    finally:
        encode.METHODS.clear()
        encode.METHODS.update(saved)
        encode.short_string = short_string  # type: ignore[assignment]
        encode.timestamp = timestamp  # type: ignore[assignment]
