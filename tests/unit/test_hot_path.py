"""The hot path's shortcuts say the same as the slow, obvious way: results serialize exactly as
pydantic's own dump, and the log setup still writes every field a job's line carries."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from worker.contract import BlockResult, ErrorCode, Operation, ResultError, Status
from worker.jobs import failed, result_json
from worker.observability.logging import configure

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def _records(n: int) -> list[dict[str, Any]]:
    return [
        {
            "attributes": {"type": "Contact", "url": f"/services/data/v62.0/sobjects/Contact/{i}"},
            "Id": f"003000000000{i:03d}AAA",
            "Name": 'Zoë "Z" O\'Brien \u2603',
            "Score__c": i / 3,
            "Active__c": i % 2 == 0,
            "Owner": None if i % 3 else {"Name": "Ada", "Nested": [1, 2.5, None, "x"]},
        }
        for i in range(n)
    ]


RESULTS = [
    BlockResult(
        job_id="j-search",
        operation=Operation.SEARCH,
        account="acme",
        status=Status.OK,
        count=250,
        http_status=200,
        attempts=2,
        duration_ms=17,
    ).model_copy(update={"records": _records(250)}),
    BlockResult(
        job_id="j-none", operation=Operation.SEARCH, account="acme", status=Status.NO_DATA
    ).model_copy(update={"records": []}),
    BlockResult(job_id="j-insert", operation=Operation.INSERT, status=Status.OK, id="001x"),
    failed("j-bad", ErrorCode.INVALID_REQUEST, "soql: Field required"),
    BlockResult(
        job_id="j-failed",
        operation=Operation.GET,
        account="acme",
        status=Status.FAILED,
        http_status=401,
        error=ResultError(code=ErrorCode.AUTH_FAILED, message="expired", retryable=True),
    ),
]


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: r.job_id)
def test_result_json_is_pydantic_dump_byte_for_byte(result: BlockResult) -> None:
    expected = orjson.dumps(result.model_dump(mode="json"))
    assert result_json(result) == expected
    schema = json.loads((CONTRACTS / "result.schema.json").read_text())
    jsonschema.validate(orjson.loads(result_json(result)), schema)


def test_json_log_lines_keep_their_fields_after_configure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("INFO", "json")
        logging.getLogger("worker.runtime.consumer").info(
            "job answered", extra={"job_id": "j-1", "status": "ok", "duration_ms": 3}
        )
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert line["msg"] == "job answered"
    assert (line["job_id"], line["status"], line["duration_ms"]) == ("j-1", "ok", 3)
    assert {"ts", "level", "logger"} <= set(line)
