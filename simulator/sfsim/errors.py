"""Salesforce-shaped errors and the JSON responses that carry them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
# What the token endpoint sends with every answer, success or error.
NO_CACHE = {"Cache-Control": "no-cache,must-revalidate,max-age=0,no-store,private"}


class SfError(Exception):
    """A REST error: answered as `[{"message", "errorCode", "fields"?}]` with `status`."""

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        fields: Sequence[str] | None = None,
    ) -> None:
        super().__init__(f"{error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields = list(fields) if fields is not None else None

    def body(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {"message": self.message, "errorCode": self.error_code}
        if self.fields is not None:
            item["fields"] = self.fields
        return [item]


class OAuthError(Exception):
    """A token-endpoint error: answered as `{"error", "error_description"}`."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        headers={"Content-Type": JSON_CONTENT_TYPE, **(headers or {})},
    )


def sf_error_response(err: SfError) -> web.Response:
    return json_response(err.body(), status=err.status)


def oauth_error_response(err: OAuthError) -> web.Response:
    body = {"error": err.error, "error_description": err.description}
    return json_response(body, status=err.status, headers=NO_CACHE)


def not_found() -> SfError:
    return SfError(404, "NOT_FOUND", "The requested resource does not exist")


def invalid_field(column: str, object_name: str) -> SfError:
    return SfError(
        400,
        "INVALID_FIELD",
        f"No such column '{column}' on sobject of type {object_name}",
        [column],
    )


def json_parser_error(message: str) -> SfError:
    return SfError(400, "JSON_PARSER_ERROR", message)
