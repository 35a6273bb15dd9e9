"""REST routes under /services/data: versions, resources, limits, and route registration."""

from __future__ import annotations

from aiohttp import web

from . import composite, rest_describe, rest_query, rest_sobjects
from .errors import json_response
from .routing import MAX_VERSION, MIN_VERSION, Handler, Route, V, add_route, state_of

SEASONS = ("Winter", "Spring", "Summer")


def release_label(major: int) -> str:
    """62 -> "Winter '25": three releases a year, Winter first."""
    offset = major - 62
    return f"{SEASONS[offset % 3]} '{25 + offset // 3:02d}"


async def versions(request: web.Request) -> web.StreamResponse:
    return json_response(
        [
            {
                "label": release_label(major),
                "url": f"/services/data/v{major}.0",
                "version": f"{major}.0",
            }
            for major in range(MIN_VERSION, MAX_VERSION + 1)
        ]
    )


async def resources(request: web.Request) -> web.StreamResponse:
    base = f"/services/data/{request.match_info['version']}"
    names = ("composite", "limits", "query", "queryAll", "search", "sobjects")
    return json_response({name: f"{base}/{name}" for name in names})


async def limits(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    lim = state.limits

    def entry(maximum: int, remaining: int | None = None) -> dict[str, int]:
        return {"Max": maximum, "Remaining": maximum if remaining is None else remaining}

    return json_response(
        {
            "ConcurrentAsyncGetReportInstances": entry(200),
            "ConcurrentSyncReportRuns": entry(20),
            "DailyApiRequests": entry(lim.daily_max, max(0, lim.daily_max - lim.used)),
            "DailyAsyncApexExecutions": entry(250_000),
            "DailyBulkApiBatches": entry(15_000),
            "DailyBulkV2QueryJobs": entry(10_000),
            "DataStorageMB": entry(1024, 1021),
            "FileStorageMB": entry(1024, 1024),
            "HourlyPublishedPlatformEvents": entry(250_000),
            "SingleEmail": entry(5_000),
        }
    )


def routes() -> list[Route]:
    """Every REST route as (method, path, handler, name); trailing-slash twins included."""
    table: list[Route] = []

    def get(path: str, handler: Handler, name: str, slash: bool = True) -> None:
        table.append(Route("GET", path, handler, name))
        if slash:
            table.append(Route("GET", path + "/", handler, name))

    get("/services/data", versions, "versions")
    get(V, resources, "resources")
    get(f"{V}/limits", limits, "limits")
    get(f"{V}/query", rest_query.query, "query")
    get(f"{V}/query/{{cursor}}", rest_query.query_more, "query_more", slash=False)
    get(f"{V}/queryAll", rest_query.query_all, "query_all")
    get(f"{V}/queryAll/{{cursor}}", rest_query.query_more, "query_more", slash=False)
    get(f"{V}/search", rest_query.search, "search")
    sobject = f"{V}/sobjects/{{sobject}}"
    get(f"{sobject}/describe", rest_describe.describe, "sobject_describe")
    by_ext = f"{sobject}/{{field}}/{{value}}"
    table += [
        Route("POST", sobject, rest_sobjects.create, "sobject_create"),
        Route("POST", sobject + "/", rest_sobjects.create, "sobject_create"),
        Route("GET", f"{sobject}/{{id}}", rest_sobjects.get, "sobject_get"),
        Route("PATCH", f"{sobject}/{{id}}", rest_sobjects.update, "sobject_update"),
        Route("DELETE", f"{sobject}/{{id}}", rest_sobjects.delete, "sobject_delete"),
        Route("GET", by_ext, rest_sobjects.get_by_external_id, "sobject_get_by_external_id"),
        Route("PATCH", by_ext, rest_sobjects.upsert, "sobject_upsert"),
    ]
    return table


def register(app: web.Application) -> None:
    table = routes()
    for route in table:
        add_route(app, route.method, route.path, route.handler, route.name)
    run = composite.handler(table)
    add_route(app, "GET", f"{V}/composite", composite.resources, "composite_resources")
    add_route(app, "GET", f"{V}/composite/", composite.resources, "composite_resources")
    add_route(app, "POST", f"{V}/composite", run, "composite")
    add_route(app, "POST", f"{V}/composite/", run, "composite")
