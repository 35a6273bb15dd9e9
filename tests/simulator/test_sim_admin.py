"""What `sfworker accounts check` and `authorize` rely on: the identity URL, describe with the
user's object permissions (and their enforcement), and the authorize page with PKCE."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import aiohttp
from sfsim import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_USERNAME
from sfsim.testing import SimulatorClient

from tests.simulator.helpers import Api, token_request

CALLBACK = "http://localhost:1717/callback"
VERIFIER = "pkce-verifier-" + "x" * 40
CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).decode().rstrip("=")
)


async def test_the_identity_url_names_the_user_and_org(api: Api) -> None:
    status, body = await token_request(
        api.http,
        api.sim,
        grant_type="client_credentials",
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )
    assert status == 200
    before = (await api.sim.counters())["api_usage"]["used"]
    me = await api.get(body["id"], token=body["access_token"])
    assert me.status == 200
    org_id, user_id = body["id"].rsplit("/", 2)[-2:]
    assert me.body["username"] == DEFAULT_USERNAME
    assert (me.body["user_id"], me.body["organization_id"]) == (user_id, org_id)
    assert user_id.startswith("005")
    assert org_id.startswith("00D")
    assert (await api.sim.counters())["api_usage"]["used"] == before  # not an API call

    async with api.http.get(body["id"], headers={"Authorization": "Bearer nope"}) as resp:
        assert (resp.status, await resp.text()) == (403, "Bad_OAuth_Token")


async def test_describe_follows_the_users_permissions(api: Api) -> None:
    full = await api.get("sobjects/Case/describe")
    assert full.status == 200
    flags = ("queryable", "createable", "updateable", "deletable")
    assert [full.body[f] for f in flags] == [True, True, True, True]
    assert full.body["keyPrefix"] == "500"
    subject = next(f for f in full.body["fields"] if f["name"] == "Subject")
    assert (subject["createable"], subject["updateable"]) == (True, True)

    await api.sim.set_user(DEFAULT_USERNAME, "Read Only")
    read_only = await api.get("sobjects/Case/describe")
    assert [read_only.body[f] for f in flags] == [True, False, False, False]

    await api.sim.set_user(DEFAULT_USERNAME, objects={"Case": {"delete": False}})
    no_delete = await api.get("sobjects/Case/describe")
    assert [no_delete.body[f] for f in flags] == [True, True, True, False]
    assert (await api.get("sobjects/Contact/describe")).body["deletable"] is True

    assert (await api.get("sobjects/Nope__c/describe")).status == 404


async def test_permissions_are_enforced_like_object_level_security(api: Api) -> None:
    [case_id] = await api.sim.seed("Case", [{"Subject": "Late"}])
    await api.sim.set_user(DEFAULT_USERNAME, "Read Only", objects={"Lead": {"read": False}})
    assert (await api.get(f"sobjects/Case/{case_id}")).status == 200
    assert (await api.query("SELECT Id FROM Case")).body["totalSize"] == 1
    for reply in (
        await api.post("sobjects/Case", json={"Subject": "New"}),
        await api.patch(f"sobjects/Case/{case_id}", json={"Priority": "High"}),
        await api.delete(f"sobjects/Case/{case_id}"),
    ):
        assert (reply.status, reply.error_code) == (400, "INSUFFICIENT_ACCESS_OR_READONLY")
    hidden = await api.query("SELECT Id FROM Lead")
    assert (hidden.status, hidden.error_code) == (400, "INVALID_TYPE")
    assert (await api.get("sobjects/Lead/describe")).status == 404


async def authorize(http: aiohttp.ClientSession, sim: SimulatorClient, **params: str) -> str:
    query = {
        "response_type": "code",
        "client_id": DEFAULT_CLIENT_ID,
        "redirect_uri": CALLBACK,
        "state": "st-1",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "scope": "api refresh_token",
        **params,
    }
    url = f"{sim.base_url}/services/oauth2/authorize"
    async with http.get(url, params=query, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        return resp.headers["Location"]


def exchange(code: str, **change: str) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "redirect_uri": CALLBACK,
        "code_verifier": VERIFIER,
        **change,
    }


async def test_the_web_server_flow_with_pkce_and_its_errors(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    await sim.set_client(
        DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, callback_urls=[CALLBACK], require_pkce=True
    )
    location = await authorize(http, sim)
    assert location.startswith(CALLBACK + "?")
    got = parse_qs(urlsplit(location).query)
    assert got["state"] == ["st-1"]
    code = got["code"][0]
    status, body = await token_request(http, sim, **exchange(code))
    assert status == 200, body
    assert body["refresh_token"]
    assert (await sim.counters())["pkce_verified"] == 1
    reused = await token_request(http, sim, **exchange(code))
    assert reused == (
        400,
        {"error": "invalid_grant", "error_description": "expired authorization code"},
    )

    for change, error in (
        ({"code_verifier": "y" * 50}, "invalid code verifier"),
        (
            {"redirect_uri": "http://localhost:9999/callback"},
            "redirect_uri must match configuration",
        ),
    ):
        fresh = parse_qs(urlsplit(await authorize(http, sim)).query)["code"][0]
        refused = await token_request(http, sim, **exchange(fresh, **change))
        assert refused == (400, {"error": "invalid_grant", "error_description": error})
    assert (await sim.counters())["pkce_verified"] == 1

    fresh = parse_qs(urlsplit(await authorize(http, sim)).query)["code"][0]
    unknown = await token_request(http, sim, **exchange(fresh, client_id="someone-else"))
    assert unknown[0] == 400
    assert unknown[1]["error"] == "invalid_client_id"

    no_pkce = await authorize(http, sim, code_challenge="")
    assert parse_qs(urlsplit(no_pkce).query)["error"] == ["invalid_request"]


async def test_the_authorize_page_refuses_a_foreign_callback_and_can_be_denied(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    await sim.set_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, callback_urls=[CALLBACK])
    query = {
        "response_type": "code",
        "client_id": DEFAULT_CLIENT_ID,
        "redirect_uri": "http://localhost:1718/callback",
    }
    url = f"{sim.base_url}/services/oauth2/authorize"
    async with http.get(url, params=query, allow_redirects=False) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "redirect_uri_mismatch"
        assert "Location" not in resp.headers

    await sim.set_consent(approve=False)
    denied = parse_qs(urlsplit(await authorize(http, sim)).query)
    assert denied["error"] == ["access_denied"]
    assert denied["state"] == ["st-1"]
    assert "code" not in denied

    await sim.set_consent(approve=True, username="admin@acme.example")
    code = parse_qs(urlsplit(await authorize(http, sim)).query)["code"][0]
    status, body = await token_request(http, sim, **exchange(code))
    assert status == 200
    async with http.get(
        body["id"], headers={"Authorization": f"Bearer {body['access_token']}"}
    ) as resp:
        assert (await resp.json())["username"] == "admin@acme.example"
