"""Settings of a test's own: topology names no other test uses, the local broker and Redis,
the fleet's Redis key, and the environment that gives a `sfworker run` process the settings."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from worker.settings import Settings

LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def topology_names() -> dict[str, str]:
    """Queue and exchange names no other test uses."""
    prefix = f"test.{uuid.uuid4().hex[:10]}"
    return {
        "request_exchange": f"{prefix}.blocks",
        "request_routing_key": f"{prefix}.blocks",
        "request_queue": f"{prefix}.blocks",
        "dead_letter_exchange": f"{prefix}.dlx",
        "dead_letter_queue": f"{prefix}.dead",
        "results_exchange": f"{prefix}.results",
        "tenant_exchange": f"{prefix}.blocks.tenants",
    }


# The fleet's Redis key of the tests (32 bytes, base64): every fleet in the tests seals its
# values, as production does (a worker with Redis and no key refuses to start).
TEST_REDIS_KEY = "t1:c2Z3b3JrZXItdGVzdHMtcmVkaXMta2V5LTMyYnl0ZXM="


def make_settings(amqp_url: str, names: dict[str, str], accounts_file: Path, **kw: Any) -> Settings:
    if kw.get("redis_url") and not {"redis_encryption_key", "redis_plaintext"} & set(kw):
        kw["redis_encryption_key"] = TEST_REDIS_KEY
    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        "accounts_file": accounts_file,
        "http_port": 0,
        "allow_insecure_localhost": True,
        "watchdog_interval_seconds": 0.5,
        "reconnect_interval_seconds": 0.5,
        "startup_timeout_seconds": 10,
        **names,
        **kw,
    }
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a `sfworker run` process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFWORKER_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"SFWORKER_{name.upper()}"] = str(raw).lower() if isinstance(raw, bool) else str(raw)
    env["SFWORKER_LOG_FORMAT"] = "json"
    return env
