"""The OAuth token endpoint and friends, as a Salesforce client sees them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from sfsim import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    DEFAULT_USERNAME,
)
from sfsim.testing import SimulatorClient

from tests.simulator.helpers import VERSION, token_request
from tests.support.accounts import rsa_key_pair

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


async def rest_status(http: aiohttp.ClientSession, sim: SimulatorClient, token: str) -> int:
    url = f"{sim.base_url}/services/data/{VERSION}/limits"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status


async def refresh(
    http: aiohttp.ClientSession, sim: SimulatorClient, token: str
) -> tuple[int, dict[str, Any]]:
    return await token_request(
        http,
        sim,
        grant_type="refresh_token",
        refresh_token=token,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )


# ---- client_credentials ------------------------------------------------------------------------
async def test_client_credentials_success_shape(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    before = int(time.time() * 1000)
    status, body = await token_request(
        http,
        sim,
        grant_type="client_credentials",
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )
    assert status == 200
    assert set(body) == {
        "access_token",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
        "signature",
        "scope",
    }
    assert "expires_in" not in body
    assert "refresh_token" not in body
    assert body["token_type"] == "Bearer"
    assert body["instance_url"] == sim.base_url
    assert body["access_token"].startswith("00D")
    assert "!" in body["access_token"]
    assert body["id"].startswith(f"{sim.base_url}/id/00D")
    issued = int(body["issued_at"])
    assert before <= issued <= int(time.time() * 1000)
    expected = hmac.new(
        DEFAULT_CLIENT_SECRET.encode(), (body["id"] + body["issued_at"]).encode(), hashlib.sha256
    ).digest()
    assert base64.b64decode(body["signature"]) == expected
    assert await rest_status(http, sim, body["access_token"]) == 200


async def test_client_credentials_via_basic_auth(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    basic = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()
    url = f"{sim.base_url}/services/oauth2/token"
    headers = {"Authorization": f"Basic {basic}"}
    async with http.post(url, data={"grant_type": "client_credentials"}, headers=headers) as resp:
        assert resp.status == 200
        assert "access_token" in await resp.json()


@pytest.mark.parametrize(
    ("client_id", "secret", "error", "description"),
    [
        ("nope", "x", "invalid_client_id", "client identifier invalid"),
        (DEFAULT_CLIENT_ID, "wrong", "invalid_client", "invalid client credentials"),
    ],
)
async def test_client_credentials_errors(
    sim: SimulatorClient,
    http: aiohttp.ClientSession,
    client_id: str,
    secret: str,
    error: str,
    description: str,
) -> None:
    status, body = await token_request(
        http, sim, grant_type="client_credentials", client_id=client_id, client_secret=secret
    )
    assert (status, body) == (400, {"error": error, "error_description": description})


async def test_client_credentials_without_run_as_user(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    await sim.set_client("app2", "secret2", run_as=False)
    status, body = await token_request(
        http, sim, grant_type="client_credentials", client_id="app2", client_secret="secret2"
    )
    assert status == 400
    assert body == {
        "error": "invalid_grant",
        "error_description": "no client credentials user enabled",
    }


async def test_unsupported_grant(sim: SimulatorClient, http: aiohttp.ClientSession) -> None:
    status, body = await token_request(http, sim, grant_type="password", username="u", password="p")
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    assert body["error_description"] == "grant type not supported"


async def test_login_rate_limit(sim: SimulatorClient, http: aiohttp.ClientSession) -> None:
    await sim.set_login_rate(3)
    form = {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID}
    statuses = [
        (await token_request(http, sim, **form, client_secret=secret))[0]
        for secret in ("wrong", DEFAULT_CLIENT_SECRET, DEFAULT_CLIENT_SECRET)
    ]
    assert statuses == [400, 200, 200]
    status, body = await token_request(http, sim, **form, client_secret=DEFAULT_CLIENT_SECRET)
    assert (status, body) == (
        400,
        {"error": "rate_limit_exceeded", "error_description": "Login Rate Exceeded"},
    )


# ---- refresh_token -----------------------------------------------------------------------------
async def test_refresh_without_rotation(sim: SimulatorClient, http: aiohttp.ClientSession) -> None:
    status, body = await refresh(http, sim, DEFAULT_REFRESH_TOKEN)
    assert status == 200
    assert "refresh_token" not in body
    assert await rest_status(http, sim, body["access_token"]) == 200
    status, _ = await refresh(http, sim, DEFAULT_REFRESH_TOKEN)
    assert status == 200  # still valid without rotation


async def test_refresh_unknown_token(sim: SimulatorClient, http: aiohttp.ClientSession) -> None:
    status, body = await refresh(http, sim, "not-a-token")
    assert (status, body) == (
        400,
        {"error": "invalid_grant", "error_description": "expired access/refresh token"},
    )


async def test_concurrent_refreshes_with_same_token(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    await sim.set_latency(0, token_ms=150)
    results = await asyncio.gather(*(refresh(http, sim, DEFAULT_REFRESH_TOKEN) for _ in range(2)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 400]
    rejected = next(body for status, body in results if status == 400)
    assert rejected == {
        "error": "invalid_grant",
        "error_description": "expired authorization code",
    }
    counters = await sim.counters()
    assert counters["token_requests"] == {"refresh_token": 2}


async def test_rotation_and_replay_revokes_the_chain(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    await sim.set_client(
        DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, rotation=True, refresh_tokens=["rt-1"]
    )
    status, first = await refresh(http, sim, "rt-1")
    assert status == 200
    rt2 = first["refresh_token"]
    assert rt2 != "rt-1"
    assert await sim.refresh_tokens(DEFAULT_CLIENT_ID) == [rt2]
    status, second = await refresh(http, sim, rt2)
    assert status == 200
    rt3, access = second["refresh_token"], second["access_token"]
    assert await rest_status(http, sim, access) == 200

    status, body = await refresh(http, sim, rt2)  # replay of a rotated-out token
    assert (status, body["error"]) == (400, "invalid_grant")
    assert body["error_description"] == "expired access/refresh token"
    assert await sim.refresh_tokens(DEFAULT_CLIENT_ID) == []
    assert (await refresh(http, sim, rt3))[0] == 400
    assert await rest_status(http, sim, access) == 401
    assert await rest_status(http, sim, first["access_token"]) == 401


async def test_set_client_replaces_tokens(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    await sim.set_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, refresh_tokens=["a", "b"])
    assert sorted(await sim.refresh_tokens(DEFAULT_CLIENT_ID)) == ["a", "b"]
    assert (await refresh(http, sim, DEFAULT_REFRESH_TOKEN))[0] == 400


# ---- authorization_code ------------------------------------------------------------------------
async def authorize(
    http: aiohttp.ClientSession, sim: SimulatorClient, **params: str
) -> dict[str, list[str]]:
    query = {"response_type": "code", "client_id": DEFAULT_CLIENT_ID, **params}
    url = f"{sim.base_url}/services/oauth2/authorize"
    async with http.get(url, params=query, allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    assert location.startswith(params["redirect_uri"])
    return parse_qs(urlsplit(location).query)


def code_form(got: dict[str, list[str]], redirect: str) -> dict[str, str]:
    """The token request that exchanges the code `authorize` got, with the default client."""
    return {
        "grant_type": "authorization_code",
        "code": got["code"][0],
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "redirect_uri": redirect,
    }


async def test_authorization_code_with_pkce(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    verifier = "v" * 50
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    )
    redirect = "https://app.example/callback"
    got = await authorize(
        http,
        sim,
        redirect_uri=redirect,
        state="xyz",
        code_challenge=challenge,
        code_challenge_method="S256",
    )
    assert got["state"] == ["xyz"]
    form = code_form(got, redirect)
    status, body = await token_request(http, sim, **form, code_verifier=verifier)
    assert status == 200
    assert body["refresh_token"] in await sim.refresh_tokens(DEFAULT_CLIENT_ID)
    assert await rest_status(http, sim, body["access_token"]) == 200
    status, body = await token_request(http, sim, **form, code_verifier=verifier)
    assert (status, body["error_description"]) == (400, "expired authorization code")


@pytest.mark.parametrize(
    ("scope", "refresh_token"),
    [("api", False), ("api refresh_token", True), ("api offline_access", True)],
)
async def test_authorization_code_refresh_token_only_with_its_scope(
    sim: SimulatorClient, http: aiohttp.ClientSession, scope: str, refresh_token: bool
) -> None:
    redirect = "https://app.example/callback"
    got = await authorize(http, sim, redirect_uri=redirect, scope=scope)
    status, body = await token_request(http, sim, **code_form(got, redirect))
    assert status == 200
    assert body["scope"] == scope
    assert ("refresh_token" in body) is refresh_token
    assert await rest_status(http, sim, body["access_token"]) == 200


@pytest.mark.parametrize(
    ("change", "description"),
    [
        ({"code_verifier": "wrong" * 10}, "invalid code verifier"),
        ({"code_verifier": ""}, "invalid code verifier"),
        ({"redirect_uri": "https://evil.example/cb"}, "redirect_uri must match configuration"),
    ],
)
async def test_authorization_code_rejections(
    sim: SimulatorClient, http: aiohttp.ClientSession, change: dict[str, str], description: str
) -> None:
    redirect = "https://app.example/callback"
    got = await authorize(
        http,
        sim,
        redirect_uri=redirect,
        code_challenge="plain-secret-value",
        code_challenge_method="plain",
    )
    form = {**code_form(got, redirect), "code_verifier": "plain-secret-value", **change}
    status, body = await token_request(http, sim, **form)
    assert (status, body) == (400, {"error": "invalid_grant", "error_description": description})


# ---- jwt-bearer --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    return rsa_key_pair()


def assertion(private: str, **overrides: Any) -> str:
    claims = {
        "iss": DEFAULT_CLIENT_ID,
        "sub": DEFAULT_USERNAME,
        "aud": "https://login.salesforce.com",
        "exp": int(time.time()) + 180,
        **overrides,
    }
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None}, private, algorithm="RS256"
    )


async def test_jwt_bearer_with_verified_signature(
    sim: SimulatorClient, http: aiohttp.ClientSession, rsa_keys: tuple[str, str]
) -> None:
    private, public = rsa_keys
    await sim.set_client(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        usernames=[DEFAULT_USERNAME],
        jwt_public_key_pem=public,
    )
    status, body = await token_request(
        http, sim, grant_type=JWT_GRANT, assertion=assertion(private)
    )
    assert status == 200, body
    assert "refresh_token" not in body
    assert await rest_status(http, sim, body["access_token"]) == 200
    status, body = await token_request(
        http, sim, grant_type=JWT_GRANT, assertion=assertion(private, aud=sim.base_url)
    )
    assert status == 200


async def test_jwt_bearer_rejections(
    sim: SimulatorClient, http: aiohttp.ClientSession, rsa_keys: tuple[str, str]
) -> None:
    private, public = rsa_keys
    other, _ = rsa_key_pair()
    await sim.set_client(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        usernames=[DEFAULT_USERNAME],
        jwt_public_key_pem=public,
    )
    now = int(time.time())
    cases = [
        (assertion(other), "invalid_grant", "invalid assertion"),
        ("not.a.jwt", "invalid_grant", "invalid assertion"),
        (assertion(private, iss="unknown"), "invalid_client_id", "client identifier invalid"),
        (
            assertion(private, sub="someone@else"),
            "invalid_grant",
            "user hasn't approved this consumer",
        ),
        (assertion(private, aud="https://example.com"), "invalid_grant", "audience is invalid"),
        (assertion(private, exp=now - 10), "invalid_grant", "expired authorization code"),
        (assertion(private, exp=None), "invalid_grant", "expired authorization code"),
    ]
    for value, error, description in cases:
        status, body = await token_request(http, sim, grant_type=JWT_GRANT, assertion=value)
        assert (status, body) == (400, {"error": error, "error_description": description}), value
    status, body = await token_request(
        http, sim, grant_type=JWT_GRANT, assertion=assertion(private, exp=now + 3600)
    )
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_jwt_without_registered_key_checks_claims_only(
    sim: SimulatorClient, http: aiohttp.ClientSession, rsa_keys: tuple[str, str]
) -> None:
    private, _ = rsa_keys
    status, _ = await token_request(http, sim, grant_type=JWT_GRANT, assertion=assertion(private))
    assert status == 200
    status, body = await token_request(
        http, sim, grant_type=JWT_GRANT, assertion=assertion(private, aud="https://x.example")
    )
    assert (status, body["error_description"]) == (400, "audience is invalid")


# ---- introspect / revoke / sessions ------------------------------------------------------------
async def test_introspect_and_revoke(sim: SimulatorClient, http: aiohttp.ClientSession) -> None:
    _, body = await refresh(http, sim, DEFAULT_REFRESH_TOKEN)
    token = body["access_token"]
    creds = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    url = sim.base_url + "/services/oauth2"
    async with http.post(
        f"{url}/introspect", data={"token": token, "token_type_hint": "access_token", **creds}
    ) as resp:
        info = await resp.json()
    assert info["active"] is True
    assert info["client_id"] == DEFAULT_CLIENT_ID
    assert info["username"] == DEFAULT_USERNAME
    assert info["token_type"] == "access_token"
    assert 7100 < info["exp"] - time.time() <= 7200
    async with http.post(f"{url}/revoke", data={"token": token}) as resp:
        assert resp.status == 200
    assert await rest_status(http, sim, token) == 401
    async with http.post(f"{url}/introspect", data={"token": token, **creds}) as resp:
        assert await resp.json() == {"active": False}
    async with http.post(f"{url}/revoke", data={"token": "bogus"}) as resp:
        assert resp.status == 400


async def test_revoking_refresh_token_kills_its_access_tokens(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    _, body = await refresh(http, sim, DEFAULT_REFRESH_TOKEN)
    async with http.post(
        f"{sim.base_url}/services/oauth2/revoke", data={"token": DEFAULT_REFRESH_TOKEN}
    ) as resp:
        assert resp.status == 200
    assert await rest_status(http, sim, body["access_token"]) == 401
    assert (await refresh(http, sim, DEFAULT_REFRESH_TOKEN))[0] == 400


async def test_expire_sessions_keeps_refresh_tokens(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    _, body = await refresh(http, sim, DEFAULT_REFRESH_TOKEN)
    await sim.expire_sessions()
    url = f"{sim.base_url}/services/data/{VERSION}/limits"
    async with http.get(url, headers={"Authorization": f"Bearer {body['access_token']}"}) as resp:
        assert resp.status == 401
        assert await resp.json() == [
            {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
        ]
    status, again = await refresh(http, sim, DEFAULT_REFRESH_TOKEN)
    assert status == 200
    assert await rest_status(http, sim, again["access_token"]) == 200


async def test_session_inactivity_timeout(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    await sim.set_session_timeout(60)
    _, busy = await refresh(http, sim, DEFAULT_REFRESH_TOKEN)
    _, idle = await refresh(http, sim, DEFAULT_REFRESH_TOKEN)
    for _ in range(4):  # each use extends the session: 160 s in all, never 60 s idle
        await sim.advance_clock(40)
        assert await rest_status(http, sim, busy["access_token"]) == 200
    assert await rest_status(http, sim, idle["access_token"]) == 401


async def test_sixth_approval_revokes_the_oldest(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    await sim.set_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
    redirect = "https://app.example/cb"
    issued = []
    for _ in range(6):
        got = await authorize(http, sim, redirect_uri=redirect)
        status, body = await token_request(http, sim, **code_form(got, redirect))
        assert status == 200
        issued.append(body["refresh_token"])
    assert sorted(await sim.refresh_tokens(DEFAULT_CLIENT_ID)) == sorted(issued[1:])
    assert (await refresh(http, sim, issued[0]))[0] == 400


async def test_client_credentials_refused_on_login_domain(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    url = f"{sim.base_url}/services/oauth2/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
    }
    async with http.post(url, data=form, headers={"Host": "login.salesforce.com"}) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "error": "invalid_grant",
            "error_description": "request not supported on this domain",
        }


async def test_invalid_session_headers(sim: SimulatorClient, http: aiohttp.ClientSession) -> None:
    url = f"{sim.base_url}/services/data/{VERSION}/query"
    async with http.get(url, params={"q": "SELECT Id FROM Account"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Token"
        assert resp.headers["Sforce-Limit-Info"] == "api-usage=0/100000"
