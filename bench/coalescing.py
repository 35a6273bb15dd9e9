"""Coalescing: Salesforce API calls per 1,000 jobs, and job latency, with coalescing on and off.

Jobs are started at a steady rate (10, 100, 400 per second by default) against the Salesforce
simulator, running in a separate process with 100 ms of latency on every REST call. Each job goes
the worker's own path from receipt to result (`Execution.run`: deadline, account, client,
coalescing), wired as in `worker.app`. For each kind of job (phone searches by SOQL, case
inserts), each rate and each `SFWORKER_COALESCE_WAIT_MS` (0: off; 10: the default) the table shows
how many API calls the simulator counted, per 1,000 jobs, and the p50/p99 job latency. Every job
is checked: each search must find exactly its own contact, each insert must create its own case.

Run it with `bench/run coalescing [--rates 10,100,400] [--waits 0,10] [--seconds 10]`.

`bench/run coalescing --lookups [--rates 5,20,50,100,400] [--seconds 10]` measures issue 28's
table instead: lookups by phone over 300 contacts, 10 % of them unknown numbers, Poisson arrivals,
for three configurations: `off` (every job its own call), `before` (the 10 ms window, no merging,
no sharing: the default before issue 28) and `after` (the defaults: adaptive batching, lookups
merged into IN queries, identical reads shared); `--configs bare,...` adds plain HTTP calls to the
simulator at the same pace (not the worker: what a call costs on this machine beside the
simulator's latency), and columns with each row over the bare call's p50. It prints API calls
per job and the p50/p99 latency added to Salesforce's, and checks each job's records against the
seeded ground truth.

`bench/run coalescing --model` prints what the adaptive policy alone gives in that scenario: the
worker's own `Coalescer` (default settings) on a virtual clock, no CPU or network noise.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import platform
import selectors
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimulatorClient

from worker.accounts import Account, Accounts, Flow, parse_accounts
from worker.app import token_manager
from worker.contract import BlockResult, parse_job
from worker.deadline import Deadline
from worker.jobs import Execution, Incoming, admit
from worker.jobs.once import InsertGuard
from worker.observability.metrics import Metrics
from worker.runtime import heap
from worker.salesforce.binding import bind_soql
from worker.salesforce.client import SalesforceClient
from worker.salesforce.http import create_session
from worker.settings import Settings
from worker.stores.memory_results import MemoryResultStore

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SOQL = "SELECT Id, LastName FROM Contact WHERE Phone = :p"
KINDS = ("search", "insert")
# Distinct contacts (phone numbers) the searches cycle over: enough to tell every job's answer
# from its neighbours', few enough that the simulator's own query time (a scan) stays small.
CONTACTS = 400


# --- the simulator, in its own process -------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark process dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def start_simulator() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "simulator",
        "--host",
        HOST,
        "--port",
        "0",
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
    except BaseException:
        await stop_simulator(proc)
        raise
    prefix = "simulator listening on "
    if not line.startswith(prefix):
        await stop_simulator(proc)
        raise RuntimeError(f"unexpected first line from the simulator: {line!r}")
    return proc, line.removeprefix(prefix).strip()


async def stop_simulator(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- one run: a kind of job, a rate, a wait ----------------------------------------------------


@dataclass
class Row:
    kind: str
    rate: int
    wait_ms: int
    jobs: int
    api_calls: int
    composites: int
    latencies_ms: list[float]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Summary:
    """One configuration over its repeats: the median of each figure."""

    kind: str
    rate: int
    wait_ms: int
    jobs: int
    api_calls: float
    p50: float
    p99: float

    @classmethod
    def of(cls, runs: list[Row]) -> Summary:
        first = runs[0]
        return cls(
            first.kind,
            first.rate,
            first.wait_ms,
            first.jobs,
            statistics.median(r.api_calls for r in runs),
            statistics.median(r.percentile(0.50) for r in runs),
            statistics.median(r.percentile(0.99) for r in runs),
        )

    @property
    def per_thousand(self) -> float:
        return self.api_calls * 1000 / self.jobs


def accounts(base_url: str, keys: dict[str, Any] | None = None) -> Accounts:
    table = {
        "instance_url": base_url,
        "flow": "client_credentials",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "default": True,
        **(keys or {}),
    }
    return parse_accounts({"accounts": {"bench": table}}, ROOT, allow_insecure_localhost=True)


def job_body(kind: str, run_id: str, i: int, phones: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"v": 1, "job_id": f"{run_id}-{i}", "timeout_ms": 10_000}
    if kind == "search":
        phone = phones[i % len(phones)]
        return {**body, "operation": "search", "soql": SOQL, "params": {"p": phone}}
    return {
        **body,
        "operation": "insert",
        "sobject": "Case",
        "fields": {"Subject": f"{run_id} {i}"},
    }


def check(kind: str, run_id: str, i: int, result: BlockResult) -> str | None:
    """What is wrong with a job's result, or None."""
    if result.status != "ok":
        return f"job {i}: {result.status} {result.error}"
    if kind == "search":
        names = [r.get("LastName") for r in result.records or []]
        own = f"Caller{i % CONTACTS}"
        if names != [own]:
            return f"job {i}: found {names}, not its own contact {own}"
    elif not result.id:
        return f"job {i}: no id"
    return None


async def one_run(
    sim: SimulatorClient,
    accts: Accounts,
    kind: str,
    rate: int,
    wait_ms: int,
    n: int,
    phones: list[str],
) -> Row:
    settings = Settings(http_port=0, allow_insecure_localhost=True, coalesce_wait_ms=wait_ms)
    metrics = Metrics()
    session = create_session(settings)
    tokens = token_manager(session, settings, metrics)
    client = SalesforceClient(session, tokens, settings, metrics)
    runner = Execution(client, InsertGuard(MemoryResultStore(1000, 60)), metrics)
    run_id = f"{kind}-{rate}-{wait_ms}-{time.time_ns()}"

    async def run(i: int, body: dict[str, Any]) -> tuple[BlockResult, float]:
        now = time.time()
        incoming = Incoming(body=b"", received_wall=now, received_mono=time.monotonic())
        started = time.perf_counter()
        result = await runner.run(admit(accts, parse_job(body), None), incoming)
        return result, (time.perf_counter() - started) * 1000

    try:
        # Warm up: the token, a connection; not measured.
        await run(-1, job_body("search", run_id, 0, phones))
        await sim.reset_counters()
        used_before = int((await sim.counters())["api_usage"]["used"])
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(n):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(run(i, job_body(kind, run_id, i, phones))))
        done = await asyncio.gather(*tasks)
        counters = await sim.counters()
    finally:
        heap.thaw()
        await client.close()
        await tokens.close()
        await session.close()
    problems = [p for i, (r, _) in enumerate(done) if (p := check(kind, run_id, i, r))]
    if kind == "insert":
        ids = {r.id for r, _ in done}
        if len(ids) != n:
            problems.append(f"{n} inserts gave {len(ids)} distinct ids")
    if problems:
        raise RuntimeError(f"{kind} at {rate}/s, wait {wait_ms} ms: " + "; ".join(problems[:5]))
    return Row(
        kind,
        rate,
        wait_ms,
        n,
        int(counters["api_usage"]["used"]) - used_before,
        int(counters["requests"].get("composite", 0)),
        [ms for _, ms in done],
    )


# --- issue 28: lookups by phone, Poisson arrivals -------------------------------------------

LOOKUP_CONTACTS = 300
UNKNOWN_SHARE = 0.10
LOOKUP_SOQL = "SELECT Id, LastName FROM Contact WHERE Phone = :p"
CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (settings, account keys)
    "off": ({"coalesce_wait_ms": 0}, {"share_reads": False, "merge_lookups": False}),
    "before": (
        {"coalesce_wait_ms": 10, "coalesce_policy": "window"},
        {"share_reads": False, "merge_lookups": False},
    ),
    "after": ({}, {}),
    # Not the worker: the same lookups as plain HTTP calls to the simulator, one session, one
    # token: the floor, what a call costs here beside the simulator's latency.
    "bare": ({"coalesce_wait_ms": 0}, {"share_reads": False, "merge_lookups": False}),
}


@dataclass
class LookupRow:
    config: str
    rate: int
    jobs: int
    api_calls: int
    added_ms: list[float]  # each job's latency minus Salesforce's

    def added(self, q: float) -> float:
        ordered = sorted(self.added_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def lookup_run(
    sim: SimulatorClient,
    base_url: str,
    config: str,
    rate: int,
    n: int,
    latency_ms: int,
    truth: dict[str, str],
    seed: int,
) -> LookupRow:
    import random

    overrides, keys = CONFIGS[config]
    settings = Settings(http_port=0, allow_insecure_localhost=True, **overrides)
    accts = accounts(base_url, keys)
    metrics = Metrics()
    session = create_session(settings)
    tokens = token_manager(session, settings, metrics)
    client = SalesforceClient(session, tokens, settings, metrics)
    runner = Execution(client, InsertGuard(MemoryResultStore(1000, 60)), metrics)
    rnd = random.Random(seed)
    known = sorted(truth)
    phones = [
        f"+1 628 555 {rnd.randrange(10_000):04d}"
        if rnd.random() < UNKNOWN_SHARE
        else rnd.choice(known)
        for _ in range(n)
    ]

    account = accts.by_name["bench"]
    bearer: list[str] = []

    async def bare(i: int, phone: str) -> tuple[str | None, float]:
        """A plain call (config `bare`): the statement bound as the worker binds it, the answer
        checked."""
        params = {"q": bind_soql(LOOKUP_SOQL, {"p": phone})}
        headers = {"Authorization": bearer[0], "Accept": "application/json"}
        started = time.perf_counter()
        async with session.get(f"{account.api_base}/query", params=params, headers=headers) as r:
            body = await r.json()
        took = (time.perf_counter() - started) * 1000
        want = [truth[phone]] if phone in truth else []
        got = [record.get("LastName") for record in body.get("records", [])]
        return (None if got == want else f"bare {i} ({phone}): {got}, not {want}"), took

    async def run(i: int, phone: str) -> tuple[str | None, float]:
        """The job's latency, and what was wrong with its answer (None: its ground truth).
        Checked here, so the run holds a float per job rather than every answer: a worker
        keeps no answer once it is published, and a heap of them would make the collector's
        pauses this benchmark's, not the worker's."""
        body = {
            "v": 1,
            "job_id": f"lookup-{config}-{rate}-{seed}-{i}",
            "timeout_ms": 10_000,
            "operation": "search",
            "soql": LOOKUP_SOQL,
            "params": {"p": phone},
        }
        now = time.time()
        incoming = Incoming(body=b"", received_wall=now, received_mono=time.monotonic())
        started = time.perf_counter()
        result = await runner.run(admit(accts, parse_job(body), None), incoming)
        took = (time.perf_counter() - started) * 1000
        want = [truth[phone]] if phone in truth else []
        got = [r.get("LastName") for r in result.records or []]
        expected_status = "ok" if want else "no_data"
        if result.status != expected_status or got != want:
            return f"job {i} ({phone}): {result.status} {got}, not {want}", took
        return None, took

    call = run
    if config == "bare":
        bearer.append((await tokens.get(account)).bearer)
        call = bare  # the same pacing, another call
    try:
        await call(-1, known[0])  # the token, a connection: not measured
        heap.settle()  # as the worker does once started (worker/runtime/heap.py)
        used_before = int((await sim.counters())["api_usage"]["used"])
        loop = asyncio.get_running_loop()
        at = loop.time()
        tasks = []
        for i, phone in enumerate(phones):
            at += rnd.expovariate(rate)  # Poisson arrivals
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(call(i, phone)))
        done = await asyncio.gather(*tasks)
        used = int((await sim.counters())["api_usage"]["used"]) - used_before
    finally:
        heap.thaw()
        await client.close()
        await tokens.close()
        await session.close()
    problems = [problem for problem, _ in done if problem is not None]
    if problems:
        raise RuntimeError(f"{config} at {rate}/s: " + "; ".join(problems[:5]))
    return LookupRow(config, rate, n, used, [ms - latency_ms for _, ms in done])


class _VirtualSelector(selectors.SelectSelector):
    """A selector that never sleeps: when nothing is ready it moves its loop's clock to the
    next timer instead (what `model` runs on)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("the model is stuck: nothing ready and no timer")
            self.now += timeout
        return ready


class _VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: the policy's own timers, no CPU or network noise."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def model(
    rate: float, latency: float, n: int = 20_000, seed: int = 1, settings: Settings | None = None
) -> tuple[float, float, float]:
    """The worker's own batcher (`Coalescer`, with the settings' policy) on a virtual clock:
    Poisson arrivals of lookups of one shape (they merge: only MAX_VALUES of them make a query
    of their own), every request `latency` long. Calls per job, p50 and p99 wait ms (the wait:
    from a job's arrival to the start of the request that carries it)."""
    import math
    import random

    from worker.salesforce.coalesce import Coalescer
    from worker.salesforce.lookups import MAX_VALUES

    settings = settings or Settings(http_port=0)
    account = Account("model", "https://x.my.salesforce.com", "https://x/t", Flow.JWT_BEARER, "c")
    rnd = random.Random(seed)
    gaps = [rnd.expovariate(rate) for _ in range(n)]
    calls = 0
    waits: list[float] = []

    class OneShape:
        """Lookups of one shape: one merged query per MAX_VALUES calls."""

        def __init__(self, _: Account) -> None:
            self.calls = 0

        def add(self, item: float, query: bool) -> tuple[int, int]:
            self.calls += 1
            queries = math.ceil(self.calls / MAX_VALUES)
            return queries, queries

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def request(items: list[float]) -> list[bool]:
            nonlocal calls
            calls += 1
            now = loop.time()
            waits.extend(now - arrived for arrived in items)
            with coalescer.flight(account):
                await asyncio.sleep(latency)
            return [True for _ in items]

        coalescer: Coalescer[float, bool] = Coalescer(
            settings.coalesce_wait_ms / 1000,
            lambda _, items: request(items),
            Metrics(),
            adaptive=settings.coalesce_policy == "adaptive",
            max_wait_seconds=settings.coalesce_max_wait_ms / 1000,
            linger_seconds=settings.coalesce_linger_ms / 1000,
            tally=OneShape,
        )

        async def job() -> None:
            arrived = loop.time()
            deadline = Deadline(arrived + 10.0)
            carried = coalescer.enabled(account) and await coalescer.join(
                account, arrived, deadline=deadline, query=True
            )
            if not carried:  # no company: alone
                await request([arrived])

        tasks = []
        for gap in gaps:
            await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(job()))
        await asyncio.gather(*tasks)
        await coalescer.close()

    loop = _VirtualLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    waits.sort()
    return calls / n, waits[len(waits) // 2] * 1000, waits[int(0.99 * len(waits))] * 1000


def lookup_report(rows: list[LookupRow], args: argparse.Namespace) -> None:
    print(
        f"\nlookups by phone: {LOOKUP_CONTACTS} contacts, {UNKNOWN_SHARE:.0%} unknown numbers, "
        f"Poisson arrivals, {args.latency_ms} ms simulator latency, {args.seconds:g} s per run "
        f"(at most {args.max_jobs} jobs); added = job latency minus {args.latency_ms} ms\n"
    )
    # With a `bare` row at the rate: the worker's own share, over what a plain call took.
    floor = {r.rate: r.added(0.5) for r in rows if r.config == "bare"}
    head = "| config | jobs/s | jobs | API calls | calls per job | p50 added ms | p99 added ms |"
    if floor:
        head += " p50 over a bare call's p50 | p99 over a bare call's p50 |"
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        line = (
            f"| {r.config} | {r.rate} | {r.jobs} | {r.api_calls} | {r.api_calls / r.jobs:.3f} "
            f"| {r.added(0.5):+.1f} | {r.added(0.99):+.1f} |"
        )
        if floor:
            bare = floor.get(r.rate)
            over = [f"{r.added(q) - bare:+.1f}" if bare is not None else "" for q in (0.5, 0.99)]
            line += f" {over[0]} | {over[1]} |"
        print(line)


async def lookup_all(args: argparse.Namespace) -> list[LookupRow]:
    proc, base_url = await start_simulator()
    sim = SimulatorClient(base_url)
    try:
        await sim.set_latency(args.latency_ms, 0, token_ms=20)
        await sim.set_daily_limit(1_000_000_000, used=0)
        phones = [f"+1 415 555 {i:04d}" for i in range(LOOKUP_CONTACTS)]
        await sim.seed(
            "Contact", [{"LastName": f"Caller{i}", "Phone": p} for i, p in enumerate(phones)]
        )
        truth = {p: f"Caller{i}" for i, p in enumerate(phones)}
        rows = []
        for rate in args.rates:
            n = min(args.max_jobs, max(1, round(rate * args.seconds)))
            for config in args.configs:
                row = await lookup_run(
                    sim, base_url, config, rate, n, args.latency_ms, truth, seed=rate
                )
                rows.append(row)
                print(
                    f"{config} {rate}/s: {row.api_calls} calls for {n} jobs, "
                    f"p50 {row.added(0.5):+.1f} ms, p99 {row.added(0.99):+.1f} ms",
                    file=sys.stderr,
                )
        return rows
    finally:
        await sim.close()
        await stop_simulator(proc)


# --- report ------------------------------------------------------------------------------------


def report(rows: list[Summary], args: argparse.Namespace) -> None:
    print(
        f"\nsimulator latency {args.latency_ms} ms on every REST call; jobs paced at each rate "
        f"for {args.seconds:g} s (at most {args.max_jobs} jobs); latency = the worker's path from "
        f"receipt to result (Execution.run); median of {args.repeat} run(s) per line\n"
    )
    head = (
        "| jobs | rate/s | wait ms | jobs per run | API calls | calls per 1,000 jobs "
        "| jobs per call | p50 ms | p99 ms | p99 over latency |"
    )
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        label = "searches" if r.kind == "search" else "inserts"
        print(
            f"| {label} | {r.rate} | {r.wait_ms} | {r.jobs} | {r.api_calls:g} "
            f"| {r.per_thousand:,.0f} | {r.jobs / r.api_calls:.1f} | {r.p50:.1f} | {r.p99:.1f} "
            f"| {r.p99 - args.latency_ms:+.1f} |"
        )
    print()
    by_key = {(r.kind, r.rate, r.wait_ms): r for r in rows}
    for r in rows:
        off = by_key.get((r.kind, r.rate, 0))
        if r.wait_ms == 0 or off is None:
            continue
        saved = 100 * (1 - r.api_calls / off.api_calls) if off.api_calls else 0.0
        print(
            f"{r.kind} at {r.rate}/s, wait {r.wait_ms} ms: {saved:.0f}% fewer API calls, "
            f"p50 {r.p50 - off.p50:+.1f} ms, p99 {r.p99 - off.p99:+.1f} ms vs coalescing off"
        )
    print(
        f"\nPython {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.system()} {platform.machine()}, {len(rows)} configurations"
    )


async def run_all(args: argparse.Namespace) -> list[Summary]:
    proc, base_url = await start_simulator()
    sim = SimulatorClient(base_url)
    try:
        await sim.set_latency(args.latency_ms, 0, token_ms=20)
        await sim.set_daily_limit(1_000_000_000, used=0)
        phones = [f"+1 415 555 {i:04d}" for i in range(CONTACTS)]
        await sim.seed(
            "Contact", [{"LastName": f"Caller{i}", "Phone": p} for i, p in enumerate(phones)]
        )
        accts = accounts(base_url)
        runs: dict[tuple[str, int, int], list[Row]] = {}
        for repeat in range(args.repeat):
            for kind in args.kinds:
                for rate in args.rates:
                    n = min(args.max_jobs, max(1, round(rate * args.seconds)))
                    for wait in args.waits:
                        row = await one_run(sim, accts, kind, rate, wait, n, phones)
                        runs.setdefault((kind, rate, wait), []).append(row)
                        print(
                            f"[{repeat + 1}/{args.repeat}] {kind} {rate}/s wait {wait} ms: "
                            f"{row.api_calls} calls for {n} jobs, "
                            f"p99 {row.percentile(0.99):.1f} ms",
                            file=sys.stderr,
                        )
        return [Summary.of(rows) for rows in runs.values()]
    finally:
        await sim.close()
        await stop_simulator(proc)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of integers") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of integers >= 0")
    return values


def _configs(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in CONFIGS for v in values):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(CONFIGS)}")
    return values


def _kinds(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in KINDS for v in values):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(KINDS)}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", type=_ints, default=[10, 100, 400], help="jobs per second")
    parser.add_argument("--waits", type=_ints, default=[0, 10], help="SFWORKER_COALESCE_WAIT_MS")
    parser.add_argument("--kinds", type=_kinds, default=list(KINDS), help="search,insert")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each run paces")
    parser.add_argument("--max-jobs", type=int, default=2000, help="jobs per run at most")
    parser.add_argument("--latency-ms", type=int, default=100, help="simulated REST latency")
    parser.add_argument("--repeat", type=int, default=1, help="runs per line (the median)")
    parser.add_argument("--time-limit", type=float, default=1200.0, help="seconds, then give up")
    parser.add_argument("--lookups", action="store_true", help="issue 28's table instead")
    parser.add_argument("--model", action="store_true", help="the adaptive policy as a model")
    parser.add_argument(
        "--configs", type=_configs, default=list(CONFIGS), help="off,before,after (--lookups)"
    )
    args = parser.parse_args(argv)
    if any(rate == 0 for rate in args.rates):
        parser.error("--rates must be above 0")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    if (args.lookups or args.model) and "--rates" not in " ".join(argv or sys.argv):
        args.rates = [5, 20, 50, 100, 400]
    if args.model:
        print("| jobs/s | calls per job | p50 wait ms | p99 wait ms |\n|---|---|---|---|")
        for rate in args.rates:
            calls, p50, p99 = model(rate, args.latency_ms / 1000)
            print(f"| {rate} | {calls:.3f} | {p50:.1f} | {p99:.1f} |")
        return 0
    if args.lookups:

        async def lookups_bounded() -> list[LookupRow]:
            async with asyncio.timeout(args.time_limit):
                return await lookup_all(args)

        lookup_report(asyncio.run(lookups_bounded()), args)
        return 0

    async def bounded() -> list[Summary]:
        async with asyncio.timeout(args.time_limit):
            return await run_all(args)

    rows = asyncio.run(bounded())
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
