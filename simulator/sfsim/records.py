"""The record store: inserts, updates and soft deletes validated like Salesforce does."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import SfError, invalid_field, json_parser_error, not_found
from .ids import IdFactory
from .schema import SYSTEM_DATES, TEXT_TYPES, FieldDef, FieldType, ObjectDef, Record, Schema
from .values import coerce, format_datetime, now_utc

# Fields the control API may set when seeding (to build history), but REST callers may not.
SEEDABLE = frozenset(name.lower() for name in (*SYSTEM_DATES, "IsDeleted"))


def _unique_key(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


@dataclass(frozen=True)
class Snapshot:
    data: tuple[
        dict[str, dict[str, Record]],
        dict[tuple[str, str], dict[Any, str]],
        dict[tuple[str, str], int],
    ]


class RecordStore:
    def __init__(self, schema: Schema, ids: IdFactory) -> None:
        self._schema = schema
        self._ids = ids
        self._records: dict[str, dict[str, Record]] = {}
        self._unique: dict[tuple[str, str], dict[Any, str]] = {}
        self._autonumbers: dict[tuple[str, str], int] = {}

    # ---- reads -------------------------------------------------------------------------------
    def get(self, obj: ObjectDef, record_id: str) -> Record | None:
        return self._records.get(obj.name.lower(), {}).get(record_id)

    def live(self, obj: ObjectDef, record_id: str) -> Record:
        """The record, or SfError 404 NOT_FOUND / ENTITY_IS_DELETED as Salesforce answers."""
        current = self.get(obj, record_id)
        if current is None:
            raise not_found()
        if current["IsDeleted"]:
            raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted")
        return current

    def all(self, obj: ObjectDef, include_deleted: bool = False) -> list[Record]:
        rows = self._records.get(obj.name.lower(), {}).values()
        return [r for r in rows if include_deleted or not r["IsDeleted"]]

    def find_by_external_id(self, obj: ObjectDef, fd: FieldDef, value: str) -> list[Record]:
        """Live records whose `fd` equals `value` (case-insensitive for text)."""
        if fd.type is FieldType.ID:
            rec = self.get(obj, value)
            return [rec] if rec is not None and not rec["IsDeleted"] else []
        if fd.unique:
            found = self._unique.get((obj.name.lower(), fd.name.lower()), {}).get(
                _unique_key(value)
            )
            rec = self.get(obj, found) if found else None
            return [rec] if rec is not None else []
        return [r for r in self.all(obj) if _same_value(fd, r.get(fd.name), value)]

    def backfill(self, obj: ObjectDef) -> None:
        """Give existing records the defaults of fields added to their object later."""
        for record in self._records.get(obj.name.lower(), {}).values():
            for fd in obj.fields.values():
                record.setdefault(fd.name, fd.default)

    # ---- transactions (composite allOrNone) ---------------------------------------------------
    def snapshot(self) -> Snapshot:
        """A copy of every record, index and counter, for restore() to roll back to."""
        return Snapshot(copy.deepcopy((self._records, self._unique, self._autonumbers)))

    def restore(self, snapshot: Snapshot) -> None:
        self._records, self._unique, self._autonumbers = snapshot.data

    # ---- writes ------------------------------------------------------------------------------
    def insert(self, obj: ObjectDef, body: Any, *, seeding: bool = False) -> str:
        return self.insert_many(obj, [body], seeding=seeding)[0]

    def insert_many(
        self, obj: ObjectDef, bodies: Iterable[Any], *, seeding: bool = False
    ) -> list[str]:
        """Validate every body first, then write them all (nothing is written on an error)."""
        stamp = format_datetime(now_utc())
        prepared: list[Record] = []
        batch_unique: dict[tuple[str, Any], str] = {}
        for body in bodies:
            changes = self._changes(obj, body, seeding=seeding)
            record: Record = {fd.name: fd.default for fd in obj.field_list}
            record.update(changes)
            record["Id"] = self._ids.new(obj.prefix)
            for name in SYSTEM_DATES:
                record[name] = changes.get(name) or stamp
            self._finish(obj, record)
            self._check_unique(obj, record, batch_unique)
            prepared.append(record)
        table = self._records.setdefault(obj.name.lower(), {})
        for record in prepared:
            for fd in obj.fields.values():
                if fd.autonumber:
                    record[fd.name] = self._next_autonumber(obj, fd)
            table[record["Id"]] = record
            self._index(obj, record)
        return [r["Id"] for r in prepared]

    def update(self, obj: ObjectDef, record_id: str, body: Any) -> None:
        current = self.live(obj, record_id)
        changes = self._changes(obj, body, seeding=False)
        record = {**current, **changes}
        self._finish(obj, record)
        self._check_unique(obj, record, {})
        stamp = format_datetime(now_utc())
        record["LastModifiedDate"] = record["SystemModstamp"] = stamp
        self._unindex(obj, current)
        current.clear()
        current.update(record)
        self._index(obj, current)

    def delete(self, obj: ObjectDef, record_id: str) -> None:
        current = self.live(obj, record_id)
        self._unindex(obj, current)
        current["IsDeleted"] = True
        current["LastModifiedDate"] = current["SystemModstamp"] = format_datetime(now_utc())

    # ---- validation --------------------------------------------------------------------------
    def _changes(self, obj: ObjectDef, body: Any, *, seeding: bool) -> Record:
        if not isinstance(body, Mapping):
            raise json_parser_error(
                f"Cannot deserialize instance of {obj.name} from "
                f"{'START_ARRAY' if isinstance(body, list) else 'VALUE_STRING'} value "
                "or request may be missing a required field"
            )
        known: list[tuple[FieldDef, Any]] = []
        for key, raw in body.items():
            if key == "attributes" and isinstance(raw, Mapping):
                continue
            fd = obj.field(str(key))
            if fd is None:
                raise invalid_field(str(key), obj.name)
            known.append((fd, raw))
        locked = [
            fd.name
            for fd, _ in known
            if not fd.writable and not (seeding and fd.name.lower() in SEEDABLE)
        ]
        if locked:
            raise SfError(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(locked)}. Please check the security "
                "settings of this field and verify that it is read/write for your profile or "
                "permission set.",
                locked,
            )
        changes: Record = {}
        for fd, raw in known:
            value = coerce(fd, raw)
            if fd.type is FieldType.REFERENCE and value is not None:
                self._check_reference(fd, value)
            changes[fd.name] = value
        return changes

    def _check_reference(self, fd: FieldDef, value: str) -> None:
        target = self._schema.get(fd.reference_to or "")
        if target is not None and not value.startswith(target.prefix):
            raise SfError(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                f"{fd.name}: id value of incorrect type: {value}",
                [fd.name],
            )

    def _finish(self, obj: ObjectDef, record: Record) -> None:
        for fd in obj.fields.values():
            if fd.formula is not None:
                record[fd.name] = fd.formula(record)
        missing = [fd.name for fd in obj.field_list if fd.required and record.get(fd.name) is None]
        if missing:
            raise SfError(
                400,
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )

    # ---- unique values and autonumbers -------------------------------------------------------
    def _unique_fields(self, obj: ObjectDef) -> list[FieldDef]:
        return [fd for fd in obj.fields.values() if fd.unique]

    def _check_unique(
        self, obj: ObjectDef, record: Record, batch: dict[tuple[str, Any], str]
    ) -> None:
        for fd in self._unique_fields(obj):
            value = record.get(fd.name)
            if value is None:
                continue
            key = _unique_key(value)
            index = self._unique.get((obj.name.lower(), fd.name.lower()), {})
            owner = index.get(key) or batch.get((fd.name, key))
            if owner is not None and owner != record["Id"]:
                raise SfError(
                    400,
                    "DUPLICATE_VALUE",
                    f"duplicate value found: {fd.name} duplicates value on record with id: {owner}",
                    [],
                )
            batch[(fd.name, key)] = record["Id"]

    def _index(self, obj: ObjectDef, record: Record) -> None:
        if record["IsDeleted"]:
            return
        for fd in self._unique_fields(obj):
            value = record.get(fd.name)
            if value is not None:
                index = self._unique.setdefault((obj.name.lower(), fd.name.lower()), {})
                index[_unique_key(value)] = record["Id"]

    def _unindex(self, obj: ObjectDef, record: Record) -> None:
        for fd in self._unique_fields(obj):
            value = record.get(fd.name)
            index = self._unique.get((obj.name.lower(), fd.name.lower()), {})
            if value is not None and index.get(_unique_key(value)) == record["Id"]:
                del index[_unique_key(value)]

    def _next_autonumber(self, obj: ObjectDef, fd: FieldDef) -> str:
        key = (obj.name.lower(), fd.name.lower())
        number = self._autonumbers.get(key, 1000) + 1
        self._autonumbers[key] = number
        return f"{number:08d}"


def _same_value(fd: FieldDef, stored: Any, wanted: str) -> bool:
    if stored is None:
        return False
    if fd.type in TEXT_TYPES:
        return str(stored).lower() == wanted.lower()
    if isinstance(stored, int | float) and not isinstance(stored, bool):
        try:
            return float(stored) == float(wanted)
        except ValueError:
            return False
    return str(stored) == wanted
