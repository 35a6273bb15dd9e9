"""The identity URL of a token response (`id`): GET {host}/id/{orgId}/{userId} with the bearer
token answers who the token belongs to. Not counted as API usage."""

from __future__ import annotations

from aiohttp import web

from .errors import json_response
from .middleware import bearer_token
from .routing import add_route, base_url, state_of


def _display_name(username: str) -> str:
    local = username.split("@", 1)[0]
    return " ".join(part.capitalize() for part in local.replace("_", ".").split(".") if part)


async def identity(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    token = bearer_token(request) or request.query.get("oauth_token")
    session = state.auth.session(token, state.session_timeout_seconds, touch=True)
    if session is None:
        return web.Response(status=403, text="Bad_OAuth_Token")
    org_id = request.match_info["org"]
    user_id = request.match_info["user"]
    username = state.auth.username_of(user_id)
    if org_id != state.org_id or username is None:
        return web.Response(status=404, text="Bad_Id")
    base = base_url(request)
    display = _display_name(username) or username
    first, _, last = display.rpartition(" ")
    rest = f"{base}/services/data/v{{version}}/"
    return json_response(
        {
            "id": f"{base}/id/{org_id}/{user_id}",
            "asserted_user": session.username == username,
            "user_id": user_id,
            "organization_id": org_id,
            "username": username,
            "nick_name": username.split("@", 1)[0],
            "display_name": display,
            "email": username,
            "email_verified": True,
            "first_name": first or None,
            "last_name": last,
            "active": True,
            "user_type": "STANDARD",
            "language": "en_US",
            "locale": "en_US",
            "utcOffset": 0,
            "urls": {
                "rest": rest,
                "sobjects": rest + "sobjects/",
                "search": rest + "search/",
                "query": rest + "query/",
                "profile": f"{base}/{user_id}",
            },
            "is_app_installed": True,
        }
    )


def register(app: web.Application) -> None:
    add_route(app, "GET", "/id/{org}/{user}", identity, "identity")
