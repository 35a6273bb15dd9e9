"""GET /services/data/vNN.N/sobjects/{Type}/describe: the object's metadata as the calling user
sees it (queryable, createable, updateable, deletable come from the user's permissions)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .errors import json_response, not_found
from .middleware import bearer_token
from .routing import SfRequest, state_of
from .schema import FieldDef, FieldType, ObjectDef
from .users import ObjectPermissions

_SOAP_TYPES = {
    FieldType.ID: "tns:ID",
    FieldType.REFERENCE: "tns:ID",
    FieldType.BOOLEAN: "xsd:boolean",
    FieldType.INT: "xsd:int",
    FieldType.DOUBLE: "xsd:double",
    FieldType.CURRENCY: "xsd:double",
    FieldType.DATE: "xsd:date",
    FieldType.DATETIME: "xsd:dateTime",
}


def session_username(request: SfRequest) -> str:
    """The user of the request's (already checked) session."""
    state = state_of(request)
    token = bearer_token(request)
    session = state.auth.access.get(token) if token else None
    return session.username if session is not None else ""


def _field(fd: FieldDef, perms: ObjectPermissions) -> dict[str, Any]:
    return {
        "name": fd.name,
        "label": fd.name.removesuffix("__c").replace("_", " "),
        "type": fd.type.value,
        "soapType": _SOAP_TYPES.get(fd.type, "xsd:string"),
        "length": fd.length or 0,
        "nillable": not (fd.required or fd.system or fd.type is FieldType.BOOLEAN),
        "createable": fd.writable and perms.create,
        "updateable": fd.writable and perms.edit,
        "calculated": fd.formula is not None,
        "autoNumber": fd.autonumber,
        "externalId": fd.external_id,
        "unique": fd.unique,
        "idLookup": fd.type is FieldType.ID or fd.external_id,
        "nameField": fd.name_field and fd.name == "Name",
        "defaultedOnCreate": fd.default is not None or fd.system,
        "referenceTo": [fd.reference_to] if fd.reference_to else [],
        "relationshipName": fd.relationship_name,
    }


def describe_body(obj: ObjectDef, perms: ObjectPermissions, version: str) -> dict[str, Any]:
    base = f"/services/data/{version}/sobjects/{obj.name}"
    custom = obj.name.endswith("__c")
    return {
        "name": obj.name,
        "label": obj.name.removesuffix("__c").replace("_", " "),
        "labelPlural": obj.name.removesuffix("__c").replace("_", " ") + "s",
        "keyPrefix": obj.prefix,
        "custom": custom,
        "queryable": perms.read,
        "retrieveable": perms.read,
        "searchable": perms.read,
        "createable": perms.create,
        "updateable": perms.edit,
        "deletable": perms.delete,
        "undeletable": perms.delete,
        "fields": [_field(fd, perms) for fd in obj.field_list],
        "childRelationships": [],
        "recordTypeInfos": [],
        "urls": {
            "sobject": base,
            "describe": f"{base}/describe",
            "rowTemplate": f"{base}/{{ID}}",
        },
    }


async def describe(request: SfRequest) -> web.StreamResponse:
    state = state_of(request)
    obj = state.schema.get(request.match_info["sobject"])
    if obj is None:
        raise not_found()
    perms = state.users.permissions(session_username(request), obj.name)
    if not perms.read:
        raise not_found()  # an object the user cannot read does not exist for them
    return json_response(describe_body(obj, perms, request.match_info["version"]))
