"""Issue 27, point 5: with EXTERNAL (certificate) authentication the URL names no user, so the
worker is told its own (SFWORKER_AMQP_LOGIN_USER): it stamps it on what it publishes, the lanes
trust the copies it moved, and a wrong name stops the worker at start instead of every moved job
being refused later."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from yarl import URL

from tests.support.tenants import Users
from worker.accounts import ConfigError
from worker.app import Worker
from worker.runtime.publisher import login_user
from worker.settings import Settings


def test_the_configured_user_is_the_worker_s_own_whatever_the_url_says() -> None:
    external = URL("amqps://rabbit:5671/?auth=external")
    assert login_user(external) is None  # the certificate names it: unknown from the URL
    assert login_user(external, "sfworker") == "sfworker"
    assert login_user(URL("amqp://sfworker:pw@rabbit/")) == "sfworker"


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
