"""Containers on the run's broker vhost and store, per test, and the builders tests share:
the `World` (a verified organisation, its coordinator, volunteers, tasks) and a slot keeper
driven by hand."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from services.common.outbox import commit_unpublished
from services.registry.service import RegistryService
from services.tasks import domain as tasks_domain
from services.tasks.service import TasksService
from services.tasks.slots import SlotKeeper
from tests.integration.world import World


@pytest.fixture
def registry(container_factory: Any, config: dict[str, Any]) -> Any:
    container = container_factory(RegistryService, config)
    container.start()
    return container


@pytest.fixture
def system(registry: Any, rpc: Any) -> Any:
    return rpc("registry")


@pytest.fixture
def containers(container_factory: Any, config: dict[str, Any]) -> dict[str, Any]:
    tasks_config = {**config, "ASSIGNMENT_TIMER_SECONDS": 0.3, "OFFER_HOURS": 48,
                    "TASK_TIMER_SECONDS": 0.5}
    started = {}
    for name, service, cfg in (("registry", RegistryService, config),
                               ("tasks", TasksService, tasks_config)):
        started[name] = container_factory(service, cfg)
        started[name].start()
    return started


@pytest.fixture
def platform(containers: dict[str, Any]) -> dict[str, Any]:
    return containers["tasks"].config


@pytest.fixture
def world(platform: Any, rpc: Any, db: Any) -> World:
    return World(rpc, db)


@pytest.fixture
def slot_keeper() -> Callable[[Any, datetime], SlotKeeper]:
    """`slot_keeper(store, now)`: the service's slot steps, driven by a test; events stay
    in the outbox."""
    return lambda store, now: SlotKeeper(store, commit_unpublished("tasks"),
                                         tasks_domain.Policy(), now)
