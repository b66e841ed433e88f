"""Prometheus metrics and health checks for one service container.

RED metrics per entrypoint come from nameko's worker hooks, so no entrypoint has to
remember to record anything. Each container has its own registry (several containers
can share a test process) and serves `/metrics`, `/health/live` and `/health/ready` on
`METRICS_PORT` (0 picks a free port; unset or negative disables the server).
"""
from __future__ import annotations

import json
import logging
import time
import weakref
from datetime import UTC, datetime
from typing import Any

import eventlet
from eventlet import wsgi
from kombu import Connection
from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.common.envelope import parse_time
from services.common.errors import EXPECTED_ERRORS

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LAG_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
KINDS = {"Rpc": "rpc", "EventHandler": "event", "Timer": "timer", "ConfiguredTimer": "timer",
         "HttpRequestHandler": "http"}


def _outcome(result: Any, exc_info: Any) -> str:
    if exc_info is not None:
        exc = exc_info[1]
        if isinstance(exc, EXPECTED_ERRORS):
            return type(exc).__name__.lower()
        return getattr(exc, "outcome", "error")  # e.g. "busy": handled elsewhere right now
    # Idempotent consumers report what they did with the event.
    if isinstance(result, str) and result in ("processed", "duplicate", "rejected"):
        return result
    return "success"


class Metrics(DependencyProvider):
    def setup(self) -> None:
        registry = self.registry = CollectorRegistry()
        self.requests = Counter(
            "sanad_requests", "Entrypoint calls by outcome.",
            ["entrypoint", "kind", "outcome"], registry=registry)
        self.duration = Histogram(
            "sanad_request_duration_seconds", "Entrypoint duration.",
            ["entrypoint", "kind"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge(
            "sanad_workers_in_flight", "Workers running now.", registry=registry)
        self.max_workers = Gauge(
            "sanad_workers_max", "Worker pool size.", registry=registry)
        self.max_workers.set(int(self.container.config.get("max_workers", 10)))
        self.events_published = Counter(
            "sanad_events_published", "Events published by type.", ["type"], registry=registry)
        self.events_consumed = Counter(
            "sanad_events_consumed", "Events received by type and outcome.",
            ["type", "outcome"], registry=registry)
        self.events_dead_lettered = Counter(
            "sanad_events_dead_lettered", "Events moved to the dead-letter queue, by type "
            "and reason (malformed, handler_failed).", ["type", "reason"], registry=registry)
        self.event_lag = Histogram(
            "sanad_event_lag_seconds", "Event time to the start of its handling.",
            ["type"], buckets=LAG_BUCKETS, registry=registry)
        # Set by the outbox relay on each tick, not computed per scrape: a scrape must
        # never load the store.
        self.outbox_backlog = Gauge(
            "sanad_outbox_backlog", "Documents with events not yet published (last relay).",
            registry=registry)
        self._started: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._server: Any = None
        self.port: int | None = None

    # -- worker hooks ---------------------------------------------------------------
    def worker_setup(self, worker_ctx: Any) -> None:
        self.in_flight.inc()
        self._started[worker_ctx] = time.perf_counter()
        if isinstance(worker_ctx.entrypoint, EventHandler) and worker_ctx.args:
            self._observe_lag(worker_ctx.args[0])

    def _observe_lag(self, message: Any) -> None:
        try:
            lag = datetime.now(UTC) - parse_time(message["time"])
            self.event_lag.labels(message["type"]).observe(max(lag.total_seconds(), 0.0))
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # malformed events are counted by the consumer as rejected

    def worker_result(self, worker_ctx: Any, result: Any = None, exc_info: Any = None) -> None:
        elapsed = time.perf_counter() - self._started.pop(worker_ctx, time.perf_counter())
        self.in_flight.dec()
        name = worker_ctx.entrypoint.method_name
        kind = next((KINDS[cls.__name__] for cls in type(worker_ctx.entrypoint).__mro__
                     if cls.__name__ in KINDS), "other")
        outcome = _outcome(result, exc_info)
        self.requests.labels(name, kind, outcome).inc()
        if kind == "event" and worker_ctx.args and isinstance(worker_ctx.args[0], dict):
            self.events_consumed.labels(str(worker_ctx.args[0].get("type")), outcome).inc()
        self.duration.labels(name, kind).observe(elapsed)

    def get_dependency(self, worker_ctx: Any) -> Metrics:
        return self

    # -- HTTP: /metrics and health ----------------------------------------------------
    def start(self) -> None:
        port = self.container.config.get("METRICS_PORT")
        if port is None or int(port) < 0:
            return
        host = self.container.config.get("METRICS_HOST", "0.0.0.0")
        sock = eventlet.listen((host, int(port)))
        self.port = sock.getsockname()[1]
        self._server = self.container.spawn_managed_thread(
            lambda: wsgi.server(sock, self._wsgi, log_output=False, log=_QuietLog()))
        log.info("metrics and health on http://%s:%s/metrics", host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.kill()
            self._server = None

    kill = stop

    def readiness(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            with Connection(self.container.config["AMQP_URI"], connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1)
            checks["broker"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["broker"] = f"failed: {type(exc).__name__}"
        for dependency in self.container.dependencies:
            check = getattr(dependency, "health_check", None)
            if check is None:
                continue
            try:
                check()
                checks[dependency.attr_name] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks[dependency.attr_name] = f"failed: {type(exc).__name__}"
        return all(v == "ok" for v in checks.values()), checks

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(self.registry)]
        if path == "/health/live":
            return _json(start_response, "200 OK",
                         {"status": "ok", "service": self.container.service_name})
        if path in ("/health/ready", "/health"):
            ready, checks = self.readiness()
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable",
                         {"status": "ok" if ready else "unavailable",
                          "service": self.container.service_name, "checks": checks})
        return _json(start_response, "404 Not Found", {"status": "not found"})


def _json(start_response: Any, status: str, body: dict[str, Any]) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


class _QuietLog:
    def write(self, _: str) -> None:  # scrapes every few seconds would flood the log
        pass


def metrics_of(container: Any) -> Metrics | None:
    for dependency in container.dependencies:
        if isinstance(dependency, Metrics):
            return dependency
    return None
