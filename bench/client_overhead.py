"""Client overhead per call: µs of CPU that one SOQL search costs the calling process.

The Salesforce simulator runs in a separate process (its CPU is not counted) on 127.0.0.1 with
zero latency, so what this process spends per call is the client's own work: building the
request, the HTTP stack, decoding the answer and its bookkeeping. The same query is sent by:

- raw aiohttp (the floor): one GET with a fixed token and the answer decoded, nothing else:
  the least any client can cost;
- sfworker: `SalesforceClient.execute` with a `SearchJob` (sequential, and 50 in flight);
- simple-salesforce (sync, requests): `Salesforce.query`;
- aiosalesforce (async, httpx): `Salesforce.query`, the async generator consumed fully.

Run it with `bench/run` (it installs the competitors into .bench-venv only); see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol, cast

import aiohttp
import aiosalesforce
import httpx
import orjson
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from simple_salesforce import Salesforce as SimpleSalesforce

from worker.accounts import Account, parse_accounts
from worker.app import token_manager
from worker.contract import SearchJob, Status, parse_job
from worker.deadline import Deadline
from worker.observability.metrics import Metrics
from worker.salesforce.client import SalesforceClient
from worker.salesforce.http import create_session
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
API_VERSION = "62.0"
SOQL = "SELECT Id, Name FROM Account WHERE Name = 'Acme'"
CONCURRENCY = 50
SEED = [
    {"Name": "Acme", "Phone": "+1 555 0100"},
    {"Name": "Acme", "Phone": "+1 555 0101"},
    {"Name": "Acme", "Phone": "+1 555 0102"},
    {"Name": "Globex", "Phone": "+1 555 0200"},
    {"Name": "Initech", "Phone": "+1 555 0300"},
]
EXPECTED = sum(1 for r in SEED if r["Name"] == "Acme")
SIM_START_TIMEOUT = 30.0

_SIMULATOR: subprocess.Popen[bytes] | None = None
TIMES = "\N{MULTIPLICATION SIGN}"
NOTES: list[str] = []


# --- the simulator, in its own process -------------------------------------------------------


class Simulator:
    """`python -m worker simulator` on a free loopback port, with a tiny control-API client."""

    def __init__(self) -> None:
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "simulator", "--host", HOST, "--port", "0"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        global _SIMULATOR
        _SIMULATOR = self._proc
        try:
            self.base_url = self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> str:
        out = self._proc.stdout
        assert out is not None
        give_up = time.monotonic() + SIM_START_TIMEOUT
        buffer = b""
        while b"\n" not in buffer:
            left = give_up - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                raise RuntimeError(f"the simulator did not start:\n{self._stderr_tail()}")
            ready, _, _ = select.select([out], [], [], min(left, 0.5))
            if ready:
                chunk = out.read1(4096)
                if not chunk:
                    continue
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        prefix = "simulator listening on "
        if not line.startswith(prefix):
            raise RuntimeError(f"unexpected first line from the simulator: {line!r}")
        url = line.removeprefix(prefix).strip()
        if urllib.parse.urlsplit(url).hostname != HOST:
            raise RuntimeError(f"the simulator is not on {HOST}: {url}")
        return url

    def _stderr_tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace")

    def control(self, path: str, body: Any) -> Any:
        return _post_json(f"{self.base_url}{path}", body)

    def token(self) -> str:
        """One client_credentials token, by a plain POST to the token endpoint."""
        form = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
            }
        )
        url = f"{self.base_url}/services/oauth2/token"
        answer = _post(url, form.encode(), "application/x-www-form-urlencoded")
        return str(answer["access_token"])

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark process dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _post_json(url: str, body: Any) -> Any:
    return _post(url, json.dumps(body).encode(), "application/json")


def _post(url: str, data: bytes, content_type: str) -> Any:
    """POST to the simulator (always http://127.0.0.1, checked in _wait_listening)."""
    request = urllib.request.Request(  # noqa: S310 - the loopback simulator only
        url, data=data, headers={"Content-Type": content_type}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


@contextmanager
def simulator() -> Iterator[Simulator]:
    sim = Simulator()
    try:
        sim.control("/_sim/latency", {"ms": 0, "jitter_ms": 0, "token_ms": 0})
        # The default daily API limit (100,000) would be reached by long runs; lift it.
        sim.control("/_sim/limits", {"daily_max": 1_000_000_000})
        ids = sim.control("/_sim/records", {"object": "Account", "records": SEED})["ids"]
        assert len(ids) == len(SEED)
        yield sim
    finally:
        sim.stop()


# --- the clients -------------------------------------------------------------------------------


class Client(Protocol):
    label: str

    def batch(self, n: int) -> int:
        """Send the query n times; return the record count of the last answer."""
        ...

    def close(self) -> None: ...


class _AsyncClient:
    """An async client driven from the benchmark's event loop: `batch` sends one query after
    another, or `concurrency` at a time (asyncio.gather + a semaphore)."""

    def __init__(self, name: str, loop: asyncio.Runner, concurrency: int) -> None:
        self._loop = loop
        self._concurrency = concurrency
        self.label = name if concurrency == 1 else f"{name} ({concurrency} concurrent)"

    async def _one(self) -> int:
        """Send the query once; return the record count."""
        raise NotImplementedError

    async def _sequential(self, n: int) -> int:
        count = 0
        for _ in range(n):
            count = await self._one()
        return count

    async def _concurrent(self, n: int) -> int:
        slots = asyncio.Semaphore(self._concurrency)

        async def one() -> int:
            async with slots:
                return await self._one()

        counts = await asyncio.gather(*(one() for _ in range(n)))
        return min(counts)

    def batch(self, n: int) -> int:
        if self._concurrency == 1:
            return self._loop.run(self._sequential(n))
        return self._loop.run(self._concurrent(n))


class SfworkerClient(_AsyncClient):
    """sfworker's SalesforceClient.execute, wired as in worker.app (session, tokens, metrics)."""

    def __init__(self, loop: asyncio.Runner, base_url: str, concurrency: int = 1) -> None:
        super().__init__("sfworker", loop, concurrency)
        # One HTTP call per search, like the other clients: coalescing off (bench/coalescing.py).
        self.settings = Settings(allow_insecure_localhost=True, http_port=0, coalesce_wait_ms=0)
        accounts = parse_accounts(
            {
                "accounts": {
                    "bench": {
                        "instance_url": base_url,
                        "flow": "client_credentials",
                        "client_id": DEFAULT_CLIENT_ID,
                        "client_secret": DEFAULT_CLIENT_SECRET,
                        "api_version": API_VERSION,
                        # The default cap is 25 in flight per account; allow the 50 asked for.
                        "max_concurrency": CONCURRENCY,
                        "default": True,
                    }
                }
            },
            ROOT,
            allow_insecure_localhost=True,
        )
        self.account: Account = accounts.by_name["bench"]
        job = parse_job({"v": 1, "job_id": "bench", "operation": "search", "soql": SOQL})
        assert isinstance(job, SearchJob)
        self.job = job
        self._client, self._close = loop.run(self._open())

    async def _open(self) -> tuple[SalesforceClient, Callable[[], Awaitable[None]]]:
        metrics = Metrics()
        session = create_session(self.settings)
        tokens = token_manager(session, self.settings, metrics)

        async def close() -> None:
            await tokens.close()
            await session.close()

        return SalesforceClient(session, tokens, self.settings, metrics), close

    async def _one(self) -> int:
        outcome = await self._client.execute(self.job, self.account, Deadline.after(60))
        if outcome.status is not Status.OK or outcome.records is None:
            raise RuntimeError(f"sfworker search failed: {outcome}")
        return len(outcome.records)

    def close(self) -> None:
        self._loop.run(self._close())


class AiohttpFloorClient(_AsyncClient):
    """The floor: a bare aiohttp GET of the query with a fixed token, the body decoded with
    orjson. No deadline, retries, token manager, classification or metrics."""

    def __init__(self, loop: asyncio.Runner, sim: Simulator) -> None:
        super().__init__("raw aiohttp (floor)", loop, 1)
        self._url = f"{sim.base_url}/services/data/v{API_VERSION}/query"
        self._headers = {"Authorization": f"Bearer {sim.token()}", "Accept": "application/json"}
        self._session: aiohttp.ClientSession = loop.run(self._open())

    async def _open(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    async def _one(self) -> int:
        async with self._session.get(
            self._url, params={"q": SOQL}, headers=self._headers
        ) as response:
            body = orjson.loads(await response.read())
        return len(body["records"])

    def close(self) -> None:
        self._loop.run(self._session.close())


class SimpleSalesforceClient:
    """simple-salesforce with a token from a plain POST; base_url re-pointed to http://."""

    label = "simple-salesforce"

    def __init__(self, sim: Simulator) -> None:
        self.sf = SimpleSalesforce(
            instance_url=sim.base_url, session_id=sim.token(), version=API_VERSION
        )
        forced = self.sf.base_url
        # It builds base_url as https://{host:port}/...; the simulator speaks plain http.
        self.sf.base_url = f"{sim.base_url}/services/data/v{API_VERSION}/"
        NOTES.append(
            f"simple-salesforce: Salesforce(instance_url, session_id) builds base_url {forced!r} "
            f"(https forced); it was set to {self.sf.base_url!r}; token by a plain POST to "
            "/services/oauth2/token (client_credentials)."
        )

    def batch(self, n: int) -> int:
        query = self.sf.query
        result: dict[str, Any] = {}
        for _ in range(n):
            result = query(SOQL)
        return len(result["records"])

    def close(self) -> None:
        self.sf.session.close()


class _LoopbackSalesforce(aiosalesforce.Salesforce):
    """aiosalesforce.Salesforce whose base_url setter accepts the simulator's URL.

    The stock setter only admits https://NAME(.sandbox|.develop).my.salesforce.com; everything
    else (auth, retries, events, the request path) is the library's own code.
    """

    @property
    def base_url(self) -> str:
        return self._loopback_base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._loopback_base_url = value.rstrip("/")


class AiosalesforceClient(_AsyncClient):
    """aiosalesforce with its own ClientCredentialsFlow against the simulator."""

    def __init__(self, loop: asyncio.Runner, sim: Simulator, concurrency: int = 1) -> None:
        super().__init__("aiosalesforce", loop, concurrency)
        try:
            aiosalesforce.Salesforce(
                httpx_client=cast(httpx.AsyncClient, None),  # a probe: never sends
                base_url=sim.base_url,
                auth=aiosalesforce.ClientCredentialsFlow(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
            )
            rejected = None
        except ValueError as exc:
            rejected = str(exc).splitlines()[0]
        if concurrency == 1:
            NOTES.append(
                "aiosalesforce: Salesforce(base_url=...) "
                + (f"refuses the simulator ({rejected!r}); " if rejected else "accepted it; ")
                + "a subclass overrides only the base_url property (no validation), auth is the "
                "stock ClientCredentialsFlow, retries/events/request path are unchanged."
            )
        self.sf: aiosalesforce.Salesforce = loop.run(self._open(sim.base_url))

    async def _open(self, base_url: str) -> aiosalesforce.Salesforce:
        return _LoopbackSalesforce(
            httpx_client=httpx.AsyncClient(),
            base_url=base_url,
            auth=aiosalesforce.ClientCredentialsFlow(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
            version=API_VERSION,
        )

    async def _one(self) -> int:
        return len([record async for record in self.sf.query(SOQL)])

    def close(self) -> None:
        self._loop.run(self.sf.httpx_client.aclose())


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Sample:
    cpu_s: float
    wall_s: float


@dataclass
class Row:
    label: str
    calls: int
    cpu_us: float
    wall_us: float

    @property
    def per_second(self) -> float:
        return 1e6 / self.wall_us


def measure(client: Client, calls: int, warmup: int) -> Sample:
    if warmup:
        client.batch(warmup)
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    count = client.batch(calls)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    if count != EXPECTED:
        raise RuntimeError(f"{client.label}: {count} records, expected {EXPECTED}")
    return Sample(cpu1 - cpu0, wall1 - wall0)


def run(args: argparse.Namespace) -> list[Row]:
    samples: dict[str, list[Sample]] = {}
    with simulator() as sim, asyncio.Runner() as loop:
        print(
            f"simulator: {sim.base_url} (separate process), latency 0 ms, "
            f"{len(SEED)} Account records, {EXPECTED} named 'Acme'",
            flush=True,
        )
        clients: list[Client] = []
        try:
            clients.append(SfworkerClient(loop, sim.base_url))
            clients.append(SfworkerClient(loop, sim.base_url, CONCURRENCY))
            clients.append(AiohttpFloorClient(loop, sim))
            clients.append(SimpleSalesforceClient(sim))
            clients.append(AiosalesforceClient(loop, sim))
            if args.aio_concurrent:
                clients.append(AiosalesforceClient(loop, sim, CONCURRENCY))
            for client in clients:
                # The first call fetches the token; each client must really get the records.
                got = client.batch(1)
                assert got > 0, f"{client.label}: no records"
                samples[client.label] = []
            for repeat in range(1, args.repeat + 1):
                for client in clients:
                    samples[client.label].append(measure(client, args.calls, args.warmup))
                print(f"repeat {repeat}/{args.repeat} done", file=sys.stderr, flush=True)
        finally:
            for client in clients:
                client.close()
    return [
        Row(
            label,
            args.calls,
            min(s.cpu_s for s in runs) / args.calls * 1e6,
            min(s.wall_s for s in runs) / args.calls * 1e6,
        )
        for label, runs in samples.items()
    ]


# --- output ------------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def report(rows: list[Row], args: argparse.Namespace) -> None:
    base = rows[0]
    floor = next((r for r in rows if r.label.startswith("raw aiohttp")), base)
    headers = [
        "client",
        "calls",
        "CPU µs/call",
        "wall µs/call",
        "calls/s",
        "CPU ratio vs sfworker",
        f"CPU {TIMES} floor",
    ]
    table = [
        [
            row.label,
            str(row.calls),
            f"{row.cpu_us:.1f}",
            f"{row.wall_us:.1f}",
            f"{row.per_second:,.0f}",
            f"{row.cpu_us / base.cpu_us:.2f}{TIMES}",
            f"{row.cpu_us / floor.cpu_us:.2f}{TIMES}",
        ]
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "| " + " | ".join(parts) + " |"

    print()
    print(
        f"SOQL: {SOQL}\n"
        f"{args.calls} calls per client, best of {args.repeat} repeats (each column), "
        f"{args.warmup} warm-up calls before each"
    )
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in table:
        print(line(cells))
    print()
    for row in rows:
        if row.label.startswith(("sfworker", "raw aiohttp")) or "concurrent" in row.label:
            continue
        ratio = row.cpu_us / base.cpu_us
        if ratio >= 1:
            print(f"sfworker uses {ratio:.1f}{TIMES} less CPU per call than {row.label}")
        else:
            print(f"sfworker uses {1 / ratio:.1f}{TIMES} more CPU per call than {row.label}")
    print()
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.system()} {platform.machine()}"
    )
    packages = ["sfworker", "aiohttp", "simple-salesforce", "requests", "aiosalesforce", "httpx"]
    print("versions: " + ", ".join(f"{p} {_version(p)}" for p in packages))
    print("notes:")
    print(
        f"  sfworker: SalesforceClient.execute(SearchJob) on a client_credentials account, "
        f"Deadline.after(60) per call; max_concurrency={CONCURRENCY} for the account so the "
        f"concurrent variant really has {CONCURRENCY} in flight (asyncio.gather + semaphore)."
    )
    print(
        "  raw aiohttp (floor): aiohttp.ClientSession() defaults, one GET of /query with a fixed "
        "token, the body decoded with orjson; the least any client can cost per call."
    )
    for note in NOTES:
        print(f"  {note}")


# --- main --------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


class Aborted(BaseException):
    """Raised by the signal handlers; a BaseException so that no client's `except` swallows it
    (sfworker, for one, reads a TimeoutError as a job deadline and retries)."""


def _abort(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGALRM:
        # Second stage: if unwinding hangs, the process ends anyway (the simulator dies with it).
        signal.signal(signal.SIGALRM, _hard_exit)
        signal.alarm(10)
        raise Aborted("the benchmark ran past its --time-limit")
    raise Aborted(f"stopped by {signal.Signals(signum).name}")


def _hard_exit(signum: int, frame: FrameType | None) -> None:
    if _SIMULATOR is not None:
        _SIMULATOR.kill()
    print("bench: cleanup did not finish; exiting", file=sys.stderr, flush=True)
    os._exit(124)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=_positive, default=2000, help="measured calls per client")
    parser.add_argument("--repeat", type=_positive, default=3, help="repeats; the best is kept")
    parser.add_argument(
        "--warmup", type=_non_negative, default=200, help="calls before each measurement"
    )
    parser.add_argument(
        "--aio-concurrent",
        action="store_true",
        help=f"also measure aiosalesforce with {CONCURRENCY} in flight",
    )
    parser.add_argument(
        "--time-limit", type=_positive, default=600, help="give up after this many seconds"
    )
    args = parser.parse_args(argv)
    for signum in (signal.SIGALRM, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _abort)
    signal.alarm(args.time_limit)
    try:
        rows = run(args)
    except Aborted as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 124
    finally:
        signal.alarm(0)
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
