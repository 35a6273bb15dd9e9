"""Values sealed at rest in Redis: AES-256-GCM with the Redis key name as associated data.

Every secret or record the fleet keeps in Redis (access and refresh tokens, stored results,
insert claims) passes through `Seal.seal` on its way in and `Seal.open` on its way out; nothing
else in the code knows about encryption. A sealed value is

    b"\\x00sf1" | len(key id) | key id | nonce (12 bytes) | ciphertext and tag

The key id says which key sealed it, so several keys can be configured for a rotation: the first
seals, any of them opens. The associated data binds a value to its key name: a value copied
under another key (another job's result, another org's token) does not open.

A value that does not open (sealed by a key this worker does not hold, tampered, or plain text
where a sealed value belongs) reads as absent: `open` returns None, the metric
`sfworker_redis_unreadable_total` counts it and one warning per key id is logged. What absent
means is the caller's choice (a token: ask for a new one; a result: run the job; an insert claim:
claimed by someone unknown, so the insert is not sent).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.accounts import ConfigError
from worker.settings import Settings

log = logging.getLogger(__name__)

MAGIC = b"\x00sf1"
_NONCE = 12
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_NONCE_SPACE = 1 << (8 * _NONCE)
PLAIN = "plaintext"  # the "key id" of a value that is not sealed at all

Unreadable = Callable[[str], None]  # called with the key id of each value that did not open


def key_id_of(material: bytes) -> str:
    """The id of a key given without one: a short fingerprint (never the key itself)."""
    return hashlib.sha256(b"sfworker redis key id\x00" + material).hexdigest()[:8]


def parse_keys(text: str, where: str) -> list[tuple[str, bytes]]:
    """`[ID:]KEY` entries separated by commas or newlines, newest first. KEY is 32 bytes in
    base64 (`openssl rand -base64 32`) or 64 hex digits. ConfigError names the entry's position
    in `where`, never its value."""
    entries = [e.strip() for e in re.split(r"[,\n]", text) if e.strip()]
    if not entries:
        raise ConfigError(f"{where}: no key given")
    keys: list[tuple[str, bytes]] = []
    for position, entry in enumerate(entries, 1):
        at = f"{where}: key {position} of {len(entries)}" if len(entries) > 1 else where
        key_id, sep, encoded = entry.rpartition(":")
        material = _decode_key(encoded)
        if material is None:
            raise ConfigError(
                f"{at}: must be 32 random bytes in base64 (openssl rand -base64 32) or 64 hex "
                "digits, optionally after an id and a colon (k2:...)"
            )
        if sep and not _KEY_ID.fullmatch(key_id):
            raise ConfigError(f"{at}: a key id is 1 to 32 letters, digits, '_' or '-'")
        key_id = key_id if sep else key_id_of(material)
        if any(key_id == known for known, _ in keys):
            raise ConfigError(f"{at}: key id {key_id!r} is given twice")
        keys.append((key_id, material))
    return keys


def _decode_key(encoded: str) -> bytes | None:
    if len(encoded) == 64 and all(c in "0123456789abcdefABCDEF" for c in encoded):
        return bytes.fromhex(encoded)
    try:
        raw = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


class Seal:
    """Seals and opens the values of Redis keys; `Seal.plaintext()` stores them as they are."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        self._ciphers = {key_id: AESGCM(material) for key_id, material in keys}
        self._sealing = keys[0][0] if keys else None
        first = keys[0][0].encode() if keys else b""
        self._header = MAGIC + bytes([len(first)]) + first
        # Nonces: a random start, then a counter, so one process never repeats a nonce and two
        # processes collide only if their starts fall within each other's count.
        self._nonce = int.from_bytes(os.urandom(_NONCE), "big")
        self._reported: set[str] = set()
        self.on_unreadable: Unreadable | None = None

    @classmethod
    def plaintext(cls) -> Seal:
        return cls(())

    @property
    def enabled(self) -> bool:
        return self._sealing is not None

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    def seal(self, name: str, value: bytes) -> bytes:
        """The value to write under Redis key `name`."""
        if self._sealing is None:
            return value
        self._nonce = (self._nonce + 1) % _NONCE_SPACE
        nonce = self._nonce.to_bytes(_NONCE, "big")
        cipher = self._ciphers[self._sealing]
        return self._header + nonce + cipher.encrypt(nonce, value, name.encode())

    def seal_text(self, name: str, value: str) -> bytes:
        return self.seal(name, value.encode())

    def open(self, name: str, raw: bytes | str | None) -> bytes | None:
        """The value read from Redis key `name`; None when absent or when it does not open."""
        if raw is None:
            return None
        data = raw if isinstance(raw, bytes) else raw.encode()
        if not data.startswith(MAGIC):
            if self._sealing is None:
                return data
            self._unreadable(PLAIN)
            return None
        key_id, body = _split(data)
        cipher = self._ciphers.get(key_id) if key_id is not None else None
        if key_id is None or cipher is None or len(body) < _NONCE + 16:
            self._unreadable(key_id or "?")
            return None
        try:
            return cipher.decrypt(body[:_NONCE], body[_NONCE:], name.encode())
        except InvalidTag:
            self._unreadable(key_id)
            return None

    def open_text(self, name: str, raw: bytes | str | None) -> str | None:
        value = self.open(name, raw)
        return value.decode(errors="replace") if value is not None else None

    def _unreadable(self, key_id: str) -> None:
        if self.on_unreadable is not None:
            self.on_unreadable(key_id)
        if key_id not in self._reported:
            self._reported.add(key_id)
            log.warning(_explain(key_id, self.key_ids), extra={"key_id": key_id})
        return


def _split(data: bytes) -> tuple[str | None, bytes]:
    size = data[len(MAGIC)] if len(data) > len(MAGIC) else 0
    start = len(MAGIC) + 1
    key_id = data[start : start + size].decode("ascii", errors="replace")
    if not size or not _KEY_ID.fullmatch(key_id):
        return None, b""
    return key_id, data[start + size :]


def _explain(key_id: str, held: list[str]) -> str:
    """One line for the operator: why values in Redis read as absent (never a value)."""
    if not held:
        return (
            f"a value in Redis is sealed (key id {key_id}) but this worker has no "
            "SFWORKER_REDIS_ENCRYPTION_KEY: treated as absent (tokens are asked for again, jobs "
            "run again, inserts already claimed are not resent)"
        )
    if key_id == PLAIN:
        return (
            "a value in Redis is not sealed (written by a worker without "
            "SFWORKER_REDIS_ENCRYPTION_KEY): treated as absent"
        )
    if key_id in held:
        return (
            f"a value in Redis sealed with key id {key_id} fails authentication (tampered, or "
            f"another key under the same id): treated as absent"
        )
    return (
        f"a value in Redis is sealed with key id {key_id}, which this worker does not hold "
        f"(it holds {', '.join(held)}): treated as absent; give every worker the same "
        "SFWORKER_REDIS_ENCRYPTION_KEY list (docs/runbook.md)"
    )


def seal_from_settings(settings: Settings) -> Seal:
    """The seal of a process that uses Redis, or ConfigError: Redis without a key is refused
    unless SFWORKER_REDIS_PLAINTEXT=true says the operator chose it."""
    given = settings.redis_encryption_key, settings.redis_encryption_key_file
    if all(g is not None for g in given):
        raise ConfigError(
            "give only one of SFWORKER_REDIS_ENCRYPTION_KEY and SFWORKER_REDIS_ENCRYPTION_KEY_FILE"
        )
    if settings.redis_encryption_key is not None:
        text = settings.redis_encryption_key.get_secret_value()
        return Seal(parse_keys(text, "SFWORKER_REDIS_ENCRYPTION_KEY"))
    if settings.redis_encryption_key_file is not None:
        return Seal(parse_keys(_read(settings.redis_encryption_key_file), _FILE))
    if settings.redis_plaintext:
        return Seal.plaintext()
    raise ConfigError(
        "SFWORKER_REDIS_URL is set but SFWORKER_REDIS_ENCRYPTION_KEY (or "
        "SFWORKER_REDIS_ENCRYPTION_KEY_FILE) is not: access tokens, refresh tokens and results "
        "would be stored in Redis in plain text. Set a key (openssl rand -base64 32), or "
        "SFWORKER_REDIS_PLAINTEXT=true to choose plain text"
    )


_FILE = "SFWORKER_REDIS_ENCRYPTION_KEY_FILE"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{_FILE}: cannot read {path}: {exc.strerror or 'error'}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{_FILE}: {path} is not text") from None
