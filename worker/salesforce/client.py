"""Salesforce REST client: runs one block operation for one account within the job's deadline.

The operations: each job becomes its REST calls (a search follows its next pages), and what
Salesforce answered becomes the job's outcome. Each call is sent until its answer is final by
the retry policy (retry.py), through the one transport (transport.py: slot, token, send, read,
classify, count; alone or inside a Composite request). An insert whose request left this process
but whose answer was lost is OUTCOME_UNKNOWN: it is never sent a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from worker.accounts import Account
from worker.contract import (
    AnyJob,
    DeleteJob,
    ErrorCode,
    GetJob,
    InsertJob,
    Operation,
    ResultError,
    SearchJob,
    Status,
    UpdateJob,
    UpsertJob,
)
from worker.deadline import Deadline
from worker.memory import Hold
from worker.observability.metrics import Metrics
from worker.salesforce.binding import bind_soql, bind_sosl, path_segment
from worker.salesforce.call import BeforeSend, Call
from worker.salesforce.connections import Connections
from worker.salesforce.errors import Verdict
from worker.salesforce.failures import CallFailed, error
from worker.salesforce.paging import Collected, next_page_url
from worker.salesforce.reserve import ApiReserve
from worker.salesforce.retry import RetryPolicy
from worker.salesforce.tokens import TokenManager
from worker.salesforce.transport import Transport
from worker.settings import Settings
from worker.stores.slots import LocalSlots, Slots
from worker.stores.usage_board import LocalBoard

_MIN_BATCH = 200
_MAX_BATCH = 2000


@dataclass
class Outcome:
    """What an operation produced; jobs.py adds the job's identity and timing."""

    status: Status
    records: list[dict[str, Any]] | None = None
    count: int | None = None
    id: str | None = None
    created: bool | None = None
    http_status: int | None = None
    error: ResultError | None = None
    attempts: int = 0


class SalesforceClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokenManager,
        settings: Settings,
        metrics: Metrics,
        *,
        slots: Slots | None = None,
        reserve: ApiReserve | None = None,
        connections: Connections | None = None,
    ) -> None:
        self.reserve = reserve or ApiReserve(LocalBoard(), metrics)
        self._transport = Transport(
            session,
            tokens,
            settings,
            metrics,
            slots or LocalSlots(),
            self.reserve,
            connections or Connections.unbounded(),
        )
        self.reserve.attach(self._transport.read_limits)
        self._request = RetryPolicy(self._transport, settings, metrics).request
        self._max_result_bytes = settings.max_result_bytes

    async def close(self) -> None:
        await self._transport.close()

    async def execute(
        self,
        job: AnyJob,
        account: Account,
        deadline: Deadline,
        *,
        before_send: BeforeSend | None = None,
        memory: Hold | None = None,
        statement: str | None = None,
    ) -> Outcome:
        """Run the job's operation; never raises for anything Salesforce or the network does.
        `before_send` is awaited just before each request leaves the process (insert markers);
        when it answers False the request is not sent and SendRefused is raised. What the job
        reads from Salesforce is counted on `memory`, its share of the memory budget. A
        search's `statement`, bound by the job's intake, is sent as it is (else bound here).
        """
        call = Call(
            account, Operation(job.operation), deadline, before_send=before_send, memory=memory
        )
        try:
            await self.reserve.ensure_known(account, deadline)
            match job:
                case SearchJob():
                    return await self._search(job, call, statement)
                case GetJob():
                    return await self._get(job, call)
                case InsertJob():
                    return await self._insert(job, call)
                case UpdateJob():
                    return await self._update(job, call)
                case UpsertJob():
                    return await self._upsert(job, call)
                case DeleteJob():
                    return await self._delete(job, call)
        except CallFailed as failed:
            return Outcome(
                Status.FAILED,
                http_status=failed.http_status,
                error=failed.error,
                attempts=call.attempts,
            )
        raise AssertionError(f"unhandled operation {job.operation}")  # pragma: no cover

    async def _search(self, job: SearchJob, call: Call, statement: str | None) -> Outcome:
        base = call.account.api_base
        if job.soql is not None:
            statement = statement or bind_soql(job.soql, job.params)
            batch = min(_MAX_BATCH, max(_MIN_BATCH, job.max_records))
            call.extra_headers["Sforce-Query-Options"] = f"batchSize={batch}"
            response = await self._request(call, "GET", f"{base}/query", params={"q": statement})
            body = response.body if isinstance(response.body, dict) else {}
            collected = Collected(job.max_records, self._max_result_bytes)
            collected.add(body.get("records"))
            total = int(body.get("totalSize") or 0)
            next_url = body.get("nextRecordsUrl")
            while next_url and not body.get("done", True) and not collected.full:
                if collected.over:
                    return self._outcome(
                        call,
                        Status.FAILED,
                        count=total,
                        error=error(ErrorCode.RESULT_TOO_LARGE, collected.too_large(total)),
                    )
                url = next_page_url(call.account, next_url)
                if url is None:
                    raise CallFailed(
                        error(
                            ErrorCode.SALESFORCE_ERROR,
                            "Salesforce's answer named a next page that is not a path under "
                            "/services/data/ on the account's instance; it was not followed",
                        ),
                        call.http_status,
                    )
                response = await self._request(call, "GET", url)
                body = response.body if isinstance(response.body, dict) else {}
                collected.add(body.get("records"))
                next_url = body.get("nextRecordsUrl")
            records = collected.records
            status = Status.OK if total > 0 or records else Status.NO_DATA
            return self._outcome(call, status, records=records, count=total)
        assert job.sosl is not None
        statement = statement or bind_sosl(job.sosl, job.params)
        response = await self._request(call, "GET", f"{base}/search", params={"q": statement})
        found = search_records(response.body)
        status = Status.OK if found else Status.NO_DATA
        return self._outcome(call, status, records=found[: job.max_records], count=len(found))

    async def _get(self, job: GetJob, call: Call) -> Outcome:
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.id}"
        params = {"fields": ",".join(job.fields)} if job.fields else None
        response = await self._request(call, "GET", url, params=params)
        if response.classified.verdict is Verdict.NO_DATA:
            return self._outcome(call, Status.NO_DATA)
        record = response.body if isinstance(response.body, dict) else {}
        return self._outcome(call, Status.OK, records=[record])

    async def _insert(self, job: InsertJob, call: Call) -> Outcome:
        key_field = call.account.idempotency_fields.get(job.sobject)
        if key_field is not None:
            return await self._insert_by_job_id(job, key_field, call)
        call.idempotent = False
        url = f"{call.account.api_base}/sobjects/{job.sobject}"
        response = await self._request(call, "POST", url, json=dict(job.fields))
        body = response.body if isinstance(response.body, dict) else {}
        return self._outcome(call, Status.OK, id=body.get("id"))

    async def _insert_by_job_id(self, job: InsertJob, key_field: str, call: Call) -> Outcome:
        """Idempotency-field mode: an upsert on an external-id field keyed by the job_id, so
        Salesforce itself keeps one record per job, however often the job runs."""
        value = path_segment(job.job_id, "job_id (the idempotency field's value)")
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{key_field}/{value}"
        fields = {k: v for k, v in job.fields.items() if k.lower() != key_field.lower()}
        response = await self._request(call, "PATCH", url, json=fields)
        body = response.body if isinstance(response.body, dict) else {}
        return self._outcome(call, Status.OK, id=body.get("id"))

    async def _update(self, job: UpdateJob, call: Call) -> Outcome:
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.id}"
        response = await self._request(call, "PATCH", url, json=dict(job.fields))
        if response.classified.verdict is Verdict.NO_DATA:
            return self._outcome(call, Status.NO_DATA)
        return self._outcome(call, Status.OK)

    async def _upsert(self, job: UpsertJob, call: Call) -> Outcome:
        value = path_segment(job.external_id, "external_id")
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.external_id_field}/{value}"
        response = await self._request(call, "PATCH", url, json=dict(job.fields))
        body = response.body if isinstance(response.body, dict) else {}
        created = body.get("created")
        return self._outcome(
            call,
            Status.OK,
            id=body.get("id"),
            created=bool(created) if created is not None else response.status == 201,
        )

    async def _delete(self, job: DeleteJob, call: Call) -> Outcome:
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.id}"
        response = await self._request(call, "DELETE", url)
        if response.classified.verdict is Verdict.NO_DATA:
            return self._outcome(call, Status.NO_DATA)
        return self._outcome(call, Status.OK)

    @staticmethod
    def _outcome(call: Call, status: Status, **fields: Any) -> Outcome:
        return Outcome(status, http_status=call.http_status, attempts=call.attempts, **fields)


def search_records(body: Any) -> list[dict[str, Any]]:
    """The records of a SOSL answer: up to API v36.0 a bare JSON array, from v37.0
    `{"searchRecords": [...]}` (shared/reference/salesforce.md); both are read on any version."""
    found = body.get("searchRecords") if isinstance(body, dict) else body
    return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []
