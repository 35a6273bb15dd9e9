"""Binding a parsed SOQL query to the schema and running it against the record store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from .ids import normalize_id
from .records import RecordStore
from .schema import (
    ID_TYPES,
    NUMBER_TYPES,
    TEXT_TYPES,
    FieldDef,
    FieldType,
    ObjectDef,
    Record,
    Schema,
)
from .soql import BoolOp, Comparison, Condition, FieldPath, Literal, Not, OrderItem, SoqlQuery
from .soql_lexer import SoqlError, located
from .values import stored_date, stored_datetime

Predicate = Callable[[Record], bool]
UrlFor = Callable[[ObjectDef, str], str]

_NO_COLUMN_HINT = (
    "If you are attempting to use a custom field, be sure to append the '__c' after the custom "
    "field name. Please reference your WSDL or the describe call for the appropriate names."
)
_NO_RELATION_HINT = (
    "If you are attempting to use a custom relationship, be sure to append the '__r' after the "
    "custom relationship name. Please reference your WSDL or the describe call for the "
    "appropriate names."
)
_NO_TYPE_HINT = (
    "If you are attempting to use a custom object, be sure to append the '__c' after the entity "
    "name. Please reference your WSDL or the describe call for the appropriate names."
)


@dataclass(frozen=True)
class Column:
    """A resolved field path: `field` on `obj`, reached from the base object via `via`."""

    path: FieldPath
    field: FieldDef
    obj: ObjectDef
    via: FieldDef | None = None


def resolve_object(schema: Schema, name: str, text: str, pos: int) -> ObjectDef:
    obj = schema.get(name)
    if obj is None:
        raise SoqlError(
            "INVALID_TYPE",
            located(text, pos, f"sObject type '{name}' is not supported. {_NO_TYPE_HINT}"),
        )
    return obj


def no_column(name: str, obj: ObjectDef) -> str:
    return f"No such column '{name}' on entity '{obj.name}'. {_NO_COLUMN_HINT}"


def resolve_column(schema: Schema, base: ObjectDef, path: FieldPath, text: str) -> Column:
    parts = path.parts
    if len(parts) == 1:
        fd = base.field(parts[0])
        if fd is None:
            raise SoqlError("INVALID_FIELD", located(text, path.pos, no_column(parts[0], base)))
        return Column(path, fd, base)
    via = base.relationship(parts[0]) if len(parts) == 2 else None
    target = schema.get(via.reference_to or "") if via is not None else None
    if via is None or target is None:
        raise SoqlError(
            "INVALID_FIELD",
            located(
                text,
                path.pos,
                f"Didn't understand relationship '{parts[0]}' in field path. {_NO_RELATION_HINT}",
            ),
        )
    fd = target.field(parts[1])
    if fd is None:
        raise SoqlError("INVALID_FIELD", located(text, path.pos, no_column(parts[1], target)))
    return Column(path, fd, target, via)


class Evaluator:
    """Compiles conditions and orderings for one base object."""

    def __init__(self, schema: Schema, store: RecordStore, base: ObjectDef, text: str) -> None:
        self.schema = schema
        self.store = store
        self.base = base
        self.text = text

    def column(self, path: FieldPath) -> Column:
        return resolve_column(self.schema, self.base, path, self.text)

    def raw_value(self, column: Column, record: Record) -> Any:
        if column.via is None:
            return record.get(column.field.name)
        parent = self.parent(column, record)
        return parent.get(column.field.name) if parent is not None else None

    def parent(self, column: Column, record: Record) -> Record | None:
        assert column.via is not None
        parent_id = record.get(column.via.name)
        parent = self.store.get(column.obj, parent_id) if isinstance(parent_id, str) else None
        return parent if parent is not None and not parent["IsDeleted"] else None

    # ---- WHERE -------------------------------------------------------------------------------
    def predicate(self, cond: Condition) -> Predicate:
        if isinstance(cond, Not):
            inner = self.predicate(cond.item)
            return lambda rec: not inner(rec)
        if isinstance(cond, BoolOp):
            parts = [self.predicate(item) for item in cond.items]
            if cond.op == "AND":
                return lambda rec: all(p(rec) for p in parts)
            return lambda rec: any(p(rec) for p in parts)
        return self._comparison(cond)

    def _comparison(self, cond: Comparison) -> Predicate:
        column = self.column(cond.field)
        ftype = column.field.type
        values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        for literal in values:
            self._check_literal(column, literal, cond.op)

        def get(rec: Record) -> Any:
            return _normalize(ftype, self.raw_value(column, rec))

        if cond.op == "LIKE":
            assert isinstance(cond.value, Literal)
            pattern = cond.value.like_pattern
            assert pattern is not None
            return lambda rec: (v := get(rec)) is not None and bool(pattern.fullmatch(str(v)))
        if cond.op in ("IN", "NOT IN"):
            # `IN (null)` never matches: a null in the list is no value to compare with.
            listed = [lit for lit in values if lit.kind != "null"]
            if all(lit.kind != "date_keyword" for lit in listed):
                # Equality with plain values: one set, the record's value read once.
                wanted = {_literal_value(ftype, lit) for lit in listed} - {None}

                def listed_in(rec: Record) -> bool:
                    value = get(rec)
                    return value is not None and value in wanted

                if cond.op == "IN":
                    return listed_in
                return lambda rec: not listed_in(rec)
            tests = [_compare(ftype, "=", lit) for lit in listed]

            def any_test(rec: Record) -> bool:
                value = get(rec)
                return any(t(value) for t in tests)

            if cond.op == "IN":
                return any_test
            return lambda rec: not any_test(rec)
        assert isinstance(cond.value, Literal)
        test = _compare(ftype, cond.op, cond.value)
        return lambda rec: test(get(rec))

    def _check_literal(self, column: Column, literal: Literal, op: str) -> None:
        fd = column.field
        name = column.path.text
        if op == "LIKE" and fd.type not in TEXT_TYPES | ID_TYPES:
            raise SoqlError(
                "INVALID_FIELD",
                located(self.text, literal.pos, f"invalid operator on field '{name}': LIKE"),
            )
        kind = literal.kind
        if kind == "null":
            return
        expected = _expected_kinds(fd.type)
        if kind in expected:
            if fd.type in ID_TYPES and normalize_id(str(literal.value)) is None and op != "LIKE":
                raise SoqlError(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    located(self.text, literal.pos, f"invalid ID field: {literal.value}"),
                )
            return
        if fd.type in TEXT_TYPES | ID_TYPES:
            detail = "must be of type string and should be enclosed in quotes"
        else:
            detail = f"must be of type {_type_word(fd.type)} and should not be enclosed in quotes"
        raise SoqlError(
            "INVALID_FIELD",
            located(
                self.text, literal.pos, f"value of filter criterion for field '{name}' {detail}"
            ),
        )

    # ---- ORDER BY ----------------------------------------------------------------------------
    def sort(self, records: list[Record], order_by: Sequence[OrderItem]) -> list[Record]:
        out = list(records)
        for item in reversed(order_by):
            column = self.column(item.field)
            ftype = column.field.type
            null_rank = 1 if item.nulls_last != item.descending else 0

            def key(
                rec: Record,
                column: Column = column,
                ftype: FieldType = ftype,
                null_rank: int = null_rank,
            ) -> tuple[int, Any]:
                value = _normalize(ftype, self.raw_value(column, rec))
                if value is None:
                    return (null_rank, None)
                return (1 - null_rank, value)

            out.sort(key=key, reverse=item.descending)
        return out

    # ---- SELECT ------------------------------------------------------------------------------
    def project(self, record: Record, columns: Sequence[Column], url_for: UrlFor) -> Record:
        out: Record = {"attributes": _attributes(self.base, record, url_for)}
        for column in columns:
            if column.via is None:
                out[column.field.name] = record.get(column.field.name)
                continue
            rel = column.via.relationship_name or column.via.name
            parent = self.parent(column, record)
            if parent is None:
                out[rel] = None
                continue
            if rel not in out:
                out[rel] = {"attributes": _attributes(column.obj, parent, url_for)}
            out[rel][column.field.name] = parent.get(column.field.name)
        return out


def _attributes(obj: ObjectDef, record: Record, url_for: UrlFor) -> dict[str, str]:
    return {"type": obj.name, "url": url_for(obj, record["Id"])}


def _type_word(ftype: FieldType) -> str:
    return {
        FieldType.INT: "int",
        FieldType.DOUBLE: "double",
        FieldType.CURRENCY: "currency",
        FieldType.BOOLEAN: "boolean",
        FieldType.DATE: "date",
        FieldType.DATETIME: "dateTime",
    }.get(ftype, "string")


def _expected_kinds(ftype: FieldType) -> frozenset[str]:
    if ftype in TEXT_TYPES or ftype in ID_TYPES:
        return frozenset({"string"})
    if ftype in NUMBER_TYPES:
        return frozenset({"number"})
    if ftype is FieldType.BOOLEAN:
        return frozenset({"boolean"})
    if ftype is FieldType.DATE:
        return frozenset({"date", "date_keyword"})
    return frozenset({"datetime", "date_keyword"})


def _normalize(ftype: FieldType, value: Any) -> Any:
    """A stored value in a form that compares the way Salesforce compares it."""
    if value is None:
        return None
    if ftype in TEXT_TYPES:
        return str(value).lower()
    if ftype in NUMBER_TYPES:
        return float(value)
    if ftype is FieldType.DATE:
        return stored_date(value)
    if ftype is FieldType.DATETIME:
        return stored_datetime(value)
    return value


def _literal_value(ftype: FieldType, literal: Literal) -> Any:
    value = literal.value
    if value is None:
        return None
    if ftype in TEXT_TYPES:
        return str(value).lower()
    if ftype in ID_TYPES:
        return normalize_id(str(value))
    if ftype in NUMBER_TYPES:
        assert isinstance(value, int | float)
        return float(value)
    if ftype is FieldType.DATETIME and isinstance(value, datetime):
        return value.astimezone(UTC)
    return value


def _compare(ftype: FieldType, op: str, literal: Literal) -> Callable[[Any], bool]:
    if literal.kind == "date_keyword":
        return _range_test(ftype, op, str(literal.value))
    wanted = _literal_value(ftype, literal)
    if wanted is None:
        if op == "=":
            return lambda v: v is None
        if op == "!=":
            return lambda v: v is not None
        return lambda v: False
    ops: dict[str, Callable[[Any], bool]] = {
        "=": lambda v: v is not None and v == wanted,
        "!=": lambda v: v is None or v != wanted,
        "<": lambda v: v is not None and v < wanted,
        "<=": lambda v: v is not None and v <= wanted,
        ">": lambda v: v is not None and v > wanted,
        ">=": lambda v: v is not None and v >= wanted,
    }
    return ops[op]


def date_range(keyword: str, today: date | None = None) -> tuple[date, date]:
    """[start, end) of a date keyword such as TODAY or LAST_N_DAYS:7 (UTC days)."""
    today = today or datetime.now(UTC).date()
    name, _, number = keyword.partition(":")
    days = int(number) if number else 0
    day = timedelta(days=1)
    ranges = {
        "TODAY": (today, today + day),
        "YESTERDAY": (today - day, today),
        "TOMORROW": (today + day, today + 2 * day),
        "LAST_N_DAYS": (today - days * day, today + day),
        "NEXT_N_DAYS": (today + day, today + (days + 1) * day),
    }
    return ranges[name]


def _range_test(ftype: FieldType, op: str, keyword: str) -> Callable[[Any], bool]:
    start_day, end_day = date_range(keyword)
    start: date | datetime = start_day
    end: date | datetime = end_day
    if ftype is FieldType.DATETIME:
        start = datetime.combine(start_day, time(), UTC)
        end = datetime.combine(end_day, time(), UTC)
    tests: dict[str, Callable[[Any], bool]] = {
        "=": lambda v: start <= v < end,
        "!=": lambda v: not start <= v < end,
        "<": lambda v: v < start,
        "<=": lambda v: v < end,
        ">": lambda v: v >= end,
        ">=": lambda v: v >= start,
    }
    test = tests[op]
    if op == "!=":
        return lambda v: v is None or test(v)
    return lambda v: v is not None and test(v)


@dataclass
class QueryResult:
    total: int
    records: list[Record]


def run_soql(
    schema: Schema,
    store: RecordStore,
    query: SoqlQuery,
    *,
    include_deleted: bool,
    url_for: UrlFor,
) -> QueryResult:
    base = resolve_object(schema, query.sobject, query.text, query.sobject_pos)
    ev = Evaluator(schema, store, base, query.text)
    columns = [ev.column(path) for path in query.fields]
    columns = _dedupe(columns)
    keep = ev.predicate(query.where) if query.where is not None else None
    for item in query.order_by:
        ev.column(item.field)
    if query.offset is not None and query.offset > 2000:
        raise SoqlError("NUMBER_OUTSIDE_VALID_RANGE", "Maximum SOQL offset allowed is 2000")
    rows = store.all(base, include_deleted=include_deleted)
    if keep is not None:
        rows = [r for r in rows if keep(r)]
    if query.order_by:
        rows = ev.sort(rows, query.order_by)
    start = query.offset or 0
    stop = None if query.limit is None else start + query.limit
    rows = rows[start:stop]
    if query.count:
        return QueryResult(len(rows), [])
    return QueryResult(len(rows), [ev.project(r, columns, url_for) for r in rows])


def _dedupe(columns: list[Column]) -> list[Column]:
    seen: set[str] = set()
    out = []
    for column in columns:
        key = column.path.text.lower()
        if key in seen:
            raise SoqlError("MALFORMED_QUERY", f"duplicate field selected: {column.path.text}")
        seen.add(key)
        out.append(column)
    return out
