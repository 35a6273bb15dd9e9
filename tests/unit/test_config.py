"""The accounts file: good files load, bad ones fail naming the account and the key, and no
secret value ever shows up in an error, a repr or a log line."""

from __future__ import annotations

import json
import logging
import os
import tomllib
from pathlib import Path

import jsonschema
import pytest

from tests.support.accounts import rsa_key_pair
from worker.accounts import ConfigError, Flow, load_accounts
from worker.settings import Settings

SECRET = "s3cr3t-VALUE-never-shown"
PEM, _ = rsa_key_pair()
TOKEN = "5Aep861-REFRESH-never-shown"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path) -> object:
    return load_accounts(path, allow_insecure_localhost=True)


def test_a_good_file_loads_every_flow_and_secret_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    (tmp_path / "key.pem").write_text(PEM)
    monkeypatch.setenv("ACME_REFRESH", TOKEN)
    path = write(
        tmp_path,
        f"""
[accounts.acme]
tenant = "acme"
default = true
instance_url = "https://acme.my.salesforce.com/"
flow = "client_credentials"
client_id = "3MVG9-acme"
client_secret_file = "secret.txt"
max_concurrency = 10

[accounts.globex]
tenant = "globex"
instance_url = "https://globex.my.salesforce.com"
flow = "refresh_token"
client_id = "3MVG9-globex"
client_secret = "{SECRET}"
refresh_token_env = "ACME_REFRESH"
api_version = "64.0"

[accounts.initech]
instance_url = "https://initech.my.salesforce.com"
flow = "jwt_bearer"
client_id = "3MVG9-initech"
username = "integration@initech.example"
private_key_file = "key.pem"
sandbox = true
""",
    )
    accounts = load_accounts(path)
    acme = accounts.by_name["acme"]
    assert acme.flow is Flow.CLIENT_CREDENTIALS
    assert acme.instance_url == "https://acme.my.salesforce.com"
    assert acme.token_url == "https://acme.my.salesforce.com/services/oauth2/token"
    assert acme.client_secret is not None
    assert acme.client_secret.get_secret_value() == SECRET
    assert acme.max_concurrency == 10
    globex = accounts.by_name["globex"]
    assert globex.refresh_token is not None
    assert globex.refresh_token.get_secret_value() == TOKEN
    assert globex.api_base == "https://globex.my.salesforce.com/services/data/v64.0"
    assert accounts.by_name["initech"].audience == "https://test.salesforce.com"
    for account in accounts.by_name.values():
        assert SECRET not in repr(account)
        assert TOKEN not in repr(account)
        assert SECRET not in str(account)
    assert accounts.resolve(None, None) is acme
    assert accounts.resolve(None, "acme") is acme
    assert accounts.resolve("globex", "globex") is globex
    assert accounts.resolve("nope", None) is None
    assert accounts.resolve(None, "globex") is None  # the tenant has no default of its own


BASE = """
[accounts.acme]
instance_url = "https://acme.my.salesforce.com"
client_id = "3MVG9-acme"
"""


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (BASE + f'client_secret = "{SECRET}"\n', "flow"),
        (BASE + f'flow = "password"\nclient_secret = "{SECRET}"\n', "flow"),
        (BASE + 'flow = "client_credentials"\n', "client_secret"),
        (BASE + f'flow = "refresh_token"\nclient_secret = "{SECRET}"\n', "refresh_token"),
        (BASE + 'flow = "jwt_bearer"\nprivate_key = "k"\n', "username"),
        (
            BASE
            + 'flow = "jwt_bearer"\nusername = "u@x"\nprivate_key = "-----BEGIN PRIVATE KEY-----\\n'
            + SECRET
            + '\\n-----END PRIVATE KEY-----"\n',
            "private_key",
        ),
        (
            BASE + 'flow = "client_credentials"\nclient_secret_file = "/nonexistent/secret"\n',
            "client_secret_file",
        ),
        (
            BASE + 'flow = "client_credentials"\nclient_secret_env = "SFW_TEST_UNSET_VAR"\n',
            "client_secret_env",
        ),
        (
            BASE + f'flow = "client_credentials"\nclient_secret = "{SECRET}"\n'
            f'client_secret_env = "X"\n',
            "client_secret",
        ),
        (
            BASE
            + f'flow = "client_credentials"\nclient_secret = "{SECRET}"\nmax_concurrency = 0\n',
            "max_concurrency",
        ),
        (
            BASE + f'flow = "client_credentials"\nclient_secret = "{SECRET}"\nclient_scret = "x"\n',
            "client_scret",
        ),
        (
            BASE
            + f'flow = "client_credentials"\nclient_secret = "{SECRET}"\napi_version = "abc"\n',
            "api_version",
        ),
        (
            '[accounts.acme]\ninstance_url = "http://acme.my.salesforce.com"\n'
            f'flow = "client_credentials"\nclient_id = "x"\nclient_secret = "{SECRET}"\n',
            "instance_url",
        ),
        (
            BASE
            + f'flow = "client_credentials"\nclient_secret = "{SECRET}"\napi_reserve_percent = 0\n',
            "api_reserve_percent",
        ),
        (
            BASE
            + f'flow = "client_credentials"\nclient_secret = "{SECRET}"\n'
            + 'api_reserve_percent = "95"\n',
            "api_reserve_percent",
        ),
        (
            BASE
            + f'flow = "client_credentials"\nclient_secret = "{SECRET}"\n'
            + 'idempotency_fields = { Case = "bad field" }\n',
            "idempotency_fields",
        ),
        (
            BASE
            + f'flow = "client_credentials"\nclient_secret = "{SECRET}"\n'
            + 'idempotency_fields = "Sfworker_Job_Id__c"\n',
            "idempotency_fields",
        ),
    ],
)
def test_a_bad_file_names_the_account_and_the_key_and_no_secret(
    tmp_path: Path, body: str, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    os.environ.pop("SFW_TEST_UNSET_VAR", None)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, body))
    message = str(info.value)
    assert "'acme'" in message
    assert key in message
    assert SECRET not in message
    assert SECRET not in caplog.text
    assert info.value.__cause__ is None  # no chained exception carrying values


def test_an_unreadable_secret_file_is_named_without_its_content(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0)
    try:
        if os.access(secret, os.R_OK):  # root reads anything: use a directory instead
            secret = tmp_path / "a-directory"
            secret.mkdir()
        body = BASE + f'flow = "client_credentials"\nclient_secret_file = "{secret}"\n'
        with pytest.raises(ConfigError) as info:
            load(write(tmp_path, body))
    finally:
        (tmp_path / "secret.txt").chmod(0o600)
    assert "'acme'" in str(info.value)
    assert "client_secret_file" in str(info.value)
    assert SECRET not in str(info.value)


def test_plain_http_only_to_localhost_and_only_when_allowed(tmp_path: Path) -> None:
    body = (
        '[accounts.sim]\ninstance_url = "http://127.0.0.1:8900"\nflow = "client_credentials"\n'
        f'client_id = "x"\nclient_secret = "{SECRET}"\n'
    )
    path = write(tmp_path, body)
    with pytest.raises(ConfigError, match="SFWORKER_ALLOW_INSECURE_LOCALHOST"):
        load_accounts(path)
    assert load_accounts(path, allow_insecure_localhost=True).by_name["sim"].instance_url == (
        "http://127.0.0.1:8900"
    )


def test_two_defaults_for_one_tenant_are_refused(tmp_path: Path) -> None:
    account = (
        '[accounts.{n}]\ninstance_url = "https://{n}.my.salesforce.com"\n'
        f'flow = "client_credentials"\nclient_id = "x"\nclient_secret = "{SECRET}"\n'
        "default = true\n"
    )
    path = write(tmp_path, account.format(n="one") + account.format(n="two"))
    with pytest.raises(ConfigError, match=r"'two'.*default"):
        load(path)


def test_not_toml_and_empty_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, f'[accounts.acme\nclient_secret = "{SECRET}"'))
    with pytest.raises(ConfigError, match=r"\[accounts.NAME\]"):
        load(write(tmp_path, "title = 'x'\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_settings_come_from_sfworker_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFWORKER_AMQP_URL", "amqp://u:pw-secret@broker:5672/")
    monkeypatch.setenv("SFWORKER_PREFETCH", "7")
    monkeypatch.setenv("SFWORKER_REQUEST_QUEUE", "blocks.custom")
    settings = Settings()
    assert settings.prefetch == 7
    assert settings.request_queue == "blocks.custom"
    assert settings.delivery_limit == 5
    assert "pw-secret" not in repr(settings)
    assert settings.amqp_url.get_secret_value().startswith("amqp://u:pw-secret@")


def test_fleet_keys_of_an_account_and_their_defaults(tmp_path: Path) -> None:
    body = BASE + f'flow = "client_credentials"\nclient_secret = "{SECRET}"\n'
    plain = next(iter(load(write(tmp_path, body)).by_name.values()))
    assert (plain.max_concurrency, plain.api_reserve_percent) == (100, 95.0)
    assert dict(plain.idempotency_fields) == {}
    tuned = body + (
        'api_reserve_percent = 90\nidempotency_fields = { Case = "Sfworker_Job_Id__c" }\n'
    )
    account = next(iter(load(write(tmp_path, tuned)).by_name.values()))
    assert account.api_reserve_percent == 90.0
    assert dict(account.idempotency_fields) == {"Case": "Sfworker_Job_Id__c"}


def test_the_published_schema_takes_the_documented_file_and_refuses_what_the_model_refuses(
    tmp_path: Path,
) -> None:
    """contracts/accounts.schema.json (generated from the model) lets an editor or a CI step
    check an accounts file: the example of docs/configuration.md passes, mistakes do not."""
    root = Path(__file__).resolve().parents[2]
    schema = json.loads((root / "contracts" / "accounts.schema.json").read_text())
    doc = (root / "docs" / "configuration.md").read_text()
    example = doc[doc.index("## The accounts file") :].split("```toml\n", 1)[1].split("```")[0]
    jsonschema.validate(tomllib.loads(example), schema)
    good = (
        f'[accounts.acme]\ninstance_url = "https://acme.my.salesforce.com"\n'
        f'flow = "client_credentials"\nclient_id = "x"\nclient_secret = "{SECRET}"\n'
    )
    jsonschema.validate(tomllib.loads(good), schema)
    assert load_accounts(write(tmp_path, good)).by_name["acme"].client_id == "x"
    for bad in (
        good + 'client_scret = "x"\n',  # a typo
        good.replace(f'client_secret = "{SECRET}"', 'client_secret_env = ""'),
        good.replace('"client_credentials"', '"jwt_bearer"'),  # no private key, no username
        good + "max_concurrency = 0\n",
        good + '[tenant.acme]\namqp_users = ["rt-acme"]\n',
        good + '[tenants."a/b"]\namqp_users = ["rt-acme"]\n',
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(tomllib.loads(bad), schema)
        with pytest.raises(ConfigError):
            load(write(tmp_path, bad))
