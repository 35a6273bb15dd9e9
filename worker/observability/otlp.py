"""OTLP/protobuf encoding of the worker's spans (spans.py), by hand.

The bytes are those the SDK's exporter (opentelemetry-exporter-otlp-proto-common's
`encode_spans`) would write for the same span: the same fields, the `flags` of the span and of
each link (whether the parent is remote), an empty status when unset. A span is encoded once,
when it ends; an export request is the resource and scope (encoded once) around the spans'
bytes. The message definitions: opentelemetry-proto `trace/v1/trace.proto`,
`common/v1/common.proto`, `resource/v1/resource.proto`, `collector/trace/v1/trace_service.proto`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

from worker.observability.spans import AttributeValue, Span, SpanRef

_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack

# Span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, with SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK.
_FLAGS_LOCAL = b"\x85\x01" + _pack_fixed32(0x100)  # field 16, fixed32
_FLAGS_REMOTE = b"\x85\x01" + _pack_fixed32(0x300)
_LINK_FLAGS_LOCAL = b"\x35" + _pack_fixed32(0x100)  # Link.flags: field 6, fixed32
_LINK_FLAGS_REMOTE = b"\x35" + _pack_fixed32(0x300)
_STATUS_UNSET = b"\x7a\x00"  # field 15, an empty Status (the SDK always writes one)
_STATUS_ERROR_CODE = b"\x18\x02"  # Status.code = STATUS_CODE_ERROR


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as two's complement
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


_keys: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    """KeyValue.key (field 1), cached: the same few dozen keys come back on every span."""
    encoded = _keys.get(key)
    if encoded is None:
        encoded = _len(b"\x0a", key.encode())
        if len(_keys) < 1024:
            _keys[key] = encoded
    return encoded


def any_value(value: AttributeValue | Sequence[AttributeValue]) -> bytes:
    """An AnyValue (the same oneof choice as the SDK's `_encode_value`)."""
    if isinstance(value, list | tuple):  # a resource attribute may be an array
        return _len(b"\x2a", b"".join(_len(b"\x0a", any_value(v)) for v in value))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _len(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + varint(value)
    return b"\x21" + _pack_double(value)


# A KeyValue's bytes (with their length) by (key, type, value), for the attributes whose values
# repeat from job to job (a queue, an account, a status, a route): most of a span's encoding.
# Values unique to a span are never kept; the cache stops growing at _MAX_CACHED.
_kvs: dict[tuple[str, type, object], bytes] = {}
_MAX_CACHED = 4096
_UNIQUE = frozenset(
    {
        "sfworker.job.id",
        "messaging.message.id",
        "sfworker.composite.trace_id",
        "sfworker.composite.span_id",
    }
)


def key_values(
    tag: bytes, attributes: Mapping[str, AttributeValue | Sequence[AttributeValue]]
) -> bytes:
    """Each attribute as a KeyValue in field `tag`."""
    parts = []
    for key, value in attributes.items():
        if isinstance(value, list | tuple):  # never cached (a resource's, encoded once)
            parts.append(_len(tag, _key(key) + _len(b"\x12", any_value(value))))
            continue
        cache_key = (key, value.__class__, value)
        encoded = _kvs.get(cache_key)
        if encoded is None:
            kv = _key(key) + _len(b"\x12", any_value(value))
            encoded = varint(len(kv)) + kv
            if key not in _UNIQUE and not isinstance(value, float) and len(_kvs) < _MAX_CACHED:
                _kvs[cache_key] = encoded
        parts.append(tag + encoded)
    return b"".join(parts)


def _ids(ref: SpanRef) -> bytes:
    return (
        b"\x0a\x10"
        + ref.trace_id.to_bytes(16, "big")
        + b"\x12\x08"
        + ref.span_id.to_bytes(8, "big")
    )


def _link(ref: SpanRef, attributes: Mapping[str, AttributeValue]) -> bytes:
    body = _ids(ref)
    if ref.trace_state:
        body += _len(b"\x1a", ref.trace_state.encode())
    body += key_values(b"\x22", attributes)
    body += _LINK_FLAGS_REMOTE if ref.remote else _LINK_FLAGS_LOCAL
    return _len(b"\x6a", body)


def encode_span(span: Span) -> bytes:
    """One ended span as a `Span` message (without its field tag in ScopeSpans)."""
    ref, parent = span.ref, span.parent
    parts = [_ids(ref)]
    if ref.trace_state:
        parts.append(_len(b"\x1a", ref.trace_state.encode()))
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    parts.append(_len(b"\x2a", span.name.encode()))
    parts.append(b"\x30" + varint(span.kind))
    parts.append(b"\x39" + _pack_fixed64(span.start_ns))
    parts.append(b"\x41" + _pack_fixed64(span.end_ns))
    parts.append(key_values(b"\x4a", span.attributes))
    for name, at, attributes in span.events:
        event = b"\x09" + _pack_fixed64(at) + _len(b"\x12", name.encode())
        parts.append(_len(b"\x5a", event + key_values(b"\x1a", attributes)))
    for link_ref, link_attributes in span.links:
        parts.append(_link(link_ref, link_attributes))
    if span.error is None:
        parts.append(_STATUS_UNSET)
    else:
        parts.append(_len(b"\x7a", _len(b"\x12", span.error.encode()) + _STATUS_ERROR_CODE))
    parts.append(_FLAGS_REMOTE if parent is not None and parent.remote else _FLAGS_LOCAL)
    return b"".join(parts)


def envelope(
    resource: Mapping[str, AttributeValue | Sequence[AttributeValue]],
    scope_name: str,
    scope_version: str,
) -> tuple[bytes, bytes]:
    """The constant parts of an export request: the ResourceSpans' resource and the
    ScopeSpans' scope, each with its field tag."""
    encoded_resource = _len(b"\x0a", key_values(b"\x0a", resource))
    scope = _len(b"\x0a", scope_name.encode()) + _len(b"\x12", scope_version.encode())
    return encoded_resource, _len(b"\x0a", scope)


def request(resource: bytes, scope: bytes, spans: Sequence[bytes] | Iterable[bytes]) -> bytes:
    """An ExportTraceServiceRequest: one resource, one scope, these encoded spans."""
    scope_spans = scope + b"".join(_len(b"\x12", span) for span in spans)
    resource_spans = resource + _len(b"\x12", scope_spans)
    return _len(b"\x0a", resource_spans)
