"""The whole pipeline, measured: `bench/pipeline` (see bench/README.md).

Everything runs on 127.0.0.1: the real RabbitMQ and Redis, the project's simulator in a process
of its own, and each system under test in processes of its own. Every run writes its raw
figures as JSON and prints markdown tables of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sfsim.testing import SimulatorClient

from bench.e2e import procs
from bench.e2e.broker import Broker
from bench.e2e.burst import render_burst
from bench.e2e.flood import render_flood
from bench.e2e.paired import render_paired
from bench.e2e.procs import ROOT, start_simulator
from bench.e2e.report import render
from bench.e2e.runs import Lab
from bench.e2e.sections import SECTIONS, Counts, run_sections, seed
from bench.e2e.systems import Context, clear_redis

PACKAGES = (
    "sfworker",
    "aio-pika",
    "aiormq",
    "aiohttp",
    "pydantic",
    "prometheus-client",
    "orjson",
    "celery",
    "kombu",
    "simple-salesforce",
    "requests",
    "aiosalesforce",
    "httpx",
    "redis",
)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/pipeline",
        description="End-to-end throughput, latency, CPU and memory of sfworker against a "
        "minimal baseline and the usual Python stacks (RabbitMQ, Redis, simulator on 127.0.0.1).",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, any of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--repeat", type=_positive, help="repetitions (default 3; quick 1)")
    parser.add_argument("--jobs", type=_positive, help="jobs per throughput run (5000; quick 1000)")
    parser.add_argument("--storm-jobs", type=_positive, help="jobs of a token storm (1000; 400)")
    parser.add_argument("--large-jobs", type=_positive, help="large searches (50; quick 10)")
    parser.add_argument(
        "--burst-jobs", type=_positive, help="jobs of one account's burst (2000; quick 1000)"
    )
    parser.add_argument(
        "--flood-jobs",
        type=_positive,
        help="jobs of tenant A's flood (10000; quick 2000)",
    )
    parser.add_argument(
        "--rate-0ms", type=float, default=400.0, help="paced jobs/s for latency at 0 ms (400)"
    )
    parser.add_argument(
        "--rate-100ms", type=float, default=200.0, help="paced jobs/s for latency at 100 ms (200)"
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="RabbitMQ (default amqp://guest:guest@127.0.0.1:5672/ or $BENCH_AMQP_URL)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis (default redis://127.0.0.1:6379/0 or $BENCH_REDIS_URL)",
    )
    parser.add_argument(
        "--latencies",
        default="0,100",
        help="Salesforce latencies in ms, comma-separated, for the sections that vary it (0,100)",
    )
    parser.add_argument("--out", type=Path, help="JSON file (default .bench-results/...json)")
    parser.add_argument(
        "--time-limit", type=_positive, default=5400, help="give up after this many seconds"
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        parser.error(f"unknown section(s) {', '.join(unknown) or '(none)'}; pick from {SECTIONS}")
    args.chosen = chosen
    for host_url in (args.amqp_url, args.redis_url):
        if "@127.0.0.1" not in host_url and "//127.0.0.1" not in host_url:
            parser.error(f"{host_url.split('@')[-1]}: the benchmark only talks to 127.0.0.1")
    return args


def counts_for(args: argparse.Namespace) -> Counts:
    quick = args.quick
    return Counts(
        repeat=args.repeat or (1 if quick else 3),
        jobs=args.jobs or (1000 if quick else 5000),
        paced_0ms=400 if quick else 2000,
        paced_100ms=200 if quick else 1000,
        rate_0ms=args.rate_0ms,
        rate_100ms=args.rate_100ms,
        storm_jobs=args.storm_jobs or (400 if quick else 1000),
        large_jobs=args.large_jobs or (10 if quick else 50),
        burst_jobs=args.burst_jobs or (1000 if quick else 2000),
        flood_jobs=args.flood_jobs or (2000 if quick else 10_000),
        latencies=tuple(int(ms) for ms in args.latencies.split(",") if ms.strip()),
        processes=(1, 2, 4),
    )


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return head + ("+dirty" if dirty else "")


def _server_versions(broker: Broker, redis_url: str) -> dict[str, str]:
    found = {"rabbitmq": "?", "redis": "?"}
    try:
        connection = broker._connection  # the underlying aiormq connection knows the server
        underlay = getattr(getattr(connection, "transport", None), "connection", None)
        props = getattr(underlay, "server_properties", None) or {}
        raw = props.get("version", "?")
        found["rabbitmq"] = raw.decode() if isinstance(raw, bytes) else str(raw)
    except Exception:  # noqa: S110 - versions are information only
        pass
    try:
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        found["redis"] = str(client.info("server").get("redis_version", "?"))
        client.close()
    except Exception:  # noqa: S110
        pass
    return found


def meta(args: argparse.Namespace, counts: Counts, broker: Broker) -> dict[str, Any]:
    return {
        "command": "bench/pipeline " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": _git(),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()} {platform.machine()}",
            "python": f"{platform.python_version()} ({platform.python_implementation()})",
            "load_average_at_start": os.getloadavg(),
        },
        "servers": _server_versions(broker, args.redis_url),
        "versions": {p: _version(p) for p in PACKAGES},
        "counts": counts.__dict__,
        "sections": args.chosen,
    }


async def run(args: argparse.Namespace, trials: list[dict[str, Any]], info: dict[str, Any]) -> None:
    counts = counts_for(args)
    run_id = uuid.uuid4().hex[:8]
    sim_child, sim_url = start_simulator()
    print(f"simulator: {sim_url} (pid {sim_child.pid})", file=sys.stderr, flush=True)
    sim = SimulatorClient(sim_url)
    broker = Broker(args.amqp_url)
    with tempfile.TemporaryDirectory(prefix="sfworker-bench-") as workdir:
        try:
            await broker.open()
            info.update(meta(args, counts, broker))
            lab = Lab(broker, sim, sim_child, reply_timeout=300.0)
            await seed(lab)
            ctx = Context(
                amqp_url=args.amqp_url,
                sim_url=sim_url,
                workdir=Path(workdir),
                run_id=run_id,
                redis_url=args.redis_url,
            )
            results = args.out.parent if args.out else ROOT / ".bench-results"
            results.mkdir(parents=True, exist_ok=True)
            await run_sections(lab, ctx, args.chosen, counts, trials.append, results)
        finally:
            procs.kill_all()  # the simulator and any system still running (after an abort)
            await broker.close()
            await sim.close()
            sim_child.stop()
            try:
                clear_redis(args.redis_url, f"sfworker-bench-{run_id}-")
            except Exception as exc:
                print(f"bench: could not clear Redis keys: {exc}", file=sys.stderr)
            info["load_average_at_end"] = os.getloadavg()


async def _bounded(
    args: argparse.Namespace, trials: list[dict[str, Any]], info: dict[str, Any]
) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    async with asyncio.timeout(args.time_limit):
        await run(args, trials, info)


def write_json(path: Path, info: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": info, "trials": trials}, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out: Path = args.out or ROOT / ".bench-results" / f"pipeline-{stamp}.json"
    trials: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    code = 0
    try:
        asyncio.run(_bounded(args, trials, info))
    except TimeoutError:
        print(f"bench: stopped after --time-limit {args.time_limit} s", file=sys.stderr)
        code = 124
    except asyncio.CancelledError:
        print("bench: stopped by a signal", file=sys.stderr)
        code = 130
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        code = 1
    if trials:
        write_json(out, info, trials)
        print(f"raw figures: {out}", file=sys.stderr)
        print(render(trials, (0, 100)))
        for extra in (render_burst(trials), render_paired(trials), render_flood(trials)):
            if extra:
                print("\n" + extra)
        print()
        _print_meta(info)
    return code


def _print_meta(info: dict[str, Any]) -> None:
    m = info.get("machine", {})
    print(f"machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('system')}")
    print(f"python {m.get('python')}; servers: {info.get('servers')}")
    versions = info.get("versions", {})
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"load average at start {m.get('load_average_at_start')}, "
        f"at end {info.get('load_average_at_end')}; git {info.get('git')}"
    )
    print(f"command: {info.get('command')}")


if __name__ == "__main__":
    sys.exit(main())
