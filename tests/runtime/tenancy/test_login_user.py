"""Issue 27, point 5: with EXTERNAL (certificate) authentication the URL names no user, so the
worker is told its own (SFWORKER_AMQP_LOGIN_USER): it stamps it on what it publishes, the lanes
trust the copies it moved, and a wrong name stops the worker at start instead of every moved job
being refused later. tests/runtime/tenancy/test_external_auth.py runs it all on a real broker
with client certificates."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from yarl import URL

from tests.support.tenants import Users
from worker.accounts import ConfigError
from worker.app import Worker
from worker.runtime.amqp_urls import login_user
from worker.settings import Settings


def test_the_configured_user_is_the_worker_s_own_whatever_the_url_says() -> None:
    external = URL("amqps://rabbit:5671/?auth=external")
    assert login_user(external) is None  # the certificate names it: unknown from the URL
    assert login_user(external, "sfworker") == "sfworker"
    assert login_user(URL("amqp://sfworker:pw@rabbit/")) == "sfworker"


def test_a_certificate_url_without_login_user_does_not_make_a_strict_worker_with_lanes(
    settings: Settings,
) -> None:
    """Its lanes would refuse every job it moved (no user_id to trust): it does not start.
    Without the fair share nothing is moved, and nothing needs its user."""
    external = settings.model_copy(
        update={"amqp_url": SecretStr("amqps://127.0.0.1:5671/?auth=external")}
    )
    with pytest.raises(ConfigError, match="SFWORKER_AMQP_LOGIN_USER is not set"):
        Worker(external)
    Worker(external.model_copy(update={"fair_share": False}))
    Worker(external.model_copy(update={"amqp_login_user": "sfworker"}))


async def test_a_wrong_login_user_stops_the_worker_at_start(
    settings: Settings, users: Users
) -> None:
    wrong = Worker(
        settings.model_copy(
            update={"amqp_url": SecretStr(users.worker_url), "amqp_login_user": users.acme}
        )
    )
    with pytest.raises(ConfigError, match="SFWORKER_AMQP_LOGIN_USER"):
        await wrong.start()
    await wrong.stop()


async def test_the_right_login_user_starts_and_moved_jobs_keep_their_tenant(
    settings: Settings, users: Users
) -> None:
    right = Worker(
        settings.model_copy(
            update={"amqp_url": SecretStr(users.worker_url), "amqp_login_user": users.worker}
        )
    )
    await right.start()
    await right.stop()
