"""Broker addresses: the `SFWORKER_AMQP_URL` list, its heartbeat, the user a URL logs in as, and
what a log line may show."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

from yarl import URL


def with_heartbeat(url: str, seconds: int) -> str:
    """`url` with `heartbeat=seconds` in its query string, unless it already names one."""
    parts = urlsplit(url)
    if "heartbeat" in parse_qs(parts.query, keep_blank_values=True):
        return url
    query = f"{parts.query}&heartbeat={seconds}" if parts.query else f"heartbeat={seconds}"
    return urlunsplit(parts._replace(query=query))


def split_amqp_urls(raw: str) -> list[str]:
    """The comma-separated broker URLs of a setting; ValueError (naming the position, never the
    value: it may carry a password) when one is not an amqp:// or amqps:// URL with a host."""
    urls = [part.strip() for part in raw.split(",")]
    for position, url in enumerate(urls, 1):
        parts = urlsplit(url)
        try:
            host_ok = bool(parts.hostname)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            host_ok = False
        if parts.scheme not in {"amqp", "amqps"} or not host_ok:
            where = f"address {position} of {len(urls)}" if len(urls) > 1 else "the address"
            raise ValueError(
                f"{where} must be an amqp:// or amqps:// URL with a host "
                "(several addresses are separated by commas)"
            )
    return urls


def login_user(url: URL | str, configured: str | None = None) -> str | None:
    """The RabbitMQ user a connection to `url` logs in as: `configured`
    (SFWORKER_AMQP_LOGIN_USER, BlockClient's `login_user`) when given, else the URL's, else
    `guest` (aiormq's default); unknown (None) with EXTERNAL authentication and no `configured`:
    the client certificate names the user, and only the broker knows how it maps it."""
    if configured:
        return configured
    parsed = URL(url) if isinstance(url, str) else url
    if parsed.user:
        return parsed.user
    return None if parsed.query.get("auth", "").lower() == "external" else "guest"


# --- accounts ------------------------------------------------------------------------------


def node_of(url: URL | str) -> str:
    """`host:port` of a broker URL: what a log line may show."""
    parsed = URL(url) if isinstance(url, str) else url
    default = 5671 if parsed.scheme == "amqps" else 5672
    return f"{parsed.host or '?'}:{parsed.port or default}"
