"""The Redis value seal (worker/stores/sealing.py): what it writes, what it opens, what it
refuses, and the start-up rule (Redis without a key is refused unless plain text is chosen)."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import pytest

from worker.accounts import ConfigError
from worker.settings import Settings
from worker.stores.sealing import Seal, key_id_of, parse_keys, seal_from_settings

OLD = base64.b64encode(b"o" * 32).decode()
NEW = base64.b64encode(b"n" * 32).decode()
TOKEN_KEY = "sfworker:token:acme:0123456789abcdef"
SECRET = b"00D000000000001!AQ0AQ-access-token-value"


def seal_of(text: str) -> Seal:
    return Seal(parse_keys(text, "SFWORKER_REDIS_ENCRYPTION_KEY"))


def test_a_sealed_value_holds_no_plain_text_and_opens_under_its_key_name() -> None:
    seal = seal_of(NEW)
    sealed = seal.seal(TOKEN_KEY, SECRET)
    assert SECRET not in sealed
    assert b"access-token" not in sealed
    assert seal.open(TOKEN_KEY, sealed) == SECRET
    assert seal.seal(TOKEN_KEY, SECRET) != sealed  # a fresh nonce each time


def test_rotation_new_writes_use_the_first_key_reads_accept_any() -> None:
    before = seal_of(f"k1:{OLD}")
    during = seal_of(f"k2:{NEW},k1:{OLD}")
    after = seal_of(f"k2:{NEW}")
    written_before = before.seal(TOKEN_KEY, SECRET)
    written_during = during.seal(TOKEN_KEY, SECRET)
    assert during.open(TOKEN_KEY, written_before) == SECRET
    assert before.open(TOKEN_KEY, written_during) is None  # sealed with k2, which it lacks
    assert after.open(TOKEN_KEY, written_during) == SECRET
    assert after.open(TOKEN_KEY, written_before) is None


def test_keys_without_ids_rotate_by_fingerprint() -> None:
    during = seal_of(f"{NEW}\n{OLD}")
    assert during.key_ids == [key_id_of(b"n" * 32), key_id_of(b"o" * 32)]
    assert during.open(TOKEN_KEY, seal_of(OLD).seal(TOKEN_KEY, SECRET)) == SECRET


def test_a_tampered_value_reads_as_absent_and_is_counted() -> None:
    seen: list[str] = []
    seal = seal_of(f"k1:{NEW}")
    seal.on_unreadable = seen.append
    sealed = bytearray(seal.seal(TOKEN_KEY, SECRET))
    sealed[-20] ^= 0x01
    assert seal.open(TOKEN_KEY, bytes(sealed)) is None
    assert seal.open(TOKEN_KEY, seal.seal(TOKEN_KEY, SECRET)[:-1]) is None  # truncated
    assert seen == ["k1", "k1"]


def test_a_value_copied_under_another_key_does_not_open() -> None:
    seal = seal_of(NEW)
    sealed = seal.seal("sfworker:result:aaaa/job-1", b'{"records": ["Ada"]}')
    assert seal.open("sfworker:result:aaaa/job-2", sealed) is None


def test_a_wrong_key_under_the_same_id_reads_as_absent() -> None:
    sealed = seal_of(f"k1:{OLD}").seal(TOKEN_KEY, SECRET)
    assert seal_of(f"k1:{NEW}").open(TOKEN_KEY, sealed) is None


def test_an_unreadable_value_is_logged_once_per_key_id_never_its_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seal = seal_of(f"k3:{NEW}")
    foreign = seal_of(f"k1:{OLD}")
    with caplog.at_level(logging.WARNING, logger="worker.stores.sealing"):
        for _ in range(5):
            assert seal.open(TOKEN_KEY, foreign.seal(TOKEN_KEY, SECRET)) is None
        assert seal.open(TOKEN_KEY, SECRET) is None  # plain text where a sealed value belongs
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "key id k1" in lines[0]
    assert "k3" in lines[0]
    assert "not sealed" in lines[1]
    assert not any("access-token" in line for line in lines)


def test_plain_text_by_choice_stores_values_as_they_are_and_never_returns_sealed_bytes() -> None:
    plain = Seal.plaintext()
    assert plain.seal(TOKEN_KEY, SECRET) == SECRET
    assert plain.open(TOKEN_KEY, SECRET) == SECRET
    assert plain.open(TOKEN_KEY, seal_of(NEW).seal(TOKEN_KEY, SECRET)) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-base64!",
        base64.b64encode(b"short").decode(),
        f"bad id!:{NEW}",
        f"k1:{NEW},k1:{OLD}",
    ],
)
def test_a_bad_key_fails_at_start_naming_the_setting_never_the_value(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_keys(text, "SFWORKER_REDIS_ENCRYPTION_KEY")
    assert "SFWORKER_REDIS_ENCRYPTION_KEY" in str(caught.value)
    assert NEW not in str(caught.value)
    assert OLD not in str(caught.value)


def test_a_hex_key_is_accepted() -> None:
    material = os.urandom(32)
    assert seal_of(material.hex()).key_ids == [key_id_of(material)]


def test_redis_without_a_key_refuses_to_start_unless_plain_text_is_chosen(tmp_path: Path) -> None:
    redis = {"redis_url": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError) as caught:
        seal_from_settings(Settings(**redis))
    assert "SFWORKER_REDIS_ENCRYPTION_KEY" in str(caught.value)
    assert "SFWORKER_REDIS_PLAINTEXT=true" in str(caught.value)
    assert not seal_from_settings(Settings(**redis, redis_plaintext=True)).enabled
    assert seal_from_settings(Settings(**redis, redis_encryption_key=NEW)).enabled
    key_file = tmp_path / "redis-key"
    key_file.write_text(f"k2:{NEW}\nk1:{OLD}\n")
    from_file = seal_from_settings(Settings(**redis, redis_encryption_key_file=key_file))
    assert from_file.key_ids == ["k2", "k1"]
    with pytest.raises(ConfigError, match="only one"):
        seal_from_settings(
            Settings(**redis, redis_encryption_key=NEW, redis_encryption_key_file=key_file)
        )
    with pytest.raises(ConfigError, match="cannot read"):
        seal_from_settings(Settings(**redis, redis_encryption_key_file=tmp_path / "missing"))


def test_a_worker_with_redis_and_no_key_does_not_start(tmp_path: Path) -> None:
    from worker.accounts import load_accounts
    from worker.app import Worker

    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        '[accounts.main]\ninstance_url = "https://acme.my.salesforce.com"\n'
        'flow = "client_credentials"\nclient_id = "id"\nclient_secret = "s"\n'
    )
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", http_port=0)
    with pytest.raises(ConfigError, match="SFWORKER_REDIS_ENCRYPTION_KEY"):
        Worker(settings, load_accounts(accounts))
