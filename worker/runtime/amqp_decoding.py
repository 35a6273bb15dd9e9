"""Tolerant decoding of message properties and headers, so one odd message cannot cut the
worker's connection.

pamqp (under aiormq) raises while decoding a content header whose timestamp lies past the year
9999, or whose short string (correlation_id, message_id, reply_to, a header name) is not UTF-8.
aiormq then closes the whole connection: every job in flight on it loses its channel, the odd
message is redelivered and cuts the connection again, until the delivery limit dead-letters it,
and its caller never hears back. RabbitMQ itself accepts such messages from any publisher.

`install()` replaces those three decoders, process-wide: such a timestamp reads as absent (the
job's budget then counts from receipt), such a string with U+FFFD replacement characters. The
message reaches the worker, which answers it like any other. The worker installs them at
start-up, before it connects (`Worker.start`); tests/unit/test_library_seams.py checks that
pamqp still decodes through the tables replaced here.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

from pamqp import common, decode

_installed = False


def timestamp(value: bytes) -> tuple[int, datetime.datetime | None]:
    try:
        seconds: float = common.Struct.timestamp.unpack(value[0:8])[0]
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack timestamp value") from err
    if seconds > 0xFFFFFFFF:  # as pamqp: anything past the year 2106 is taken for milliseconds
        seconds /= 1000.0
    try:
        return 8, datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    except (ValueError, OverflowError, OSError):
        return 8, None


def short_str(value: bytes) -> tuple[int, str]:
    try:
        length = common.Struct.byte.unpack(value[0:1])[0]
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err
    return length + 1, value[1 : length + 1].decode("utf-8", "replace")


def field_table(value: bytes) -> tuple[int, dict[str, Any]]:
    """pamqp's field_table, with header names that are not UTF-8 decoded with replacements."""
    try:
        length = common.Struct.integer.unpack(value[0:4])[0]
        offset = 4
        data: dict[str, Any] = {}
        end = offset + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        while offset < end:
            key_length = common.Struct.byte.unpack_from(value, offset)[0]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset : offset + key_length].decode("utf-8", "replace")
            offset += key_length
            consumed, result = decode.embedded_value(value[offset:])
            offset += consumed
            data[key] = result
        return end, data
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err


def install() -> None:
    """Replace pamqp's decoders (once per process)."""
    global _installed
    if _installed:
        return
    decode.METHODS["timestamp"] = timestamp
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["table"] = field_table
    decode.TABLE_MAPPING[b"T"] = timestamp
    decode.TABLE_MAPPING[b"F"] = field_table
    decode.timestamp = timestamp  # type: ignore[assignment]
    decode.short_str = short_str
    decode.field_table = field_table
    _installed = True
