"""Where a worker's CPU goes: py-spy attached to `sfworker run` during a throughput run, its
samples (collapsed stacks) summed by function and by area (logging, pydantic, metrics, ...)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.e2e.procs import Child
from bench.e2e.runs import Lab, finish, new_ids, ready, wait_replies
from bench.e2e.systems import System, Workload

SAMPLE_RATE = 250  # per second
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")

# Area of a stack: the first rule whose pattern is in any of its frames' file paths, checked
# from the leaf up, so time in orjson called by logging counts as logging.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "tracing (OpenTelemetry, export, hooks)",
        ("opentelemetry", "google/protobuf", "observability/otel", "observability/tracing.py"),
    ),
    ("logging (per-job log lines)", ("/logging/", "observability/logging.py")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("pydantic (validate, copy, dump)", ("pydantic",)),
    ("AMQP client (aio-pika, aiormq, pamqp)", ("aio_pika", "aiormq", "pamqp")),
    ("HTTP client (aiohttp, yarl, multidict)", ("aiohttp", "yarl", "multidict")),
    ("Redis client (redis-py, hiredis)", ("redis/", "hiredis")),
    ("sfworker's own code", ("/worker/",)),
    ("asyncio event loop", ("asyncio",)),
)


def _pyspy() -> str:
    return str(Path(sys.executable).with_name("py-spy"))


def parse(raw: str) -> dict[str, Any]:
    """Collapsed stacks -> total samples, top functions (self and inclusive), areas."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_name(f) for f in stack.split(";")]
        own[frames[-1][0]] += count
        for name in {f[0] for f in frames}:
            inclusive[name] += count
        areas[_area([f[1] for f in frames])] += count
    return {
        "samples": total,
        "self": own.most_common(25),
        "inclusive": inclusive.most_common(40),
        "areas": areas.most_common(),
    }


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _name(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    path = match["file"]
    short = "/".join(path.split("/")[-2:])
    return f"{match['func']} ({short})", path


def _area(paths: list[str]) -> str:
    for path in reversed(paths):
        for area, patterns in AREAS:
            if any(p in path for p in patterns):
                return area
    return "other"


async def profile_trial(
    lab: Lab, system: System, workload: Workload, jobs: int, out: Path
) -> dict[str, Any]:
    """Warm the worker up, attach py-spy, run `jobs` through it at 0 ms, summarize."""
    await lab.sim.set_latency(0, token_ms=0)
    result: dict[str, Any] = {"system": system.label, "latency_ms": 0, "jobs": jobs}
    await system.prepare(lab.broker)
    try:
        system.start()
        await ready(lab, system)
        warm = new_ids(system, 200)
        replies = lab.broker.expect(warm, system.check(workload))
        await lab.broker.load(system.queue, warm, system.encode(workload))
        await wait_replies(lab, system, replies, "the warm-up")
        argv = [_pyspy(), "record", "--pid", str(system.children[0].pid)]
        argv += ["--rate", str(SAMPLE_RATE), "--format", "raw", "--output", str(out)]
        spy = Child("py-spy", argv)
        await asyncio.sleep(1.0)  # attached and sampling
        ids = new_ids(system, jobs)
        replies = lab.broker.expect(ids, system.check(workload))
        cpu0 = system.cpu()
        await lab.broker.load(system.queue, ids, system.encode(workload))
        await wait_replies(lab, system, replies, "the profiled run")
        cpu1 = system.cpu()
        spy.proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(spy.proc.wait, 30)
        spy.stop()
        result["cpu_s_per_1000"] = (cpu1 - cpu0) / jobs * 1000
        result["profile_file"] = str(out)
        raw = await asyncio.to_thread(_read, out)
        result["profile"] = parse(raw) if raw else {}
        result["wrong_answers"] = replies.wrong
    finally:
        result.update(await finish(lab, system))
    return result
