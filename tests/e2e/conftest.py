"""Fixtures of end-to-end tests: every service process a test starts is stopped after it."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.processes import ServiceProcess, stop_all


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    """Append each started process; all are stopped when the test ends."""
    running: list[ServiceProcess] = []
    yield running
    stop_all(running)
