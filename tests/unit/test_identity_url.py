"""Issue 16.3: where the admin commands may send a token to read the identity URL."""

from __future__ import annotations

import pytest

from worker.accounts import Account, Flow
from worker.commands.accounts.org import identity_url_refusal

ORG = Account(
    "main",
    "https://acme.my.salesforce.com",
    "https://acme.my.salesforce.com/services/oauth2/token",
    Flow.CLIENT_CREDENTIALS,
    "id",
)
SIM = Account(
    "sim",
    "http://127.0.0.1:8900",
    "http://127.0.0.1:8900/services/oauth2/token",
    Flow.JWT_BEARER,
    "x",
)


@pytest.mark.parametrize(
    ("account", "url"),
    [
        (ORG, "https://login.salesforce.com/id/00D/005"),
        (ORG, "https://test.salesforce.com/id/00D/005"),
        (ORG, "https://acme.my.salesforce.com/id/00D/005"),
        (SIM, "http://127.0.0.1:8900/id/00D/005"),
    ],
)
def test_salesforce_and_the_accounts_own_origin_may_receive_the_token(
    account: Account, url: str
) -> None:
    assert identity_url_refusal(account, url) is None


@pytest.mark.parametrize(
    ("account", "url"),
    [
        (ORG, "https://evil.example/id/00D/005"),
        (ORG, "https://login.salesforce.com.evil.example/id/00D/005"),
        (ORG, "http://login.salesforce.com/id/00D/005"),
        (ORG, "https://login.salesforce.com:8443/id/00D/005"),
        (ORG, "https://login.salesforce.com@evil.example/id/00D/005"),
        (ORG, "ftp://login.salesforce.com/id"),
        (SIM, "http://127.0.0.1:8901/id/00D/005"),
        (SIM, "http://localhost.evil.example:8900/id"),
    ],
)
def test_anything_else_is_refused(account: Account, url: str) -> None:
    assert identity_url_refusal(account, url) is not None
