"""What a job is answered: the result as published (JSON, fields in contract order) and the
failed results every step of the pipeline may give."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from worker.contract import BlockResult, ErrorCode, Operation, ResultError, Status

if TYPE_CHECKING:
    from worker.jobs.intake import Incoming


@dataclass(frozen=True, slots=True)
class ResultBody:
    """A serialized result and what its routing key needs."""

    body: bytes
    status: str
    operation: str

    @classmethod
    def from_result(cls, result: BlockResult) -> ResultBody:
        return cls(
            result_json(result),
            result.status.value,
            result.operation.value if result.operation else "",
        )

    @classmethod
    def of(cls, body: bytes) -> ResultBody:
        """A stored result's bytes, published again as they are."""
        data: Any = orjson.loads(body)
        return cls(
            body, str(data.get("status") or Status.FAILED.value), str(data.get("operation") or "")
        )


def failed(
    job_id: str,
    code: ErrorCode,
    message: str,
    *,
    operation: Operation | None = None,
    account: str | None = None,
    retryable: bool = False,
) -> BlockResult:
    return BlockResult(
        job_id=job_id,
        operation=operation,
        account=account,
        status=Status.FAILED,
        error=ResultError(code=code, message=message, retryable=retryable),
    )


def result_too_large(result: BlockResult, size: int, limit: int) -> BlockResult:
    """RESULT_TOO_LARGE in place of a result of `size` bytes, over the `limit` a result may have
    (a message the broker would refuse, or one a caller would choke on)."""
    records = len(result.records or [])
    return result.model_copy(
        update={
            "status": Status.FAILED,
            "records": None,
            "error": ResultError(
                code=ErrorCode.RESULT_TOO_LARGE,
                message=f"the result is {size:,} bytes for {records:,} records, more than the "
                f"{limit:,} a result may have (SFWORKER_MAX_RESULT_BYTES); ask for fewer "
                "records (max_records) or fewer fields",
                retryable=False,
            ),
        }
    )


def finish(result: BlockResult, incoming: Incoming) -> BlockResult:
    """Stamp the duration (receipt to now) on a result about to be published."""
    elapsed_ms = int((time.monotonic() - incoming.received_mono) * 1000)
    return result.model_copy(update={"duration_ms": max(0, elapsed_ms)})


_RESULT_FIELDS = tuple(BlockResult.model_fields)


def result_json(result: BlockResult) -> bytes:
    """The result as published: JSON, fields in contract order. Records go to orjson as they
    are (plain JSON values decoded from Salesforce's answer), not through pydantic, which
    would walk every value of every record again."""
    data = result.model_dump(mode="json", exclude={"records"})
    records = result.records
    return orjson.dumps({k: records if k == "records" else data[k] for k in _RESULT_FIELDS})
