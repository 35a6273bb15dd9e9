"""The interface every result store implements: in this process (memory.py) or for the fleet
(redis.py)."""

from __future__ import annotations

from typing import NamedTuple, Protocol

# A job id's binding lives this much longer than its result: it is written before the job runs
# (at most a 60 s budget) and so outlives the result and the insert marker written after it.
CLAIM_MARGIN_SECONDS = 65.0
_FINGERPRINTED = b"fp1:"


class Claimed(NamedTuple):
    """What `claim` found: the fingerprint the job id was bound to before (None when this call
    bound it) and the stored result (None when there is none)."""

    held: bytes | None
    stored: bytes | None


def pack_result(fingerprint: bytes, result: bytes) -> bytes:
    """A stored result: the fingerprint of its job, then the published result."""
    return _FINGERPRINTED + fingerprint + b"\n" + result


def unpack_result(stored: bytes) -> tuple[bytes | None, bytes]:
    """The fingerprint (None for a result stored by a version before fingerprints) and the
    published result of a stored value."""
    if not stored.startswith(_FINGERPRINTED):
        return None, stored
    fingerprint, _, result = stored[len(_FINGERPRINTED) :].partition(b"\n")
    return fingerprint, result


class ResultStore(Protocol):
    """Results of recent jobs by job_id, so a redelivered job is answered, not run again; and
    the "insert sent" markers that keep an insert from being POSTed twice."""

    async def get(self, job_id: str) -> bytes | None: ...

    async def put(self, job_id: str, result: bytes) -> None: ...

    async def claim(self, job_id: str, fingerprint: bytes) -> Claimed:
        """Bind the job id to the job of this fingerprint unless it is bound already, and read
        its stored result, in one step (one round trip to Redis: the same count as a plain
        `get`). A binding outlives the job's stored result and insert marker
        (CLAIM_MARGIN_SECONDS)."""
        ...

    async def mark_insert_sent(self, job_id: str) -> bool:
        """Written just before an insert's request leaves the process (naming this process).
        False when another process marked it first (the same insert delivered twice, running
        there): this one must not send."""
        ...

    async def insert_sender(self, job_id: str) -> str | None:
        """The process that sent an earlier delivery of this insert (which may have reached
        Salesforce), or None when none was sent."""
        ...

    async def sender_alive(self, sender: str) -> bool:
        """True while that process is alive elsewhere, so its result may still come."""
        ...

    def blind(self) -> bool:
        """True while the fleet's markers cannot be read (Redis out of reach): None from
        insert_sender then only means this process sent nothing."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
