"""Objects and fields the simulator knows: the seeded standard objects and custom additions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from .ids import is_valid_prefix


class FieldType(StrEnum):
    ID = "id"
    STRING = "string"
    TEXTAREA = "textarea"
    PHONE = "phone"
    EMAIL = "email"
    URL = "url"
    PICKLIST = "picklist"
    BOOLEAN = "boolean"
    INT = "int"
    DOUBLE = "double"
    CURRENCY = "currency"
    DATE = "date"
    DATETIME = "datetime"
    REFERENCE = "reference"


TEXT_TYPES = frozenset(
    {
        FieldType.STRING,
        FieldType.TEXTAREA,
        FieldType.PHONE,
        FieldType.EMAIL,
        FieldType.URL,
        FieldType.PICKLIST,
    }
)
NUMBER_TYPES = frozenset({FieldType.INT, FieldType.DOUBLE, FieldType.CURRENCY})
ID_TYPES = frozenset({FieldType.ID, FieldType.REFERENCE})

Record = dict[str, Any]
Formula = Callable[[Mapping[str, Any]], Any]

SYSTEM_DATES = ("CreatedDate", "LastModifiedDate", "SystemModstamp")


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: FieldType
    required: bool = False
    read_only: bool = False
    system: bool = False
    external_id: bool = False
    unique: bool = False
    reference_to: str | None = None
    default: Any = None
    length: int | None = None
    name_field: bool = False
    autonumber: bool = False
    formula: Formula | None = field(default=None, compare=False)

    @property
    def writable(self) -> bool:
        return not (self.system or self.read_only or self.autonumber or self.formula)

    @property
    def relationship_name(self) -> str | None:
        """Contact.AccountId -> "Account"; Foo__c -> "Foo__r"."""
        if self.type is not FieldType.REFERENCE:
            return None
        if self.name.lower().endswith("__c"):
            return self.name[:-3] + "__r"
        if self.name.lower().endswith("id") and len(self.name) > 2:
            return self.name[:-2]
        return None


@dataclass
class ObjectDef:
    name: str
    prefix: str
    fields: dict[str, FieldDef] = field(default_factory=dict)

    def field(self, name: str) -> FieldDef | None:
        return self.fields.get(name.lower())

    def add(self, fd: FieldDef) -> None:
        self.fields[fd.name.lower()] = fd

    def relationship(self, name: str) -> FieldDef | None:
        wanted = name.lower()
        for fd in self.fields.values():
            rel = fd.relationship_name
            if rel is not None and rel.lower() == wanted:
                return fd
        return None

    @property
    def field_list(self) -> list[FieldDef]:
        """Fields in describe order: Id, the object's own fields, then system stamps."""
        head = [fd for fd in self.fields.values() if fd.name == "Id"]
        tail = [fd for fd in self.fields.values() if fd.system and fd.name != "Id"]
        body = [fd for fd in self.fields.values() if not fd.system]
        return head + body + tail


class SchemaError(ValueError):
    """A control-API schema request that cannot be applied."""


def _system_fields() -> list[FieldDef]:
    return [
        FieldDef("Id", FieldType.ID, system=True),
        FieldDef("IsDeleted", FieldType.BOOLEAN, system=True, default=False),
        *(FieldDef(name, FieldType.DATETIME, system=True) for name in SYSTEM_DATES),
    ]


def _full_name(record: Mapping[str, Any]) -> str | None:
    parts = [record.get("FirstName"), record.get("LastName")]
    text = " ".join(p for p in parts if p)
    return text or None


def _is_closed(record: Mapping[str, Any]) -> bool:
    return str(record.get("Status") or "").lower() == "closed"


def _text(name: str, length: int = 255, **kw: Any) -> FieldDef:
    return FieldDef(name, FieldType.STRING, length=length, **kw)


def _ref(name: str, target: str) -> FieldDef:
    return FieldDef(name, FieldType.REFERENCE, reference_to=target)


def _standard_objects() -> list[tuple[str, str, list[FieldDef]]]:
    t = FieldType
    return [
        (
            "Account",
            "001",
            [
                _text("Name", required=True, name_field=True),
                FieldDef("Phone", t.PHONE, length=40),
                FieldDef("Website", t.URL, length=255),
                FieldDef("Industry", t.PICKLIST, length=255),
                FieldDef("Type", t.PICKLIST, length=255),
                _text("BillingCity", 40),
                FieldDef("AnnualRevenue", t.CURRENCY),
                FieldDef("NumberOfEmployees", t.INT),
                _text("External_Id__c", external_id=True, unique=True),
            ],
        ),
        (
            "Contact",
            "003",
            [
                _text("FirstName", 40, name_field=True),
                _text("LastName", 80, required=True, name_field=True),
                _text("Name", 121, read_only=True, name_field=True, formula=_full_name),
                FieldDef("Email", t.EMAIL, length=80),
                FieldDef("Phone", t.PHONE, length=40),
                FieldDef("MobilePhone", t.PHONE, length=40),
                _ref("AccountId", "Account"),
                FieldDef("Birthdate", t.DATE),
                _text("Ext_Id__c", external_id=True, unique=True),
            ],
        ),
        (
            "Case",
            "500",
            [
                _text("CaseNumber", 30, autonumber=True, name_field=True),
                _text("Subject", name_field=True),
                FieldDef("Description", t.TEXTAREA, length=32000),
                FieldDef("Status", t.PICKLIST, length=255, default="New"),
                FieldDef("Priority", t.PICKLIST, length=255, default="Medium"),
                FieldDef("Origin", t.PICKLIST, length=255),
                _ref("ContactId", "Contact"),
                _ref("AccountId", "Account"),
                FieldDef("IsClosed", t.BOOLEAN, read_only=True, formula=_is_closed),
            ],
        ),
        (
            "Lead",
            "00Q",
            [
                _text("FirstName", 40, name_field=True),
                _text("LastName", 80, required=True, name_field=True),
                _text("Name", 121, read_only=True, name_field=True, formula=_full_name),
                _text("Company", required=True, name_field=True),
                FieldDef("Email", t.EMAIL, length=80),
                FieldDef("Phone", t.PHONE, length=40),
                FieldDef("Status", t.PICKLIST, length=255, default="Open - Not Contacted"),
            ],
        ),
        (
            "Opportunity",
            "006",
            [
                _text("Name", 120, required=True, name_field=True),
                FieldDef("StageName", t.PICKLIST, length=255, required=True),
                FieldDef("CloseDate", t.DATE, required=True),
                FieldDef("Amount", t.CURRENCY),
                _ref("AccountId", "Account"),
            ],
        ),
    ]


def parse_field_type(spec: str) -> tuple[FieldType, str | None]:
    """ "string" -> (STRING, None); "reference:Account" -> (REFERENCE, "Account")."""
    kind, _, target = spec.partition(":")
    try:
        ftype = FieldType(kind.strip().lower())
    except ValueError:
        raise SchemaError(f"unknown field type {spec!r}") from None
    if ftype is FieldType.REFERENCE and not target:
        raise SchemaError(f"reference field type needs a target object: {spec!r}")
    if ftype is FieldType.ID:
        raise SchemaError("only the system Id field has type id")
    return ftype, target.strip() or None


class Schema:
    def __init__(self) -> None:
        self._objects: dict[str, ObjectDef] = {}

    def get(self, name: str) -> ObjectDef | None:
        return self._objects.get(name.lower())

    def by_prefix(self, prefix: str) -> ObjectDef | None:
        return next((o for o in self._objects.values() if o.prefix == prefix), None)

    def objects(self) -> list[ObjectDef]:
        return list(self._objects.values())

    def add_object(self, name: str, prefix: str, fields: Iterable[FieldDef]) -> ObjectDef:
        obj = ObjectDef(name, prefix)
        for fd in _system_fields():
            obj.add(fd)
        for fd in fields:
            obj.add(fd)
        self._objects[name.lower()] = obj
        return obj

    def next_custom_prefix(self) -> str:
        used = {o.prefix for o in self._objects.values()}
        for n in range(1, 36 * 36):
            prefix = f"a{_B36[n // 36]}{_B36[n % 36]}"
            if prefix not in used:
                return prefix
        raise SchemaError("no custom key prefix left")

    def define(
        self,
        name: str,
        prefix: str | None,
        fields: Mapping[str, str],
        required: Iterable[str] = (),
        external_ids: Iterable[str] = (),
        unique: Iterable[str] = (),
    ) -> ObjectDef:
        """Add an object, or extend an existing one with more fields (control API)."""
        defined = {f.lower() for f in fields}
        obj = self.get(name)
        if obj is None:
            if prefix is None:
                prefix = self.next_custom_prefix()
            if not is_valid_prefix(prefix):
                raise SchemaError(f"bad key prefix {prefix!r}: three letters or digits")
            owner = self.by_prefix(prefix)
            if owner is not None:
                raise SchemaError(f"key prefix {prefix} already belongs to {owner.name}")
            obj = self.add_object(name, prefix, [])
            if "name" not in defined:
                obj.add(_text("Name", 80, name_field=True))
        elif prefix is not None and prefix != obj.prefix:
            raise SchemaError(f"{obj.name} already has key prefix {obj.prefix}")
        req = {r.lower() for r in required}
        ext = {e.lower() for e in external_ids}
        uniq = {u.lower() for u in unique}
        for fname, spec in fields.items():
            existing = obj.field(fname)
            if existing is not None and (existing.system or not existing.writable):
                raise SchemaError(f"field {existing.name} can't be redefined")
            ftype, target = parse_field_type(spec)
            target_obj = self.get(target) if target is not None else None
            if target is not None and target_obj is None:
                raise SchemaError(f"reference target {target!r} is not an object")
            key = fname.lower()
            obj.add(
                FieldDef(
                    fname,
                    ftype,
                    required=key in req,
                    external_id=key in ext,
                    unique=key in uniq,
                    reference_to=target_obj.name if target_obj is not None else None,
                    length=_default_length(ftype),
                    name_field=key == "name",
                    default=False if ftype is FieldType.BOOLEAN else None,
                )
            )
        for fname in (*req, *ext, *uniq):
            fd = obj.field(fname)
            if fd is None:
                raise SchemaError(f"no field {fname!r} on {obj.name}")
            if fname not in defined:
                obj.add(
                    replace(
                        fd,
                        required=fd.required or fname in req,
                        external_id=fd.external_id or fname in ext,
                        unique=fd.unique or fname in uniq,
                    )
                )
        return obj


_B36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _default_length(ftype: FieldType) -> int | None:
    if ftype is FieldType.TEXTAREA:
        return 32000
    if ftype in TEXT_TYPES:
        return 255
    return None


def default_schema() -> Schema:
    schema = Schema()
    for name, prefix, fields in _standard_objects():
        schema.add_object(name, prefix, fields)
    return schema
