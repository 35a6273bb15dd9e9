"""Running a parsed SOSL search against the record store."""

from __future__ import annotations

from .records import RecordStore
from .schema import TEXT_TYPES, FieldDef, FieldType, ObjectDef, Record, Schema
from .soql import FieldPath
from .soql_eval import Evaluator, UrlFor, resolve_object
from .soql_lexer import SoqlError
from .sosl import Returning, SearchTerm, SoslError, SoslQuery


def _searched_fields(obj: ObjectDef, scope: str) -> list[FieldDef]:
    fields = obj.field_list
    if scope == "NAME":
        return [fd for fd in fields if fd.name_field]
    if scope == "EMAIL":
        return [fd for fd in fields if fd.type is FieldType.EMAIL]
    if scope == "PHONE":
        return [fd for fd in fields if fd.type is FieldType.PHONE]
    return [fd for fd in fields if fd.type in TEXT_TYPES]


def _term_matches(term: SearchTerm, record: Record, fields: list[FieldDef]) -> bool:
    assert term.pattern is not None
    for fd in fields:
        value = record.get(fd.name)
        if value is None:
            continue
        text = str(value)
        if term.pattern.search(text):
            return True
        digits = "".join(c for c in text if c.isdigit())
        if fd.type is FieldType.PHONE and term.digits and term.digits in digits:
            return True
    return False


def _record_matches(query: SoslQuery, record: Record, fields: list[FieldDef]) -> bool:
    return any(
        all(_term_matches(t, record, fields) != t.negated for t in group) for group in query.groups
    )


def run_sosl(
    schema: Schema, store: RecordStore, query: SoslQuery, *, url_for: UrlFor
) -> list[Record]:
    specs = list(query.returning) or [Returning(o.name, 0) for o in schema.objects()]
    results: list[Record] = []
    try:
        for spec in specs:
            results.extend(_search_one(schema, store, query, spec, url_for))
    except SoqlError as err:
        raise SoslError(err.error_code, err.message) from None
    if query.limit is not None:
        results = results[: query.limit]
    return results


def _search_one(
    schema: Schema, store: RecordStore, query: SoslQuery, spec: Returning, url_for: UrlFor
) -> list[Record]:
    obj = resolve_object(schema, spec.sobject, query.text, spec.pos)
    ev = Evaluator(schema, store, obj, query.text)
    paths = spec.fields or (FieldPath("Id", spec.pos),)
    columns = [ev.column(path) for path in paths]
    keep = ev.predicate(spec.where) if spec.where is not None else None
    fields = _searched_fields(obj, query.scope)
    rows = [r for r in store.all(obj) if _record_matches(query, r, fields)]
    if keep is not None:
        rows = [r for r in rows if keep(r)]
    if spec.order_by:
        rows = ev.sort(rows, spec.order_by)
    if spec.limit is not None:
        rows = rows[: spec.limit]
    return [ev.project(r, columns, url_for) for r in rows]
