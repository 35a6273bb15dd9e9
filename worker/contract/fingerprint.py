"""The fingerprint of a job: what binds a `job_id` to the one job it was first used for.

A job id is an idempotency key. The rule payment APIs follow: the same key with the same job is
the same job (a redelivery, an honest re-send) and gets the same answer; the same key with a
different job is an error, never the first job's answer. The fingerprint covers the operation,
the account as resolved, the tenant, and every field that changes what Salesforce is asked.
It leaves out what differs between a redelivery and a re-send (`timeout_ms`, `sent_at`, AMQP
properties). Each part is hashed on its own, so a mismatch can name the parts that differ
without ever showing a value.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

import orjson

from worker.contract.models import AnyJob

# The job's attributes that make up what Salesforce is asked, per operation (wire names differ
# only for `object`).
_FIELDS: dict[str, tuple[str, ...]] = {
    "search": ("soql", "sosl", "params", "max_records"),
    "get": ("sobject", "id", "fields"),
    "insert": ("sobject", "fields"),
    "update": ("sobject", "id", "fields"),
    "upsert": ("sobject", "external_id_field", "external_id", "fields"),
    "delete": ("sobject", "id"),
}
_WIRE_NAMES = {"sobject": "object"}
_COMMON = ("operation", "account", "tenant")


def _digest(value: Any) -> bytes:
    canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return blake2b(canonical, digest_size=8).hexdigest().encode()


def fingerprint(job: AnyJob, account: str | None) -> bytes:
    """`name=digest` per part, `|`-separated: `account` is the account the job runs on (its
    own name when it names none that exists)."""
    parts = [
        b"operation=" + job.operation.encode(),
        b"account=" + _digest(account),
        b"tenant=" + _digest(job.tenant),
    ]
    for attribute in _FIELDS[job.operation]:
        name = _WIRE_NAMES.get(attribute, attribute)
        parts.append(name.encode() + b"=" + _digest(getattr(job, attribute)))
    return b"|".join(parts)


def _parts(print_: bytes) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for part in print_.split(b"|"):
        name, _, digest = part.partition(b"=")
        found[name.decode(errors="replace")] = digest
    return found


def differences(first: bytes, second: bytes) -> list[str]:
    """The names of the parts in which two fingerprints differ; when the operation differs,
    only the operation, account and tenant (the other parts cannot compare)."""
    a, b = _parts(first), _parts(second)
    if a.get("operation") != b.get("operation"):
        return [name for name in _COMMON if a.get(name) != b.get(name)]
    names = list(a) + [name for name in b if name not in a]
    return [name for name in names if a.get(name) != b.get(name)]
