"""Fixtures of end-to-end tests: every service process a test starts is stopped after it."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.processes import ServiceProcess


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    """Append each started process; all are stopped when the test ends."""
    running: list[ServiceProcess] = []
    yield running
    for proc in running:
        proc.stop()

