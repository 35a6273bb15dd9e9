"""The job pipeline's policy without a broker: JobPipeline.handle driven with the in-process
result store and a fake Salesforce client, each rule by the decision a user would see (the same
rules run through the real queue in tests/runtime/)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.accounts import write_accounts
from worker.accounts import Accounts, load_accounts
from worker.contract import AnyJob, ResultError, Status
from worker.jobs import Decision, Incoming, JobPipeline, Settle, admit
from worker.jobs.intake import read_request
from worker.observability.metrics import Metrics
from worker.salesforce.http import SendRefused
from worker.settings import Settings
from worker.stores.memory_results import MemoryResultStore

SEARCH = {"v": 1, "operation": "search", "soql": "SELECT Id FROM Contact WHERE Phone = :p"}
INSERT = {"v": 1, "operation": "insert", "object": "Case", "fields": {"Subject": "s"}}
TENANTS = '\n[tenants.acme]\namqp_users = ["rt-acme"]\n'


@dataclass
class FakeOutcome:
    status: Status
    records: list[dict[str, Any]] | None = None
    count: int | None = None
    id: str | None = None
    created: bool | None = None
    http_status: int | None = 200
    error: ResultError | None = None
    attempts: int = 1


@dataclass
class FakeSalesforce:
    """Answers every search with `records` and every insert with an id; counts the calls. An
    insert calls `before_send` first, as the real client does just before the request leaves."""

    records: list[dict[str, Any]] = field(default_factory=lambda: [{"Id": "003A"}])
    delay: float = 0.0
    calls: list[AnyJob] = field(default_factory=list)
    statements: list[str | None] = field(default_factory=list)

    async def execute(
        self,
        job: AnyJob,
        account: Any,
        deadline: Any,
        *,
        before_send: Any = None,
        memory: Any = None,
        statement: str | None = None,
    ) -> FakeOutcome:
        self.calls.append(job)
        self.statements.append(statement)
        if before_send is not None and not await before_send():
            raise SendRefused
        await asyncio.sleep(self.delay)
        if job.operation == "insert":
            return FakeOutcome(Status.OK, id="500A", http_status=201)
        return FakeOutcome(Status.OK, records=self.records, count=len(self.records))


class MarkedElsewhere(MemoryResultStore):
    """A fleet's store in which another worker wrote the insert marker first."""

    async def mark_insert_sent(self, job_id: str) -> bool:
        self._inserts.put(job_id, b"other-worker")
        return False


def accounts_of(tmp_path: Path, extra: str = "") -> Accounts:
    path = write_accounts(tmp_path / "accounts.toml", "http://127.0.0.1:9", extra=extra)
    return load_accounts(path, allow_insecure_localhost=True)


@dataclass
class Rig:
    pipeline: JobPipeline
    salesforce: FakeSalesforce
    store: MemoryResultStore
    accounts: Accounts
    metrics: Metrics

    async def send(
        self,
        job: dict[str, Any] | bytes,
        *,
        reply_to: str | None = "replies",
        user_id: str | None = None,
        redelivered: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Decision:
        body = job if isinstance(job, bytes) else orjson.dumps(job)
        incoming = Incoming(
            body=body,
            message_id="m-1",
            reply_to=reply_to,
            user_id=user_id,
            received_wall=time.time(),
            received_mono=time.monotonic(),
            redelivered=redelivered,
            headers=headers,
        )
        return await self.pipeline.handle(incoming)


def rig_for(
    tmp_path: Path,
    *,
    extra: str = "",
    store: MemoryResultStore | None = None,
    salesforce: FakeSalesforce | None = None,
    **settings: Any,
) -> Rig:
    accounts = accounts_of(tmp_path, extra)
    metrics = Metrics()
    store = MemoryResultStore(100, 60) if store is None else store
    salesforce = FakeSalesforce() if salesforce is None else salesforce
    pipeline = JobPipeline(
        accounts,
        salesforce,  # type: ignore[arg-type]
        store,
        Settings(http_port=0, **settings),
        metrics,
    )
    return Rig(pipeline, salesforce, store, accounts, metrics)


def answer_of(decision: Decision) -> dict[str, Any]:
    assert decision.settle is Settle.REPLY
    assert decision.answer is not None
    result: dict[str, Any] = orjson.loads(decision.answer.body)
    return result


def code_of(decision: Decision) -> str | None:
    error = answer_of(decision)["error"]
    return error["code"] if error else None


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return rig_for(tmp_path)


async def test_a_search_is_answered_with_its_records(rig: Rig) -> None:
    decision = await rig.send({**SEARCH, "job_id": "j1", "params": {"p": "1"}})
    assert answer_of(decision)["records"] == [{"Id": "003A"}]
    assert answer_of(decision)["status"] == "ok"
    assert len(rig.salesforce.calls) == 1


async def test_a_search_is_bound_once_and_sent_as_bound(rig: Rig) -> None:
    await rig.send({**SEARCH, "job_id": "j1", "params": {"p": "it's"}})
    # Bound by the intake (where a bad parameter is refused), carried to the client as it is.
    assert rig.salesforce.statements == [SEARCH["soql"].replace(":p", "'it\\'s'")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"not json", "not_json"), (b"[1]", "not_object"), (b'{"v": 2}', "bad_version")],
)
async def test_a_bad_request_is_refused_and_with_nobody_to_tell_dead_lettered(
    rig: Rig, body: bytes, reason: str
) -> None:
    answered = await rig.send(body)
    assert code_of(answered) == "INVALID_REQUEST"
    dropped = await rig.send(body, reply_to=None)
    assert (dropped.settle, dropped.reason) == (Settle.DEAD_LETTER, reason)
    assert rig.salesforce.calls == []


async def test_a_forged_x_death_is_refused_and_copied_to_the_dead_letters(rig: Rig) -> None:
    forged = {"x-death": [{"count": "3"}]}
    job = {**SEARCH, "job_id": "j1", "params": {"p": "1"}}
    assert code_of(await rig.send(job, headers=forged)) == "INVALID_REQUEST"
    dropped = await rig.send(job, headers=forged, reply_to=None)
    assert (dropped.settle, dropped.reason) == (Settle.DEAD_LETTER_COPY, "forged_x_death")
    assert rig.salesforce.calls == []


async def test_a_reply_to_its_publisher_may_not_read_is_copied_to_the_dead_letters(
    tmp_path: Path,
) -> None:
    rig = rig_for(tmp_path, extra=TENANTS)
    job = {**SEARCH, "job_id": "j1", "params": {"p": "1"}}
    decision = await rig.send(job, user_id="rt-acme", reply_to="someone-else")
    assert (decision.settle, decision.reason) == (Settle.DEAD_LETTER_COPY, "forbidden_reply_to")
    assert decision.answer is None
    allowed = await rig.send(job, user_id="rt-acme", reply_to="rt-acme.replies")
    assert answer_of(allowed)["status"] == "ok"


async def test_a_job_for_another_tenants_account_is_forbidden_and_not_run(
    tmp_path: Path,
) -> None:
    rig = rig_for(tmp_path, extra=TENANTS)
    job = {**SEARCH, "job_id": "j1", "params": {"p": "1"}, "account": "main"}
    decision = await rig.send(job, user_id="rt-globex", reply_to="amq.gen-x")
    assert code_of(decision) == "FORBIDDEN_ACCOUNT"
    assert rig.salesforce.calls == []


async def test_a_bad_parameter_is_refused_before_any_claim(rig: Rig) -> None:
    job = {**SEARCH, "job_id": "j1"}  # :p has no value
    decision = await rig.send(job)
    assert code_of(decision) == "INVALID_REQUEST"
    assert "placeholder :p has no value" in answer_of(decision)["error"]["message"]
    assert rig.salesforce.calls == []
    # Nothing bound the job id: the same id with its parameter runs.
    fixed = await rig.send({**job, "params": {"p": "1"}})
    assert answer_of(fixed)["status"] == "ok"


async def test_a_redelivered_job_is_answered_from_the_store_without_a_second_call(
    rig: Rig,
) -> None:
    job = {**SEARCH, "job_id": "j1", "params": {"p": "1"}}
    first = await rig.send(job)
    again = await rig.send(job, redelivered=True)
    assert again.answer == first.answer
    assert len(rig.salesforce.calls) == 1


async def test_a_job_id_reused_for_another_job_is_refused_and_the_first_result_kept(
    rig: Rig,
) -> None:
    first = await rig.send({**SEARCH, "job_id": "j1", "params": {"p": "1"}})
    other = await rig.send({**SEARCH, "job_id": "j1", "params": {"p": "2"}})
    assert code_of(other) == "JOB_ID_REUSED"
    assert "params" in answer_of(other)["error"]["message"]
    again = await rig.send({**SEARCH, "job_id": "j1", "params": {"p": "1"}}, redelivered=True)
    assert again.answer == first.answer
    assert len(rig.salesforce.calls) == 1


async def test_the_same_job_running_here_is_joined_not_run_twice(tmp_path: Path) -> None:
    rig = rig_for(tmp_path, salesforce=FakeSalesforce(delay=0.05))
    job = {**SEARCH, "job_id": "j1", "params": {"p": "1"}}
    one, two = await asyncio.gather(rig.send(job), rig.send(job, redelivered=True))
    assert one.answer == two.answer
    assert answer_of(one)["status"] == "ok"
    assert len(rig.salesforce.calls) == 1


async def test_a_result_over_the_cap_is_answered_result_too_large(tmp_path: Path) -> None:
    big = [{"Id": f"003{i:015d}", "Description": "x" * 1000} for i in range(40)]
    rig = rig_for(tmp_path, salesforce=FakeSalesforce(records=big), max_result_bytes=16_384)
    decision = await rig.send({**SEARCH, "job_id": "j1", "params": {"p": "1"}})
    assert code_of(decision) == "RESULT_TOO_LARGE"
    assert answer_of(decision)["records"] is None
    assert len(decision.answer.body if decision.answer else b"") < 16_384


async def test_an_insert_whose_marker_an_earlier_delivery_wrote_is_not_sent_again(
    rig: Rig,
) -> None:
    job = {**INSERT, "job_id": "i1"}
    request = read_request(Incoming(body=orjson.dumps(job)), 1 << 20)
    assert request.job is not None
    key = admit(rig.accounts, request.job, None).key
    await rig.store.mark_insert_sent(key)  # sent by a delivery that died before its answer
    decision = await rig.send(job, redelivered=True)
    assert code_of(decision) == "OUTCOME_UNKNOWN"
    assert rig.salesforce.calls == []


async def test_an_insert_another_worker_marked_first_is_answered_not_sent(
    tmp_path: Path,
) -> None:
    rig = rig_for(tmp_path, store=MarkedElsewhere(100, 60))
    decision = await rig.send({**INSERT, "job_id": "i1"})
    assert code_of(decision) == "OUTCOME_UNKNOWN"
    assert "another worker" in answer_of(decision)["error"]["message"]


async def test_an_insert_is_sent_once_and_its_redelivery_replays_the_answer(rig: Rig) -> None:
    job = {**INSERT, "job_id": "i1"}
    first = await rig.send(job)
    assert answer_of(first)["id"] == "500A"
    again = await rig.send(job, redelivered=True)
    assert again.answer == first.answer
    assert len(rig.salesforce.calls) == 1


async def test_a_job_past_its_deadline_is_answered_timeout_without_a_call(rig: Rig) -> None:
    job = {**SEARCH, "job_id": "j1", "params": {"p": "1"}, "sent_at": time.time() - 60}
    decision = await rig.send(job)
    assert code_of(decision) == "TIMEOUT"
    assert rig.salesforce.calls == []


async def test_an_unexpected_error_requeues_and_is_counted(rig: Rig) -> None:
    class Broken(FakeSalesforce):
        async def execute(self, *args: Any, **kwargs: Any) -> FakeOutcome:
            raise RuntimeError("a bug")

    rig.pipeline.execution._client = Broken()  # type: ignore[assignment]
    decision = await rig.send({**SEARCH, "job_id": "j1", "params": {"p": "1"}})
    assert decision.settle is Settle.REQUEUE
    assert rig.metrics.handler_crashes._value.get() == 1


async def test_a_job_id_bound_to_another_job_elsewhere_is_refused_before_it_runs(
    rig: Rig,
) -> None:
    """Another worker bound the id to its job and is still running it (no result yet)."""
    first = {**SEARCH, "job_id": "j1", "params": {"p": "1"}}
    request = read_request(Incoming(body=orjson.dumps(first)), 1 << 20)
    assert request.job is not None
    admission = admit(rig.accounts, request.job, None)
    await rig.store.bind(admission.key, admission.fingerprint)
    decision = await rig.send({**first, "params": {"p": "2"}})
    assert code_of(decision) == "JOB_ID_REUSED"
    assert rig.salesforce.calls == []
