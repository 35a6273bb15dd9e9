"""Acceptance 8.3: contracts/asyncapi.yaml is a valid AsyncAPI 3.0 document (checked against the
specification's own JSON Schema, tests/data/), its payload schemas accept the contract's
examples, and the drift check fails when a model changes without regenerating."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from worker.contract import BlockResult
from worker.contract import gen as contract_gen

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI = ROOT / "contracts" / "asyncapi.yaml"
SPEC_SCHEMA = ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return loaded


def test_the_document_validates_against_the_asyncapi_3_0_schema(document: dict[str, Any]) -> None:
    spec = json.loads(SPEC_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(spec)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
    assert document["asyncapi"] == "3.0.0"


def test_the_validator_is_not_a_rubber_stamp(document: dict[str, Any]) -> None:
    spec = json.loads(SPEC_SCHEMA.read_text(encoding="utf-8"))
    broken = json.loads(json.dumps(document))
    broken["operations"]["receiveBlockJob"]["action"] = "consume"
    assert list(jsonschema.Draft7Validator(spec).iter_errors(broken))


def test_channels_name_the_topology_and_the_message_properties(document: dict[str, Any]) -> None:
    channels = document["channels"]
    assert channels["blockJobs"]["bindings"]["amqp"]["exchange"]["name"] == "salesforce.blocks"
    assert channels["blockQueue"]["address"] == "salesforce.blocks"
    assert channels["deadLetters"]["address"] == "salesforce.blocks.dead"
    assert channels["results"]["bindings"]["amqp"]["exchange"]["type"] == "topic"
    assert channels["results"]["parameters"]["status"]["enum"] == ["ok", "no_data", "failed"]
    reply = document["operations"]["receiveBlockJob"]["reply"]
    assert reply["address"]["location"] == "$message.header#/reply_to"
    job = document["components"]["messages"]["blockJob"]
    assert {"correlation_id", "reply_to", "user_id", "timestamp"} <= set(job["x-amqp-properties"])


def test_the_embedded_schemas_accept_every_example_and_refuse_a_bad_one(
    document: dict[str, Any],
) -> None:
    registry: Registry[Any] = Registry().with_resource("urn:asyncapi", Resource.opaque(document))

    def validator(name: str) -> jsonschema.Draft7Validator:
        schema = {"$ref": f"urn:asyncapi#/components/schemas/{name}"}
        return jsonschema.Draft7Validator(schema, registry=registry)

    messages = document["components"]["messages"]
    for message, schema in (("blockJob", "BlockJob"), ("blockResult", "BlockResult")):
        examples = messages[message]["examples"]
        assert examples
        for example in examples:
            validator(schema).validate(example["payload"])
    with pytest.raises(jsonschema.ValidationError):
        validator("BlockJob").validate({"v": 1, "job_id": "x", "operation": "get"})


def test_the_drift_check_fails_when_a_model_changes_without_regenerating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = tmp_path / "contracts"
    shutil.copytree(ROOT / "contracts", committed)
    assert contract_gen.main(["--check", "--out", str(committed)]) == 0

    class ChangedResult(BlockResult):
        queue_ms: int = 0  # a field added to the model, contracts/ not regenerated

    monkeypatch.setattr(contract_gen, "BlockResult", ChangedResult)
    assert contract_gen.main(["--check", "--out", str(committed)]) == 1
    assert "contracts/asyncapi.yaml differs from the models" in capsys.readouterr().err
