"""contracts/asyncapi.yaml: the AsyncAPI 3.0 description of sfworker on RabbitMQ (request exchange
and queue, reply and results, dead letters, message properties, both payloads), built from the
same models as contracts/*.schema.json by `python -m worker.contract.gen`.

The document describes the worker as the application: it receives block jobs and sends results.
"""

from __future__ import annotations

from typing import Any

from worker.contract import CONTRACT_VERSION, Operation, Status
from worker.settings import Settings

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING = "0.3.0"
SCHEMA_REF = "#/components/schemas/{model}"
RESULT_TYPE = "sfworker.result.v1"


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


def asyncapi_schema(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A pydantic JSON schema (made with ref_template=SCHEMA_REF) as AsyncAPI component schemas:
    `$defs` become components, and a discriminator is named by its property (AsyncAPI's
    Schema Object spells it as a string)."""

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: fix(v) for k, v in node.items() if k != "$defs"}
            if isinstance(out.get("discriminator"), dict):
                out["discriminator"] = out["discriminator"]["propertyName"]
            return out
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    components = {name: fix(d) for name, d in schema.get("$defs", {}).items()}
    return {"root": fix(schema), **components}


_JOB_PROPERTIES = {
    "content_type": "application/json",
    "delivery_mode": "2 (persistent)",
    "message_id": "the job_id (RabbitMQ-level idempotency key)",
    "correlation_id": "copied to the result; the job_id unless the caller chooses another",
    "reply_to": (
        "the caller's reply queue; omitted -> the result goes to the results exchange with "
        "routing key <status>.<operation>. With tenant tables (strict mode) it must be a queue "
        "the publisher may read: <user_id>.<anything>, amq.gen-..., amq.rabbitmq.reply-to..., "
        "or a pattern of its tenant's table; any other is dead-lettered (forbidden_reply_to)"
    ),
    "timestamp": "send time (seconds); the job's budget counts from it when sent_at is absent",
    "user_id": (
        "the user the publisher's connection authenticated as: RabbitMQ refuses a message "
        "whose user_id differs, so the worker can trust it"
    ),
}
_RESULT_PROPERTIES = {
    "content_type": "application/json",
    "delivery_mode": "2 (persistent)",
    "correlation_id": "the job's correlation_id (or message_id, else job_id)",
    "message_id": "the job_id",
    "type": RESULT_TYPE,
    "timestamp": "when the result was published",
    "user_id": (
        "the RabbitMQ user the worker connects as (RabbitMQ checks it): a client that knows "
        "that user accepts only results carrying it"
    ),
}


_TRACEPARENT = {
    "type": "string",
    "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
    "examples": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
}
_TRACESTATE = {
    "type": "string",
    "description": "W3C Trace Context vendor data, passed on unchanged",
}


def _trace_headers(traceparent: str) -> dict[str, Any]:
    """Optional AMQP headers: the W3C Trace Context (docs/observability.md)."""
    return {
        "type": "object",
        "properties": {
            "traceparent": {**_TRACEPARENT, "description": traceparent},
            "tracestate": _TRACESTATE,
        },
    }


def _exchange(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": "/"}


def _queue(name: str) -> dict[str, Any]:
    return {"name": name, "durable": True, "exclusive": False, "autoDelete": False, "vhost": "/"}


def _channels() -> dict[str, Any]:
    request_exchange = _default("request_exchange")
    request_queue = _default("request_queue")
    dlx = _default("dead_letter_exchange")
    dlq = _default("dead_letter_queue")
    results = _default("results_exchange")
    job_ref = {"$ref": "#/components/messages/blockJob"}
    result_ref = {"$ref": "#/components/messages/blockResult"}
    return {
        "blockJobs": {
            "address": _default("request_routing_key"),
            "title": "Block jobs (request exchange)",
            "description": (
                f"The runtime publishes each job to the direct exchange `{request_exchange}` "
                f"with routing key `{_default('request_routing_key')}` (publisher confirms, "
                "mandatory)."
            ),
            "messages": {"blockJob": job_ref},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": _exchange(request_exchange, "direct"),
                    "bindingVersion": AMQP_BINDING,
                }
            },
        },
        "blockQueue": {
            "address": request_queue,
            "title": "Block job queue",
            "description": (
                f"Quorum queue bound to `{request_exchange}`, consumed by every worker: "
                f"`x-queue-type: quorum`, `x-delivery-limit: {_default('delivery_limit')}`, "
                f"`x-dead-letter-exchange: {dlx}`."
            ),
            "messages": {"blockJob": job_ref},
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": _queue(request_queue),
                    "bindingVersion": AMQP_BINDING,
                }
            },
        },
        "tenantBlockJobs": {
            "address": f"{_default('request_routing_key')}.{{user}}",
            "title": "Block jobs of one tenant (tenant exchange, strict mode)",
            "description": (
                f"In strict tenant mode a runtime publishes to the topic exchange "
                f"`{_default('tenant_exchange')}` with the routing key "
                f"`{_default('request_routing_key')}.<its RabbitMQ user>`; RabbitMQ's topic "
                "permissions refuse any other key. The jobs wait in their tenant's own queue; a "
                "full one answers the publish with a negative confirm."
            ),
            "parameters": {"user": {"description": "The RabbitMQ user the runtime logs in as"}},
            "messages": {"blockJob": job_ref},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": _exchange(_default("tenant_exchange"), "topic"),
                    "bindingVersion": AMQP_BINDING,
                }
            },
        },
        "tenantBlockQueue": {
            "address": f"{request_queue}.tenant.{{tenant}}",
            "title": "Block job queue of one tenant",
            "description": (
                f"Quorum queue per tenant, bound to `{_default('tenant_exchange')}` under the "
                "routing key of each of the tenant's users, consumed by every worker with its own "
                f"prefetch: as `{request_queue}`, plus `x-max-length: "
                f"{_default('tenant_queue_max_length')}` and `x-overflow: reject-publish`."
            ),
            "parameters": {"tenant": {"description": "The tenant's name in the accounts file"}},
            "messages": {"blockJob": job_ref},
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": _queue(f"{request_queue}.tenant.{{tenant}}"),
                    "bindingVersion": AMQP_BINDING,
                }
            },
        },
        "replies": {
            "address": None,
            "title": "The caller's reply queue",
            "description": (
                "The queue named by the job's `reply_to`, reached through the default exchange: "
                "a private exclusive queue, a named durable one, or `amq.rabbitmq.reply-to`."
            ),
            "messages": {"blockResult": result_ref},
        },
        "results": {
            "address": "{status}.{operation}",
            "title": "Results of jobs without reply_to",
            "description": (
                f"Topic exchange `{results}`; bind a queue with e.g. `failed.#` or `*.insert`."
            ),
            "parameters": {
                "status": {
                    "description": "The block's exit",
                    "enum": [s.value for s in Status],
                },
                "operation": {
                    "description": "The job's operation (`unknown` when it could not be read)",
                    "enum": [*(o.value for o in Operation), "unknown"],
                },
            },
            "messages": {"blockResult": result_ref},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": _exchange(results, "topic"),
                    "bindingVersion": AMQP_BINDING,
                }
            },
        },
        "deadLetters": {
            "address": dlq,
            "title": "Dead-lettered jobs",
            "description": (
                f"Jobs that could not be answered (unreadable, too large, or past the delivery "
                f"limit) go through the fanout exchange `{dlx}` to the quorum queue `{dlq}`, "
                "unchanged, with RabbitMQ's `x-death` header. Kept at most "
                f"`x-message-ttl: {int(_default('dead_letter_max_age') * 1000)}` ms (7 days, "
                "SFWORKER_DEAD_LETTER_MAX_AGE) and `x-max-length: "
                f"{_default('dead_letter_max_length')}` messages, oldest dropped first. "
                "`sfworker dlq` lists them (without spending their delivery count) and requeues "
                "them."
            ),
            "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
            "bindings": {
                "amqp": {"is": "queue", "queue": _queue(dlq), "bindingVersion": AMQP_BINDING}
            },
        },
    }


def _operations() -> dict[str, Any]:
    return {
        "receiveBlockJob": {
            "action": "receive",
            "channel": {"$ref": "#/channels/blockQueue"},
            "title": "Run a block job",
            "summary": "Take a job, call Salesforce within its deadline, answer, then ack.",
            "description": (
                "The result is published and confirmed by RabbitMQ before the job is acked, so "
                "every job taken is answered; a redelivered job is answered from the result "
                "store. Jobs that cannot be answered are dead-lettered."
            ),
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
            "messages": [{"$ref": "#/channels/blockQueue/messages/blockJob"}],
            "reply": {
                "address": {
                    "location": "$message.header#/reply_to",
                    "description": "The job's AMQP reply_to property",
                },
                "channel": {"$ref": "#/channels/replies"},
                "messages": [{"$ref": "#/channels/replies/messages/blockResult"}],
            },
        },
        "receiveTenantBlockJob": {
            "action": "receive",
            "channel": {"$ref": "#/channels/tenantBlockQueue"},
            "title": "Run a block job of a tenant's own queue",
            "summary": "As receiveBlockJob, from the tenant's queue (strict tenant mode).",
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
            "messages": [{"$ref": "#/channels/tenantBlockQueue/messages/blockJob"}],
            "reply": {
                "address": {
                    "location": "$message.header#/reply_to",
                    "description": "The job's AMQP reply_to property",
                },
                "channel": {"$ref": "#/channels/replies"},
                "messages": [{"$ref": "#/channels/replies/messages/blockResult"}],
            },
        },
        "publishResult": {
            "action": "send",
            "channel": {"$ref": "#/channels/results"},
            "title": "Publish the result of a job without reply_to",
            "bindings": {
                "amqp": {
                    "deliveryMode": 2,
                    "mandatory": True,
                    "timestamp": True,
                    "bindingVersion": AMQP_BINDING,
                }
            },
            "messages": [{"$ref": "#/channels/results/messages/blockResult"}],
        },
        "deadLetterJob": {
            "action": "send",
            "channel": {"$ref": "#/channels/deadLetters"},
            "title": "Dead-letter a job that cannot be answered",
            "messages": [{"$ref": "#/channels/deadLetters/messages/deadLetter"}],
        },
    }


def _examples(items: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": name.replace(".", "_"), "payload": body} for name, body in items.items()]


def asyncapi_document(
    job_schema: dict[str, Any],
    result_schema: dict[str, Any],
    job_examples: dict[str, dict[str, Any]],
    result_examples: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document; the schemas must be made with ref_template=SCHEMA_REF."""
    job = asyncapi_schema(job_schema)
    result = asyncapi_schema(result_schema)
    schemas = {
        "BlockJob": {"title": "Block job (contract v1)", **job.pop("root")},
        **job,
        "BlockResult": result.pop("root"),
        **result,
    }
    correlation = {"$ref": "#/components/correlationIds/correlationId"}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "sfworker: Salesforce blocks over RabbitMQ",
            "version": f"{CONTRACT_VERSION}.0.0",
            "description": (
                "Contact-center scenarios publish block jobs (Search by SOQL or SOSL, Get, "
                "Insert, Update, Upsert, Delete); sfworker runs them against the Salesforce "
                "REST API and answers each with a result: status ok, no_data or failed (with an "
                "error code). Generated from worker/contract/models.py by `python -m "
                "worker.contract.gen`; the payloads are also in contracts/*.schema.json. Names "
                "are the defaults of the SFWORKER_* settings (docs/configuration.md)."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "rabbitmq:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The broker shared by the runtime and the workers (vhost /).",
            }
        },
        "channels": _channels(),
        "operations": _operations(),
        "components": {
            "schemas": schemas,
            "correlationIds": {
                "correlationId": {
                    "description": "The AMQP correlation_id property, copied from job to result",
                    "location": "$message.header#/correlation_id",
                }
            },
            "messages": {
                "blockJob": {
                    "name": "blockJob",
                    "title": "Block job (contract v1)",
                    "contentType": "application/json",
                    "correlationId": correlation,
                    "headers": _trace_headers(
                        "optional: the caller's span (W3C Trace Context); the worker's span "
                        "for the job continues that trace (it starts one without it)"
                    ),
                    "payload": {"$ref": "#/components/schemas/BlockJob"},
                    "x-amqp-properties": _JOB_PROPERTIES,
                    "examples": _examples(job_examples),
                },
                "blockResult": {
                    "name": "blockResult",
                    "title": "Block result (contract v1)",
                    "contentType": "application/json",
                    "correlationId": correlation,
                    "headers": _trace_headers(
                        "the worker's span that published the result, in the job's trace; "
                        "with tracing off, the job's own traceparent (and tracestate) returned "
                        "unchanged; absent when the job had none and tracing is off"
                    ),
                    "payload": {"$ref": "#/components/schemas/BlockResult"},
                    "bindings": {
                        "amqp": {"messageType": RESULT_TYPE, "bindingVersion": AMQP_BINDING}
                    },
                    "x-amqp-properties": _RESULT_PROPERTIES,
                    "examples": _examples(result_examples),
                },
                "deadLetter": {
                    "name": "deadLetter",
                    "title": "A dead-lettered job (body and properties as published)",
                    "contentType": "application/json",
                    "headers": {
                        "type": "object",
                        "properties": {
                            "x-death": {
                                "type": "array",
                                "description": "RabbitMQ's record: reason, queue, count, time",
                                "items": {"type": "object"},
                            }
                        },
                    },
                    "payload": {"description": "The job's body as sent (it may not be valid JSON)"},
                },
            },
        },
    }
