"""The cost of sealing Redis values (worker/stores/sealing.py), per job, in this process.

What one job adds with SFWORKER_REDIS_ENCRYPTION_KEY: its stored result sealed on the way in and
opened on a redelivery, and for an insert its claim sealed and opened. Timed on the result the
pipeline's search returns (3 Accounts) and on a result of 200 Contacts, against plain text
(`Seal.plaintext()`, what SFWORKER_REDIS_PLAINTEXT=true does)."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import orjson

from worker.contract import BlockResult, Status
from worker.stores.sealing import Seal, parse_keys

KEY = "sfworker-bench:result:0123456789abcdef/job-000001"


def _result(records: int, fields: dict[str, str]) -> bytes:
    rows = [
        {"attributes": {"type": "Contact", "url": f"/services/data/v62.0/sobjects/X/{i:015d}"}}
        | {"Id": f"003{i:015d}"}
        | fields
        for i in range(records)
    ]
    result = BlockResult(
        job_id="job-000001",
        operation="search",
        status=Status.OK,
        records=rows,
        count=records,
        http_status=200,
        attempts=1,
        duration_ms=12,
    )
    return result.model_dump_json().encode()


def _per_op_us(seal: Seal, value: bytes, n: int) -> tuple[float, float]:
    """µs to seal one value, and to open one (best of 3 runs of n)."""
    sealed = seal.seal(KEY, value)
    best_seal = best_open = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            seal.seal(KEY, value)
        best_seal = min(best_seal, (time.perf_counter() - started) / n * 1e6)
        started = time.perf_counter()
        for _ in range(n):
            seal.open(KEY, sealed)
        best_open = min(best_open, (time.perf_counter() - started) / n * 1e6)
    return best_seal, best_open


async def sealing_trial(n: int = 20_000) -> dict[str, Any]:
    keyed = Seal(parse_keys(base64.b64encode(os.urandom(32)).decode(), "bench key"))
    plain = Seal.plaintext()
    values = {
        "search result, 3 Accounts": _result(3, {"Name": "Acme"}),
        "search result, 200 Contacts": _result(
            200, {"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com"}
        ),
        "insert claim": b"0123456789abcdef",
    }
    rows = []
    for label, value in values.items():
        sealed_us = _per_op_us(keyed, value, n)
        plain_us = _per_op_us(plain, value, n)
        rows.append(
            {
                "value": label,
                "bytes": len(value),
                "sealed_bytes": len(keyed.seal(KEY, value)),
                "seal_us": sealed_us[0],
                "open_us": sealed_us[1],
                "plain_us": plain_us[0] + plain_us[1],
            }
        )
    orjson.dumps(rows)  # JSON-able, as every trial
    return {"system": "sfworker", "sealing": rows, "iterations": n}
