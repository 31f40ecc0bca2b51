"""The session's Prefect server fixture: one server, its environment only in the tests that use it, and
nothing a test creates on it (concurrency limits, automations) left for the next test."""

from __future__ import annotations

import os

import pytest
from fixtures.prefect_server import removing_created_objects

pytestmark = pytest.mark.slow  # starts the server when run alone

AT_COLLECTION = {key: os.environ.get(key) for key in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_LOGGING_EXTRA_LOGGERS")}


def test_a_test_that_uses_the_server_is_pointed_at_it(prefect_server):
    from prefect.settings import PREFECT_API_URL

    assert os.environ["PREFECT_API_URL"] == prefect_server.api_url  # for child processes
    assert PREFECT_API_URL.value() == prefect_server.api_url  # for this process
    assert os.environ["PREFECT_HOME"] == str(prefect_server.home)


def test_limits_and_automations_created_inside_are_deleted(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.exceptions import ObjectNotFound

    from tasks.runtime import GPU_LIMIT

    automation = AutomationCore(name="test-fixture-automation", actions=[DoNothing()], trigger=EventTrigger(
        expect={"test.fixture.event"}, posture=Posture.Reactive, threshold=1))
    with get_client(sync_client=True) as client:
        kept = client.create_automation(automation.model_copy(update={"name": "made-before-the-block"}))
    with removing_created_objects():
        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=2))
            made = client.create_automation(automation)
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit == 2
            assert [a.id for a in client.read_automations_by_name("test-fixture-automation")] == [made]
    with get_client(sync_client=True) as client:
        with pytest.raises(ObjectNotFound):
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        assert client.read_automations_by_name("test-fixture-automation") == []
        assert [a.id for a in client.read_automations_by_name("made-before-the-block")] == [kept]  # not ours to delete


def test_a_test_that_does_not_use_it_keeps_the_environment():
    assert {key: os.environ.get(key) for key in AT_COLLECTION} == AT_COLLECTION
    from prefect.settings import PREFECT_API_URL

    assert PREFECT_API_URL.value() == AT_COLLECTION["PREFECT_API_URL"]
