"""Child processes of the benchmark: started with their output in a file, killed with the
benchmark (PR_SET_PDEATHSIG on Linux), measured from /proc (CPU seconds, peak RSS)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_TICKS = os.sysconf("SC_CLK_TCK")
_LIVE: set[Child] = set()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark process dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One process; stdout and stderr go to a temporary file (read back by `tail`)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by stop()
            prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        # The children get the settings given here, never SFWORKER_* of the caller's shell.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SFWORKER_")}
        full_env = {**inherited, **(env or {})}
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log_path(self) -> str:
        return self._log.name

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its reaped children so far (0 once gone)."""
        return cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        _LIVE.discard(self)
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)
        return self.proc.returncode


def kill_all() -> None:
    """Last resort (abort paths): kill every child still running."""
    for child in list(_LIVE):
        with contextlib.suppress(Exception):
            child.proc.kill()
            child.proc.wait(timeout=5)
        _LIVE.discard(child)


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command: state(0) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICKS


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll a no-argument callable until it is true (blocking; only for start-up checks)."""
    assert callable(predicate)
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_simulator(name: str = "simulator") -> tuple[Child, str]:
    """`python -m worker simulator` on a free loopback port, in a process of its own; returns it
    and its base URL once it says it listens (RuntimeError with its output if it does not)."""
    argv = [sys.executable, "-m", "worker", "simulator", "--host", "127.0.0.1", "--port", "0"]
    child = Child(name, argv)
    prefix = "simulator listening on "
    give_up = time.monotonic() + 30
    while True:
        for line in child.tail(10_000).splitlines():
            if line.startswith(prefix):
                return child, line.removeprefix(prefix).strip()
        if time.monotonic() > give_up or not child.alive():
            tail = child.tail()
            child.stop()
            raise RuntimeError(f"the simulator did not start:\n{tail}")
        time.sleep(0.05)
