"""Issue 17, point 3: secrets and records sealed at rest in Redis.

A fleet of two workers with a key runs searches, inserts and a token storm (every session
expired mid-flight, refresh-token rotation on); then every key under the prefix is read back raw
and no access token, refresh token, client secret or record value appears in it. A third worker
with a different key starts, cannot read the sealed values, and still answers every job: without
sending an insert twice, and without replaying a refresh token it cannot read."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
)

from tests.fleet.helpers import Fleet
from tests.support.settings import TEST_REDIS_KEY
from tests.support.waiting import wait_until
from worker.accounts import load_accounts
from worker.stores.sealing import MAGIC, Seal, parse_keys

pytestmark = pytest.mark.slow

NAME, PHONE = "Zebulon Quartermaine", "+1 415 555 0199"
SUBJECT = "Caller reports a leaking boiler at 12 Quarry Lane"
ROTATING = f"""
[accounts.rotating]
tenant = "acme"
instance_url = "{{url}}"
flow = "refresh_token"
client_id = "{DEFAULT_CLIENT_ID}"
client_secret = "{DEFAULT_CLIENT_SECRET}"
refresh_token = "{DEFAULT_REFRESH_TOKEN}"
"""
OTHER_KEY = "t9:" + base64.b64encode(b"another deployment's key 32 byte").decode()


def search(job_id: str, account: str = "main", n: int = 0) -> dict[str, Any]:
    """A search of its own (a LIMIT of its own: identical reads would share one call, and the
    storm needs the fleet's calls in flight)."""
    return {
        "v": 1,
        "job_id": job_id,
        "account": account,
        "operation": "search",
        "soql": f"SELECT Id, Name, Phone FROM Account WHERE Name = :name LIMIT {100 + n}",  # noqa: S608
        "params": {"name": NAME},
        "timeout_ms": 60000,
    }


def insert(job_id: str, n: int) -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": job_id,
        "operation": "insert",
        "object": "Case",
        "fields": {"Subject": f"{SUBJECT} #{n}"},
        "timeout_ms": 60000,
    }


async def raw_dump(url: str, prefix: str) -> dict[bytes, list[bytes]]:
    """Every key under the prefix and every byte of its value, as a Redis dump would hold it."""
    client = aioredis.from_url(url)
    dump: dict[bytes, list[bytes]] = {}
    try:
        async for key in client.scan_iter(match=f"{prefix}*", count=500):
            kind = (await client.type(key)).decode()
            if kind == "string":
                dump[key] = [await client.get(key) or b""]
            elif kind == "hash":
                dump[key] = [b for kv in (await client.hgetall(key)).items() for b in kv]
            elif kind == "zset":
                dump[key] = list(await client.zrange(key, 0, -1))
            elif kind == "set":
                dump[key] = list(await client.smembers(key))
            elif kind == "none":
                continue  # expired since the scan saw it (a lease, a probe claim)
            else:
                raise AssertionError(f"unexpected Redis type {kind} at {key!r}")
    finally:
        await client.aclose()
    return dump


def field(dump: dict[bytes, list[bytes]], key: str, name: bytes) -> bytes:
    """A hash field of the dump."""
    values = dump[key.encode()]
    return dict(zip(values[::2], values[1::2], strict=True))[name]


async def test_a_dump_of_the_fleets_redis_holds_no_secret_and_no_record(
    fleet: Fleet,
) -> None:
    await fleet.simulator.set_client(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        rotation=True,
        refresh_tokens=[DEFAULT_REFRESH_TOKEN],
    )
    ids = await fleet.simulator.seed("Account", [{"Name": NAME, "Phone": PHONE}])
    two_accounts = fleet.configure(extra=ROTATING.format(url=fleet.simulator.base_url))
    accounts = load_accounts(two_accounts.accounts_file, allow_insecure_localhost=True).by_name
    workers = await fleet.start(2, two_accounts, prefetch=100)

    issued: set[str] = set()
    warm = [search(f"warm-{i}", "main" if i % 2 else "rotating", i) for i in range(20)]
    warm += [insert(f"ins-{i}", i) for i in range(10)]
    assert await fleet.run_all(warm) == ["ok"] * 30
    issued |= set(fleet.simulator.state.auth.access) if fleet.simulator.state else set()
    await fleet.simulator.set_latency(300)
    storm = [search(f"storm-{i}", "main" if i % 2 else "rotating", i) for i in range(200)]
    assert await fleet.expire_mid_flight(storm) == ["ok"] * 200
    await fleet.simulator.set_latency(0)
    assert fleet.simulator.state is not None
    issued |= set(fleet.simulator.state.auth.access)
    refresh_tokens = set(fleet.simulator.state.auth.refresh)
    assert (await fleet.simulator.counters())["oauth_events"] == {}  # rotated, never replayed
    created = [r["Id"] for r in await fleet.simulator.records("Case")]
    assert len(created) == 10

    dump = await raw_dump(fleet.redis_url, fleet.redis_prefix)
    everything = b"\n".join([*dump, *(b for values in dump.values() for b in values)])
    secrets = {*issued, *refresh_tokens, DEFAULT_CLIENT_SECRET}
    records = {NAME, PHONE, SUBJECT, "Quartermaine", *ids, *created}
    assert len(issued) >= 4
    assert len(refresh_tokens) >= 3
    assert [s for s in secrets if s.encode() in everything] == []
    assert [r for r in records if r.encode() in everything] == []
    # The shape of every Salesforce access token: the org id, then "!AQ" (the 18 bytes; "!AQ"
    # alone turns up in random ciphertext about once in a few hundred dumps).
    token_shape = f"{fleet.simulator.state.auth.org_id[:15]}!AQ".encode()
    assert token_shape not in everything

    # Not vacuous: the tokens, refresh token, results and claims are there, and they open.
    seal = Seal(parse_keys(TEST_REDIS_KEY, "test key"))
    main, rotating = accounts["main"], accounts["rotating"]
    token_key = f"{fleet.redis_prefix}token:main:{main.scope}"
    refresh_key = f"{fleet.redis_prefix}refresh:rotating:{rotating.scope}"
    assert seal.open_text(token_key, field(dump, token_key, b"value")) in issued
    assert seal.open_text(refresh_key, field(dump, refresh_key, b"value")) in (
        await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID)
    )
    client = aioredis.from_url(fleet.redis_url)
    try:
        ttl_days = await client.pttl(refresh_key) / 86_400_000
    finally:
        await client.aclose()
    assert 29 < ttl_days <= 30  # SFWORKER_REFRESH_TOKEN_TTL_DAYS, default 30
    results = [
        k for k in dump if k.startswith(f"{fleet.redis_prefix}result:{main.scope}/".encode())
    ]
    claims = [k for k in dump if k.startswith(f"{fleet.redis_prefix}insert-sent:".encode())]
    assert len(results) >= 10 + 100 + 10
    assert len(claims) == 10
    for kind in ("result", "insert-sent", "claim"):
        values = [
            vs for k, vs in dump.items() if k.startswith(f"{fleet.redis_prefix}{kind}:".encode())
        ]
        assert values, kind
        assert all(v[0].startswith(MAGIC) for v in values), kind  # every one sealed
    stored = seal.open(results[0].decode(), dump[results[0]][0])
    assert stored is not None
    assert b'"status":"ok"' in stored

    # A third worker with another key: it reads none of it, and answers every job.
    for worker in workers:
        worker.stop()
    third = fleet.spawn(two_accounts, prefetch=100, redis_encryption_key=OTHER_KEY)
    await third.wait_ready()
    await fleet.simulator.reset_counters()
    fresh = [search(f"third-{i}") for i in range(10)] + [insert("ins-new", 99)]
    assert await fleet.run_all(fresh) == ["ok"] * 11
    # The same job ids again: a search whose sealed result it cannot read runs again; an insert
    # whose sealed claim it cannot read is not sent a second time (OUTCOME_UNKNOWN).
    again = [search("warm-1", "main", 1), insert("ins-3", 3)]
    for body in again:
        await fleet.jobs.publish(body, correlation_id=f"again-{body['job_id']}")

    async def answered_twice() -> bool:
        seen = Counter(r["job_id"] for r in fleet.jobs.results)
        return all(seen[b["job_id"]] >= 2 for b in again)

    await wait_until(answered_twice, 60, "the repeated jobs' answers")
    last = {r["job_id"]: r for r in fleet.jobs.results}
    assert last["warm-1"]["status"] == "ok"
    assert last["ins-3"]["status"] == "failed"
    assert last["ins-3"]["error"]["code"] == "OUTCOME_UNKNOWN"
    subjects = Counter(r["Subject"] for r in await fleet.simulator.records("Case"))
    assert subjects[f"{SUBJECT} #3"] == 1
    assert subjects[f"{SUBJECT} #99"] == 1
    # The fleet's refresh token is sealed under a key it lacks: it does not replay the file's
    # (spent) one, which would make Salesforce revoke the fleet's chain; it answers the job.
    refused = await fleet.jobs.call(search("third-rotating", "rotating"), wait=30)
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "AUTH_FAILED"
    counters = await fleet.simulator.counters()
    assert counters["token_requests"] == {"client_credentials": 1}
    assert counters["oauth_events"] == {}
    assert len(await fleet.simulator.refresh_tokens(DEFAULT_CLIENT_ID)) == 1  # the chain is alive

    metrics = await third.metrics()
    unreadable = [ln for ln in metrics.splitlines() if ln.startswith("sfworker_redis_unreadable")]
    assert unreadable
    assert float(unreadable[0].split()[1]) >= 3
    log_lines = third.log_path.read_text(errors="replace").splitlines()
    warnings = [ln for ln in log_lines if "key id t1" in ln]
    assert len(warnings) == 1, warnings  # once per key id, however many values
    await asyncio.sleep(0)
