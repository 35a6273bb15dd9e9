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


def test_schema_rejects_what_the_model_rejects() -> None:
    schema = _load("request.schema.json")
    bad = [
        {"v": 1, "job_id": "a", "operation": "get", "object": "Acc ount", "id": "001000000000001"},
        {"v": 1, "job_id": "a", "operation": "get", "object": "Account", "id": "001"},
        {"v": 2, "job_id": "a", "operation": "delete", "object": "Case", "id": "500000000000001"},
        {"v": 1, "job_id": "", "operation": "delete", "object": "Case", "id": "500000000000001"},
        {"v": 1, "job_id": "a", "operation": "search", "soql": "x", "sosl": "y"},
        {"v": 1, "job_id": "a", "operation": "search"},
        {"v": 1, "job_id": "a", "operation": "search", "soql": "x", "timeout_ms": 50},
        {"v": 1, "job_id": "a", "operation": "search", "soql": "x", "max_records": 2001},
        {"v": 1, "job_id": "a", "operation": "merge"},
    ]
    for body in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, schema)
        with pytest.raises(ValidationError):
            parse_job(body)


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
    with pytest.raises(ValidationError):
        parse_job({"v": 1, "job_id": "j", "operation": "insert", "object": name, "fields": {}})


def test_upsert_refuses_id_or_the_external_id_field_in_fields() -> None:
    base = {
        "v": 1,
        "job_id": "j",
        "operation": "upsert",
        "object": "Contact",
        "external_id_field": "Ext_Id__c",
        "external_id": "X1",
    }
    for fields in ({"Id": "003000000000001"}, {"ext_id__c": "X1"}):
        with pytest.raises(ValidationError):
            parse_job({**base, "fields": fields})
    assert parse_job({**base, "fields": {"LastName": "L"}}).external_id == "X1"
