"""`sfworker submit`: an admin's test run of a block through `worker.client.BlockClient`."""

from __future__ import annotations

from typing import Any

from worker.client import BlockClient
from worker.contract import BlockResult
from worker.observability import tracing
from worker.settings import Settings

__all__ = ["submit_one"]


async def submit_one(
    settings: Settings, job: dict[str, Any], wait: float, *, tenant_queue: bool = False
) -> BlockResult:
    """Publish `job` on the settings' topology (with `tenant_queue`, to the tenant's own queue
    through the tenant exchange) and return its result (TimeoutError after `wait` seconds;
    worker.runtime.reach.Unreachable when RabbitMQ cannot be reached).
    With OTEL_EXPORTER_OTLP_ENDPOINT set, the block is one trace whose root is `sfworker
    submit`; the job carries its context to the worker."""
    tracer = tracing.from_environment(service="sfworker-submit")
    try:
        with tracer.start_root("sfworker submit"):
            async with BlockClient.connect(
                ",".join(settings.amqp_urls()),
                exchange=settings.request_exchange,
                routing_key=settings.request_routing_key,
                publish_timeout=settings.publish_timeout_seconds,
                tenant_queue=tenant_queue,
                tenant_exchange=settings.tenant_exchange,
                login_user=settings.amqp_login_user,
            ) as client:
                return await client.call(job, wait)
    finally:
        await tracer.shutdown()
