"""Tenant tables in the accounts file and the tenancy rule (worker/tenancy.py), without a broker;
the behaviour through RabbitMQ with real users is in tests/runtime/test_tenancy.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.broker_users import (
    rabbitmqctl_lines,
    tenant_permissions,
    tenant_topic_permission,
    worker_permissions,
)
from worker.accounts import Accounts, ConfigError, load_accounts
from worker.app import Worker
from worker.commands.cli import main
from worker.observability.metrics import Metrics
from worker.settings import Settings
from worker.tenancy import Reason, TenantCheck, WorkerQueues, check, reply_allowed, store_key

ROOT = Path(__file__).resolve().parents[2]


def account(name: str, tenant: str | None, *, default: bool = False) -> str:
    lines = [f"[accounts.{name}]"]
    if tenant is not None:
        lines.append(f'tenant = "{tenant}"')
    if default:
        lines.append("default = true")
    lines += [
        f'instance_url = "https://{name}.my.salesforce.com"',
        'flow = "client_credentials"',
        f'client_id = "3MVG9-{name}"',
        'client_secret = "s3cr3t"',
        "",
    ]
    return "\n".join(lines)


TENANTS = """
[tenants.acme]
amqp_users = ["rt-acme", "rt-acme-ivr"]

[tenants.globex]
amqp_users = ["rt-globex"]
"""

GOOD = (
    account("acme", "acme", default=True)
    + account("acme-sandbox", "acme")
    + account("globex", "globex", default=True)
    + TENANTS
)


def load(tmp_path: Path, text: str) -> Accounts:
    path = tmp_path / "accounts.toml"
    path.write_text(text, encoding="utf-8")
    return load_accounts(path)


def test_tenant_tables_turn_strict_mode_on(tmp_path: Path) -> None:
    accounts = load(tmp_path, GOOD)
    assert accounts.strict
    assert sorted(accounts.tenants) == ["acme", "globex"]
    assert accounts.tenants["acme"].amqp_users == {"rt-acme", "rt-acme-ivr"}
    tenant = accounts.tenant_of_user("rt-acme-ivr")
    assert tenant is not None
    assert tenant.name == "acme"
    assert accounts.tenant_of_user("guest") is None
    assert not load(tmp_path, account("solo", None, default=True)).strict


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            account("acme", "acme") + '[tenants.acme]\namqp_user = ["rt-acme"]\n',
            "tenant 'acme': unknown key 'amqp_user'",
        ),
        (
            account("acme", "acme") + "[tenants.acme]\n",
            "tenant 'acme': missing key 'amqp_users'",
        ),
        (
            account("acme", "acme") + "[tenants.acme]\namqp_users = []\n",
            "tenant 'acme': key 'amqp_users' must be a non-empty list of RabbitMQ user names",
        ),
        (
            account("acme", "acme") + '[tenants.acme]\namqp_users = "rt-acme"\n',
            "tenant 'acme': key 'amqp_users' must be a non-empty list of RabbitMQ user names",
        ),
        (
            account("acme", "acme") + '[tenants.acme]\namqp_users = [" rt-acme"]\n',
            "tenant 'acme': key 'amqp_users': ' rt-acme' is not a RabbitMQ user name",
        ),
        (
            account("acme", "acme")
            + account("globex", "globex")
            + '[tenants.acme]\namqp_users = ["rt-shared"]\n'
            + '[tenants.globex]\namqp_users = ["rt-shared"]\n',
            "tenant 'globex': key 'amqp_users': user 'rt-shared' already publishes for "
            "tenant 'acme'",
        ),
        (
            account("acme", "acme") + account("initech", None) + TENANTS,
            "account 'initech': missing key 'tenant' (every account needs one when the file "
            "has [tenants.NAME] tables)",
        ),
        (
            account("acme", "acme") + account("initech", "initech") + TENANTS,
            "account 'initech': key 'tenant': no [tenants.initech] table",
        ),
        (
            account("acme", "acme") + '[tenant.acme]\namqp_users = ["rt-acme"]\n',
            "accounts file: unknown table or key 'tenant' (the file holds [accounts.NAME] and "
            "[tenants.NAME] tables)",
        ),
        (account("acme", "acme") + "[tenants]\n", "accounts file: [tenants] needs at least one"),
        (
            account("acme", "acme") + '[tenants.acme]\namqp_users = ["a"]\nreply_to = "^x$"\n',
            "tenant 'acme': key 'reply_to' must be a list of regexes of queue names",
        ),
        (
            account("acme", "acme") + '[tenants.acme]\namqp_users = ["a"]\nreply_to = ["(x"]\n',
            "tenant 'acme': key 'reply_to': '(x' is not a regex",
        ),
        (
            account("acme", "a/b") + '[tenants."a/b"]\namqp_users = ["rt-acme"]\n',
            "tenant 'a/b': a tenant name is letters, digits, '.', '_' and '-'",
        ),
    ],
)
def test_a_bad_tenant_table_fails_at_start_naming_where(
    tmp_path: Path, text: str, error: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, text)
    assert error in str(refused.value)


def test_the_rule_in_strict_mode(tmp_path: Path) -> None:
    accounts = load(tmp_path, GOOD)
    assert check(accounts, "rt-acme", None, None) == TenantCheck("acme")
    assert check(accounts, "rt-acme-ivr", "acme-sandbox", "acme") == TenantCheck("acme")
    assert check(accounts, None, "acme", None).refused is Reason.NO_USER_ID
    assert check(accounts, "", None, None).refused is Reason.NO_USER_ID
    assert check(accounts, "guest", "acme", None).refused is Reason.UNKNOWN_USER
    mismatch = check(accounts, "rt-acme", "acme", "globex")
    assert (mismatch.refused, mismatch.tenant) == (Reason.TENANT_MISMATCH, "acme")
    foreign = check(accounts, "rt-acme", "globex", None)
    assert (foreign.refused, foreign.tenant) == (Reason.FOREIGN_ACCOUNT, "acme")
    # An account that does not exist is left to resolve(): UNKNOWN_ACCOUNT, as in open mode.
    assert check(accounts, "rt-acme", "nope", None) == TenantCheck("acme")
    # A job naming no account gets its publisher's tenant's default.
    default = accounts.resolve(None, check(accounts, "rt-globex", None, None).tenant)
    assert default is not None
    assert default.name == "globex"
    assert store_key(accounts, "acme", "j-1") != store_key(accounts, "globex", "j-1")


def test_replies_go_only_where_the_publisher_may_read(tmp_path: Path) -> None:
    with_pattern = GOOD.replace(
        'amqp_users = ["rt-acme", "rt-acme-ivr"]',
        'amqp_users = ["rt-acme", "rt-acme-ivr"]\nreply_to = ["^acme-ivr\\\\..*$"]',
    )
    accounts = load(tmp_path, with_pattern)
    assert accounts.tenants["acme"].reply_to[0].pattern == r"^acme-ivr\..*$"
    allowed = [
        ("rt-acme", "rt-acme.replies"),
        ("rt-acme", "amq.gen-JzTY20BRgKO-HjmUJj0wLg"),
        ("rt-acme", "amq.rabbitmq.reply-to.g1hkABFyYWJiaXRAbG9jYWxob3N0AAAD"),
        ("rt-acme-ivr", "acme-ivr.flows"),  # the tenant's pattern, for each of its users
        ("rt-acme", "acme-ivr.flows"),
        ("rt-globex", "rt-globex.chat.replies"),
        ("rt-acme", None),  # no reply_to: the results exchange
        (None, "amq.gen-abc"),
        # A user of no tenant may name its own queues (its job is answered FORBIDDEN_ACCOUNT).
        ("guest", "guest.replies"),
    ]
    forbidden = [
        ("rt-acme", "rt-globex.replies"),  # another tenant's queue
        ("rt-globex", "acme-ivr.flows"),  # another tenant's pattern
        ("rt-acme", "salesforce.blocks"),  # the request queue
        ("rt-acme", "salesforce.blocks.dead"),
        ("rt-acme", "rt-acme."),  # nothing after the dot
        ("rt-acme", "rt-acme"),
        ("rt-acme", "xacme-ivr.flows"),  # patterns match the whole name
        (None, "rt-acme.replies"),  # without user_id, only server-named queues
    ]
    assert [reply_allowed(accounts, u, q) for u, q in allowed] == [True] * len(allowed)
    assert [reply_allowed(accounts, u, q) for u, q in forbidden] == [False] * len(forbidden)


def test_open_mode_is_the_job_s_own_word(tmp_path: Path) -> None:
    accounts = load(tmp_path, account("acme", "acme", default=True) + account("globex", "globex"))
    assert check(accounts, None, "globex", None) == TenantCheck(None)
    assert check(accounts, "anyone", "globex", "acme") == TenantCheck("acme")
    assert store_key(accounts, None, "j-1") == "j-1"
    # Replies go wherever reply_to points, as before tenant tables existed.
    assert reply_allowed(accounts, "rt-acme", "rt-globex.replies")
    assert reply_allowed(accounts, None, "salesforce.blocks.dead")


def test_refusal_series_exist_before_the_first_refusal() -> None:
    metrics = Metrics()
    metrics.initialise([("acme", "client_credentials")], tenants=["acme", "globex"])
    series = [
        ("no_user_id", ""),
        ("unknown_user", ""),
        *(
            (reason, t)
            for reason in ("tenant_mismatch", "foreign_account", "forbidden_reply_to")
            for t in ("acme", "globex")
        ),
    ]
    for reason, tenant in series:
        labels = {"reason": reason, "tenant": tenant}
        assert metrics.registry.get_sample_value("sfworker_tenant_refusals_total", labels) == 0
    for reason in Reason:
        labels = {"reason": reason.value}
        assert metrics.registry.get_sample_value("sfworker_dead_lettered_total", labels) == 0


def test_the_worker_says_at_start_whether_jobs_are_authenticated_per_tenant(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.app")
    Worker(Settings(http_port=0), load(tmp_path, account("acme", "acme", default=True)))
    two_tenants = account("acme", "acme", default=True) + account("globex", "globex")
    Worker(Settings(http_port=0), load(tmp_path, two_tenants))
    Worker(Settings(http_port=0), load(tmp_path, GOOD))
    said = [
        (r.levelno, r.getMessage().split(" (")[0])
        for r in caplog.records
        if "per tenant" in r.getMessage()
    ]
    assert said == [
        (logging.INFO, "jobs are not authenticated per tenant"),
        (logging.WARNING, "jobs are not authenticated per tenant"),
        (logging.INFO, "jobs are authenticated per tenant by their RabbitMQ user_id"),
    ]


def test_sfworker_accounts_lists_the_tenants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    load(tmp_path, GOOD)
    monkeypatch.setenv("SFWORKER_ACCOUNTS_FILE", str(tmp_path / "accounts.toml"))
    assert main(["accounts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        "tenant acme: amqp_users=rt-acme,rt-acme-ivr",
        "tenant globex: amqp_users=rt-globex",
    ]


def test_the_docs_show_the_recipe_the_tests_run() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    defaults = Settings()
    recipe = [
        *rabbitmqctl_lines(
            "rt-acme",
            tenant_permissions(defaults, "rt-acme"),
            topic=tenant_topic_permission(defaults),
        ),
        *rabbitmqctl_lines("sfworker", worker_permissions(defaults)),
    ]
    missing = [line for line in recipe if line not in readme]
    assert not missing
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    assert "`amqp_users`" in configuration
    assert "[tenants.NAME]" in configuration


def test_no_tenant_name_lets_a_reply_into_the_worker_s_own_queues(tmp_path: Path) -> None:
    """A tenant whose user is named like the topology's prefix (`salesforce`) may name its own
    `salesforce.<anything>` queues, never the request queue, a lane or the dead letters."""
    accounts = load(
        tmp_path,
        account("acme", "acme", default=True)
        + "[tenants.acme]\namqp_users = ['salesforce']\nreply_to = ['salesforce[.].*']\n",
    )
    queues = WorkerQueues.of("salesforce.blocks", "salesforce.blocks.dead")
    for worker_queue in (
        "salesforce.blocks",
        "salesforce.blocks.lane.acme",
        "salesforce.blocks.tenant.acme",
        "salesforce.blocks.dead",
    ):
        assert not reply_allowed(accounts, "salesforce", worker_queue, queues), worker_queue
    assert reply_allowed(accounts, "salesforce", "salesforce.replies", queues)
    assert reply_allowed(accounts, "salesforce", "amq.gen-abc", queues)
