"""Generate contracts/ from the models: JSON Schemas of the request and the result, one example
per operation and per error code, the AsyncAPI 3.0 document (asyncapi.yaml), and the JSON Schema
of the accounts file (accounts.schema.json, from worker/accounts.py).

    python -m worker.contract.gen            # rewrite contracts/
    python -m worker.contract.gen --check    # exit 1 when contracts/ differs from the models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from worker.accounts import REQUIRED_SECRETS, AccountsFile, Flow
from worker.contract import (
    JOB_ADAPTER,
    BlockResult,
    ErrorCode,
    Operation,
    ResultError,
    SalesforceErrorItem,
    Status,
)
from worker.contract.asyncapi import SCHEMA_REF, asyncapi_document

ROOT = Path(__file__).resolve().parents[2] / "contracts"
SCHEMA_BASE = "https://github.com/sfworker/sfworker/contracts/v1"

ACCOUNT_ID = "001Hs00003Lq9TxIAJ"
CONTACT_ID = "003Hs00002QwErTIAZ"
CASE_ID = "500Hs00001AbCdEIAV"

REQUESTS: dict[str, dict[str, Any]] = {
    "search_soql": {
        "v": 1,
        "job_id": "call-7f3a-search",
        "account": "acme-prod",
        "tenant": "acme",
        "timeout_ms": 5000,
        "sent_at": 1796000000.125,
        "operation": "search",
        "soql": "SELECT Id, Name, Email FROM Contact WHERE Phone = :ani LIMIT 5",
        "params": {"ani": "+1 415 555 0123"},
        "max_records": 5,
    },
    "search_sosl": {
        "v": 1,
        "job_id": "chat-19c2-sosl",
        "operation": "search",
        "sosl": "FIND :term IN PHONE FIELDS RETURNING Contact(Id, Name, Phone)",
        "params": {"term": "4155550123"},
    },
    "get": {
        "v": 1,
        "job_id": "call-7f3a-get",
        "operation": "get",
        "object": "Case",
        "id": CASE_ID,
        "fields": ["Subject", "Status", "Priority"],
    },
    "insert": {
        "v": 1,
        "job_id": "call-7f3a-insert",
        "operation": "insert",
        "object": "Case",
        "fields": {"Subject": "Callback requested", "ContactId": CONTACT_ID, "Origin": "Phone"},
    },
    "update": {
        "v": 1,
        "job_id": "call-7f3a-update",
        "operation": "update",
        "object": "Case",
        "id": CASE_ID,
        "fields": {"Priority": "High"},
    },
    "upsert": {
        "v": 1,
        "job_id": "call-7f3a-upsert",
        "operation": "upsert",
        "object": "Contact",
        "external_id_field": "Ext_Id__c",
        "external_id": "IVR-42",
        "fields": {"LastName": "Caller", "Phone": "+1 650 555 0042"},
    },
    "delete": {
        "v": 1,
        "job_id": "call-7f3a-delete",
        "operation": "delete",
        "object": "Case",
        "id": CASE_ID,
    },
}


def _record(sobject: str, record_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "attributes": {
            "type": sobject,
            "url": f"/services/data/v62.0/sobjects/{sobject}/{record_id}",
        },
        "Id": record_id,
        **fields,
    }


def _ok(operation: Operation, **fields: Any) -> BlockResult:
    return BlockResult(
        job_id=REQUESTS[{"search": "search_soql"}.get(operation.value, operation.value)]["job_id"],
        operation=operation,
        account="acme-prod",
        status=Status.OK,
        attempts=1,
        duration_ms=184,
        **fields,
    )


RESULTS: dict[str, BlockResult] = {
    "search": _ok(
        Operation.SEARCH,
        records=[_record("Contact", CONTACT_ID, Name="Ada Lovelace", Email="ada@acme.example")],
        count=1,
        http_status=200,
    ),
    "get": _ok(
        Operation.GET,
        records=[_record("Case", CASE_ID, Subject="Delivery late", Status="New", Priority="High")],
        http_status=200,
    ),
    "insert": _ok(Operation.INSERT, id=CASE_ID, http_status=201),
    "update": _ok(Operation.UPDATE, http_status=204),
    "upsert": _ok(Operation.UPSERT, id=CONTACT_ID, created=True, http_status=201),
    "delete": _ok(Operation.DELETE, http_status=204),
    "no_data": BlockResult(
        job_id="call-7f3a-get",
        operation=Operation.GET,
        account="acme-prod",
        status=Status.NO_DATA,
        http_status=404,
        attempts=1,
        duration_ms=97,
    ),
}

_ERRORS: dict[ErrorCode, tuple[str, bool, int | None, list[SalesforceErrorItem]]] = {
    ErrorCode.INVALID_REQUEST: ("id: String should match pattern", False, None, []),
    ErrorCode.UNKNOWN_ACCOUNT: ("no account named 'acme-sandbox'", False, None, []),
    ErrorCode.FORBIDDEN_ACCOUNT: (
        "account 'acme-prod' does not belong to tenant 'globex'",
        False,
        None,
        [],
    ),
    ErrorCode.AUTH_FAILED: (
        "token request refused (client_credentials): invalid_client: invalid client credentials",
        False,
        400,
        [SalesforceErrorItem(errorCode="invalid_client", message="invalid client credentials")],
    ),
    ErrorCode.RATE_LIMITED: (
        "REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded.",
        False,
        403,
        [
            SalesforceErrorItem(
                errorCode="REQUEST_LIMIT_EXCEEDED", message="TotalRequests Limit exceeded."
            )
        ],
    ),
    ErrorCode.TIMEOUT: ("the job's deadline passed before Salesforce answered", True, None, []),
    ErrorCode.SALESFORCE_ERROR: (
        "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]",
        False,
        400,
        [
            SalesforceErrorItem(
                errorCode="REQUIRED_FIELD_MISSING",
                message="Required fields are missing: [LastName]",
                fields=["LastName"],
            )
        ],
    ),
    ErrorCode.SALESFORCE_UNAVAILABLE: (
        "SERVER_UNAVAILABLE: server too busy",
        True,
        503,
        [SalesforceErrorItem(errorCode="SERVER_UNAVAILABLE", message="server too busy")],
    ),
    ErrorCode.OUTCOME_UNKNOWN: (
        "connection lost (ServerDisconnectedError) after the insert was sent; Salesforce may or "
        "may not have created the record, so it is not sent again",
        False,
        None,
        [],
    ),
    ErrorCode.RESULT_TOO_LARGE: (
        "the result is 9,431,552 bytes for 2,000 records, more than the 8,388,608 a result may "
        "have (SFWORKER_MAX_RESULT_BYTES); ask for fewer records (max_records) or fewer fields",
        False,
        200,
        [],
    ),
    ErrorCode.JOB_ID_REUSED: (
        "this job_id was first used for another job (it differs in: operation); Salesforce "
        "was not called and the first job's result is kept. Give each job its own job_id",
        False,
        None,
        [],
    ),
}


def error_results() -> dict[str, BlockResult]:
    out = {}
    for code, (message, retryable, http_status, items) in _ERRORS.items():
        operation = Operation.INSERT if code is ErrorCode.OUTCOME_UNKNOWN else Operation.SEARCH
        out[f"error.{code.value}"] = BlockResult(
            job_id="call-7f3a-search" if operation is Operation.SEARCH else "call-7f3a-insert",
            operation=operation,
            account=None if code is ErrorCode.UNKNOWN_ACCOUNT else "acme-prod",
            status=Status.FAILED,
            http_status=http_status,
            error=ResultError(
                code=code, message=message, retryable=retryable, salesforce_errors=items
            ),
            attempts=0 if http_status is None and code is not ErrorCode.OUTCOME_UNKNOWN else 1,
            duration_ms=12,
        )
    return out


def _dump(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def request_schema() -> dict[str, Any]:
    schema = JOB_ADAPTER.json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE}/request.schema.json",
        "title": "sfworker block job (contract v1)",
        **schema,
    }


def result_schema() -> dict[str, Any]:
    schema = BlockResult.model_json_schema(by_alias=True, mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE}/result.schema.json",
        **schema,
        "title": "sfworker block result (contract v1)",
    }


class _TomlSchema(GenerateJsonSchema):
    """TOML has no null (an optional key is absent, never null), and a table whose names follow
    a pattern holds no other names."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        json_schema = super().dict_schema(schema)
        if "patternProperties" in json_schema:
            json_schema["additionalProperties"] = False
        return json_schema


def _flow_rules() -> list[dict[str, Any]]:
    """What each flow needs (the model checks it after reading the secrets): each of its secrets
    given one way, and jwt_bearer's username."""
    rules = []
    for flow, keys in REQUIRED_SECRETS.items():
        then: dict[str, Any] = {
            "allOf": [
                {"anyOf": [{"required": [k]} for k in (key, f"{key}_env", f"{key}_file")]}
                for key in keys
            ]
        }
        if flow is Flow.JWT_BEARER:
            then["required"] = ["username"]
        condition = {"required": ["flow"], "properties": {"flow": {"const": flow.value}}}
        rules.append({"if": condition, "then": then})
    return rules


def accounts_schema() -> dict[str, Any]:
    schema = AccountsFile.model_json_schema(schema_generator=_TomlSchema)
    schema["$defs"]["AccountTable"]["allOf"] = _flow_rules()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/sfworker/sfworker/contracts/accounts.schema.json",
        **schema,
        "title": "sfworker accounts file (TOML)",
    }


def asyncapi_yaml() -> bytes:
    import yaml  # a dev dependency: only the generator and its check need it

    document = asyncapi_document(
        JOB_ADAPTER.json_schema(by_alias=True, ref_template=SCHEMA_REF),
        BlockResult.model_json_schema(by_alias=True, mode="serialization", ref_template=SCHEMA_REF),
        REQUESTS,
        {name: r.model_dump(mode="json") for name, r in {**RESULTS, **error_results()}.items()},
    )

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # no &anchors: plain, diffable YAML
            return True

    text = yaml.dump(document, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)
    return (
        b"# Generated from worker/contract/models.py by `python -m worker.contract.gen`.\n"
        + text.encode()
    )


def generated_files() -> dict[str, bytes]:
    """Every file of contracts/, by path relative to it."""
    files = {
        "request.schema.json": _dump(request_schema()),
        "result.schema.json": _dump(result_schema()),
        "asyncapi.yaml": asyncapi_yaml(),
        "accounts.schema.json": _dump(accounts_schema()),
    }
    for name, request in REQUESTS.items():
        JOB_ADAPTER.validate_python(request)  # an example that does not validate is a bug here
        files[f"examples/request.{name}.json"] = _dump(request)
    for name, result in {**RESULTS, **error_results()}.items():
        files[f"examples/result.{name}.json"] = _dump(result.model_dump(mode="json"))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    files = generated_files()
    if args.check:
        stale = [
            name
            for name, content in files.items()
            if not (args.out / name).exists() or (args.out / name).read_bytes() != content
        ]
        extra = [
            str(p.relative_to(args.out))
            for p in [*args.out.rglob("*.json"), *args.out.rglob("*.yaml")]
            if str(p.relative_to(args.out)) not in files
        ]
        for name in stale + extra:
            print(f"contracts/{name} differs from the models", file=sys.stderr)
        if stale or extra:
            print("run: python -m worker.contract.gen", file=sys.stderr)
        return 1 if stale or extra else 0
    for name, content in files.items():
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
