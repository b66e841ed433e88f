"""`sanad_outbox_backlog` reads NaN while the store cannot be read (issue 16, item 15):
a registry container on a store process of its own, which the test stops."""
from __future__ import annotations

import math
import urllib.request
from typing import Any

from services.common.metrics import metrics_of
from services.registry.service import RegistryService
from tests.support import nx_store, wait_for


def backlog(port: int) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("sanad_outbox_backlog "):
                return float(line.split()[1])
    return None


def test_backlog_is_nan_while_the_store_is_down(container_factory: Any,
                                                config: dict[str, Any]) -> None:
    with nx_store() as uri:
        registry = container_factory(RegistryService, {**config, "MONGO_URI": uri,
                                                       "MONGO_TIMEOUT_MS": 300})
        registry.start()
        port = metrics_of(registry).port
        wait_for(lambda: backlog(port) == 0.0)  # a relay tick has counted it
    # the store process is stopped now; the next ticks cannot read it
    wait_for(lambda: math.isnan(backlog(port) or 0.0), timeout=30)
