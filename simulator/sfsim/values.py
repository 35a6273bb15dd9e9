"""Field values: JSON input checked and converted per field type, dates in Salesforce format."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Any

from .errors import SfError, json_parser_error
from .ids import normalize_id
from .schema import TEXT_TYPES, FieldDef, FieldType

_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)(Z|[+-]\d{2}:?\d{2})?"
)


def now_utc() -> datetime:
    return datetime.now(UTC)


def format_datetime(moment: datetime) -> str:
    """Salesforce's wire format: 2026-11-29T07:51:15.000+0000 (always UTC)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> datetime | None:
    """Parse an ISO-8601 date-time; no offset means UTC. None when not a date-time."""
    match = _DATETIME_RE.fullmatch(text)
    if match is None:
        return None
    day, clock, zone = match.groups()
    if zone is None or zone == "Z":
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    if "." in clock:
        whole, frac = clock.split(".")
        clock = f"{whole}.{frac[:6].ljust(6, '0')}"
    try:
        return datetime.fromisoformat(f"{day}T{clock}{zone}").astimezone(UTC)
    except ValueError:
        return None


def parse_date(text: str) -> date | None:
    if not _DATE_RE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _json_token(raw: Any) -> str:
    if isinstance(raw, bool):
        return "VALUE_TRUE" if raw else "VALUE_FALSE"
    if isinstance(raw, int):
        return "VALUE_NUMBER_INT"
    if isinstance(raw, float):
        return "VALUE_NUMBER_FLOAT"
    if isinstance(raw, str):
        return "VALUE_STRING"
    if isinstance(raw, list):
        return "START_ARRAY"
    return "START_OBJECT"


def _cannot_deserialize(kind: str, raw: Any) -> SfError:
    shown = raw if isinstance(raw, str | int | float) else _json_token(raw)
    return json_parser_error(
        f"Cannot deserialize instance of {kind} from {_json_token(raw)} value {shown} "
        "or request may be missing a required field"
    )


def _wrong_type(fd: FieldDef, raw: Any) -> SfError:
    return SfError(
        400,
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        f"{fd.name}: value not of required type: {raw}",
        [fd.name],
    )


def coerce(fd: FieldDef, raw: Any) -> Any:
    """Convert one JSON value for field `fd`, raising SfError the way Salesforce does."""
    if isinstance(raw, list | dict):
        raise _cannot_deserialize(_kind_name(fd), raw)
    if raw is None or (raw == "" and fd.type is not FieldType.BOOLEAN):
        return False if fd.type is FieldType.BOOLEAN else None
    if fd.type in TEXT_TYPES:
        return _text(fd, raw)
    if fd.type is FieldType.BOOLEAN:
        return _boolean(fd, raw)
    if fd.type is FieldType.INT:
        return _int(fd, raw)
    if fd.type in (FieldType.DOUBLE, FieldType.CURRENCY):
        return _double(fd, raw)
    if fd.type is FieldType.DATE:
        return _date(fd, raw)
    if fd.type is FieldType.DATETIME:
        return _datetime(fd, raw)
    return _reference(fd, raw)


def _kind_name(fd: FieldDef) -> str:
    return {
        FieldType.BOOLEAN: "boolean",
        FieldType.INT: "int",
        FieldType.DOUBLE: "double",
        FieldType.CURRENCY: "double",
        FieldType.DATE: "date",
        FieldType.DATETIME: "datetime",
    }.get(fd.type, "String")


def _text(fd: FieldDef, raw: Any) -> str:
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, float) and raw.is_integer():
        text = str(int(raw))
    else:
        text = str(raw)
    if fd.length is not None and len(text) > fd.length:
        raise SfError(
            400,
            "STRING_TOO_LONG",
            f"{fd.name}: data value too large: {text[:40]} (max length={fd.length})",
            [fd.name],
        )
    if fd.type is FieldType.EMAIL and not _EMAIL_RE.fullmatch(text):
        raise SfError(
            400,
            "INVALID_EMAIL_ADDRESS",
            f"{fd.name}: invalid email address: {text}",
            [fd.name],
        )
    return text


def _boolean(fd: FieldDef, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise _cannot_deserialize("boolean", raw)
    raise _wrong_type(fd, raw)


def _int(fd: FieldDef, raw: Any) -> int:
    if isinstance(raw, bool):
        raise _wrong_type(fd, raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if raw.is_integer():
            return int(raw)
        raise _wrong_type(fd, raw)
    if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
        return int(raw)
    raise _cannot_deserialize("int", raw)


def _double(fd: FieldDef, raw: Any) -> float:
    if isinstance(raw, bool):
        raise _wrong_type(fd, raw)
    if isinstance(raw, int | float) or (isinstance(raw, str) and _NUMBER_RE.fullmatch(raw.strip())):
        value = float(raw)
    else:
        raise _cannot_deserialize("double", raw)
    if not math.isfinite(value):
        raise _wrong_type(fd, raw)
    return value


def _date(fd: FieldDef, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _wrong_type(fd, raw)
    parsed = parse_date(raw)
    if parsed is None:
        moment = parse_datetime(raw)
        if moment is None:
            raise json_parser_error(
                f"Cannot deserialize instance of date from VALUE_STRING value {raw} "
                "or value out of range"
            )
        parsed = moment.date()
    return parsed.isoformat()


def _datetime(fd: FieldDef, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _wrong_type(fd, raw)
    moment = parse_datetime(raw)
    if moment is None:
        day = parse_date(raw)
        if day is None:
            raise json_parser_error(
                f"Cannot deserialize instance of datetime from VALUE_STRING value {raw} "
                "or value out of range"
            )
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return format_datetime(moment)


def _reference(fd: FieldDef, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _cannot_deserialize("String", raw)
    normal = normalize_id(raw)
    if normal is None:
        raise SfError(
            400,
            "MALFORMED_ID",
            f"{fd.name}: id value of incorrect type: {raw}",
            [fd.name],
        )
    return normal


def stored_date(value: Any) -> date | None:
    return parse_date(value) if isinstance(value, str) else None


def stored_datetime(value: Any) -> datetime | None:
    return parse_datetime(value) if isinstance(value, str) else None
