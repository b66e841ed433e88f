"""A registry container on the run's broker vhost and store, per test."""
from __future__ import annotations

from typing import Any

import pytest

from services.registry.service import RegistryService


@pytest.fixture
def registry(container_factory: Any, config: dict[str, Any]) -> Any:
    container = container_factory(RegistryService, config)
    container.start()
    return container


@pytest.fixture
def system(registry: Any, rpc: Any) -> Any:
    return rpc("registry")
