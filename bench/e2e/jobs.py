"""A search job as the contract writes it, for the benchmarks that publish through BlockClient
(noisy.py, flood.py and the flooding tenant's own process, flooder.py)."""

from __future__ import annotations

from typing import Any

ACME = "SELECT Id, Name FROM Account WHERE Name = 'Acme'"  # three records on the lab's org


def search_job(job_id: str, account: str, timeout_ms: int, soql: str = ACME) -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": job_id,
        "account": account,
        "operation": "search",
        "timeout_ms": timeout_ms,
        "soql": soql,
    }
