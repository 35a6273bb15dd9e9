"""The result store's interface (`ResultStore`), implemented in this process
(memory_results.py) and for the fleet (redis_results.py): results, job-id bindings and insert
markers."""

from __future__ import annotations

from typing import NamedTuple, Protocol

# A job id's binding lives this much longer than its result: it is written before the job runs
# (at most a 60 s budget) and so outlives the result and the insert marker written after it.
BINDING_MARGIN_SECONDS = 65.0
_FINGERPRINTED = b"fp1:"


class Binding(NamedTuple):
    """What `bind` found: the fingerprint the job id was bound to before (None when this call
    bound it) and the stored result (None when there is none)."""

    held: bytes | None
    stored: bytes | None


def pack_result(fingerprint: bytes, result: bytes) -> bytes:
    """A stored result: the fingerprint of its job, then the published result."""
    return _FINGERPRINTED + fingerprint + b"\n" + result


def unpack_result(stored: bytes) -> tuple[bytes, bytes]:
    """The fingerprint of its job and the published result of a stored value (a value not
    packed by `pack_result` binds no job: an empty fingerprint)."""
    if not stored.startswith(_FINGERPRINTED):
        return b"", stored
    fingerprint, _, result = stored[len(_FINGERPRINTED) :].partition(b"\n")
    return fingerprint, result


class ResultStore(Protocol):
    """Results of recent jobs by job_id, so a redelivered job is answered, not run again; and
    the "insert sent" markers that keep an insert from being POSTed twice."""

    async def get(self, job_id: str) -> bytes | None: ...

    async def put(self, job_id: str, result: bytes) -> None: ...

    async def bind(self, job_id: str, fingerprint: bytes) -> Binding:
        """Bind the job id to the job of this fingerprint unless it is bound already, and read
        its stored result, in one step (one round trip to Redis: the same count as a plain
        `get`). A binding outlives the job's stored result and insert marker
        (BINDING_MARGIN_SECONDS)."""
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
