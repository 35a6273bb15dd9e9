"""contracts/ is generated from the models; every example validates against its schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from worker.contract import BlockResult, ErrorCode, parse_job
from worker.contract.gen import generated_files

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def _load(name: str) -> Any:
    return json.loads((CONTRACTS / name).read_text())


def test_committed_contracts_match_the_models() -> None:
    generated = generated_files()
    files = [*CONTRACTS.rglob("*.json"), *CONTRACTS.rglob("*.yaml")]
    committed = {str(p.relative_to(CONTRACTS)): p.read_bytes() for p in files}
    drifted = sorted(n for n in generated if committed.get(n) != generated[n])
    stray = sorted(set(committed) - set(generated))
    assert not drifted, f"regenerate with `python -m worker.contract.gen`: {drifted}"
    assert not stray, f"files in contracts/ the models do not produce: {stray}"


@pytest.mark.parametrize(
    "path", sorted(p.name for p in (CONTRACTS / "examples").glob("request.*.json"))
)
def test_request_examples_validate_against_the_schema_and_the_model(path: str) -> None:
    example = _load(f"examples/{path}")
    jsonschema.validate(example, _load("request.schema.json"))
    assert parse_job(example).job_id == example["job_id"]


@pytest.mark.parametrize(
    "path", sorted(p.name for p in (CONTRACTS / "examples").glob("result.*.json"))
)
def test_result_examples_validate_against_the_schema_and_the_model(path: str) -> None:
    example = _load(f"examples/{path}")
    jsonschema.validate(example, _load("result.schema.json"))
    assert BlockResult.model_validate(example).model_dump(mode="json") == example


def test_there_is_an_example_per_operation_and_per_error_code() -> None:
    names = {p.name for p in (CONTRACTS / "examples").iterdir()}
    for op in ("search_soql", "search_sosl", "get", "insert", "update", "upsert", "delete"):
        assert f"request.{op}.json" in names
    for code in ErrorCode:
        assert f"result.error.{code.value}.json" in names


def _model_refusal(body: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    """The model's errors for `body` as (location, message); fails if the model accepts it."""
    with pytest.raises(ValidationError) as caught:
        parse_job(body)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


def _about(errors: list[tuple[tuple[int | str, ...], str]], key: str) -> bool:
    return any(key in loc or key in msg for loc, msg in errors)


_GET = {"v": 1, "job_id": "a", "operation": "get", "object": "Account", "id": "001000000000001"}
_DELETE = {"v": 1, "job_id": "a", "operation": "delete", "object": "Case", "id": "500000000000001"}
_SEARCH = {"v": 1, "job_id": "a", "operation": "search", "soql": "x"}
_ABSENT = object()


@pytest.mark.parametrize(
    ("good", "key", "bad"),
    [
        (_GET, "object", "Acc ount"),
        (_GET, "id", "001"),
        (_DELETE, "v", 2),
        (_DELETE, "job_id", ""),
        (_SEARCH, "sosl", "y"),  # soql and sosl both
        (_SEARCH, "soql", _ABSENT),  # neither
        (_SEARCH, "timeout_ms", 50),
        (_SEARCH, "max_records", 2001),
        (_SEARCH, "operation", "merge"),
    ],
)
def test_schema_rejects_what_the_model_rejects(good: dict[str, Any], key: str, bad: object) -> None:
    """The good twin passes both, so the bad one fails for its one changed key."""
    schema = _load("request.schema.json")
    jsonschema.validate(good, schema)
    parse_job(good)
    body = {k: v for k, v in good.items() if k != key}
    if bad is not _ABSENT:
        body[key] = bad
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema)
    errors = _model_refusal(body)
    assert _about(errors, key), errors


@pytest.mark.parametrize(
    "name",
    ["Account", "Ext_Id__c", "ns__Thing__c", "My_Object__mdt", "Field1", "Billing_City_2__c"],
)
def test_api_names_accepted(name: str) -> None:
    job = parse_job(
        {"v": 1, "job_id": "j", "operation": "insert", "object": name, "fields": {name: 1}}
    )
    assert job.model_dump(by_alias=True)["object"] == name


@pytest.mark.parametrize(
    "name", ["1Account", "Acc-ount", "_Name", "Name_", "a___b", "Name;DROP", "Account.Name", ""]
)
def test_bad_api_names_refused(name: str) -> None:
    good = {"v": 1, "job_id": "j", "operation": "insert", "object": "Account"}
    good["fields"] = {"Name": "n"}
    parse_job(good)  # the same job with a good name passes: the refusal is the name's
    errors = _model_refusal({**good, "object": name})
    assert [loc for loc, _ in errors] == [("insert", "object")], errors


def test_upsert_refuses_id_or_the_external_id_field_in_fields() -> None:
    base = {
        "v": 1,
        "job_id": "j",
        "operation": "upsert",
        "object": "Contact",
        "external_id_field": "Ext_Id__c",
        "external_id": "X1",
    }
    assert parse_job({**base, "fields": {"LastName": "L"}}).external_id == "X1"
    for fields, refused in (({"Id": "003000000000001"}, "Id"), ({"ext_id__c": "X1"}, "ext")):
        errors = _model_refusal({**base, "fields": {"LastName": "L", **fields}})
        assert len(errors) == 1, errors
        assert "fields must not contain" in errors[0][1], errors
        assert refused.lower() in errors[0][1].lower(), errors
