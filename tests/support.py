"""Real parts for tests: a throwaway nx-27017 store, a RabbitMQ vhost, an event tap."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Queue
from pymongo import MongoClient

# a tap decodes what Sanad publishes: application/cloudevents+json
from services.common import envelope  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
STORE_BIN = ROOT / ".venv-store" / "bin" / "nx-27017"
BROKER = os.environ.get("SANAD_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until `check()` returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")


@contextmanager
def nx_store(data_dir: Path | None = None, journal_mode: str = "WAL") -> Iterator[str]:
    """Start nx-27017 on a free port (data in memory unless `data_dir`); yield its URI."""
    if os.environ.get("MONGO_URI") and data_dir is None:
        yield os.environ["MONGO_URI"]  # a real MongoDB given by the caller
        return
    workdir = Path(tempfile.mkdtemp(prefix="sanad-store-"))
    port = free_port()
    proc = subprocess.Popen(
        [str(STORE_BIN), "--host", "127.0.0.1", "-p", str(port),
         "--data-dir", str(data_dir or "memory"), "--journal-mode", journal_mode,
         "--log-file", str(workdir / "nx.log"), "--pid-file", str(workdir / "nx.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    uri = f"mongodb://127.0.0.1:{port}/"
    try:
        client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=500)
        wait_for(lambda: _pings(client), timeout=30)
        client.close()
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _pings(client: MongoClient) -> bool:
    try:
        client.admin.command("ping")
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def rabbit_vhost() -> Iterator[str]:
    """A vhost of our own for this run (a `make run` on `/` cannot steal our events)."""
    vhost = f"sanad-test-{secrets.token_hex(4)}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{BROKER}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


class EventTap:
    """A queue bound to a service's event exchange: what a partner would receive."""

    def __init__(self, amqp_uri: str, service: str) -> None:
        self.connection = Connection(amqp_uri)
        exchange = Exchange(f"{service}.events", type="topic", durable=True)
        self.queue = Queue(f"tap-{secrets.token_hex(4)}", exchange, routing_key="#",
                           exclusive=True, auto_delete=True)
        self.channel = self.connection.channel()
        self.queue(self.channel).declare()
        self.events: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        while True:
            message = self.queue(self.channel).get(no_ack=True)
            if message is None:
                return self.events
            self.events.append(message.decode())

    def wait(self, count: int, event_type: str | None = None,
             timeout: float = 15.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            found = [e for e in self.drain() if event_type is None or e["type"] == event_type]
            return found if len(found) >= count else None
        return wait_for(enough, timeout=timeout)

    def close(self) -> None:
        self.connection.release()


class DeadLetters:
    """A service's dead-letter queue, read as an operator would (messages left in it)."""

    def __init__(self, amqp_uri: str, service: str) -> None:
        from services.common.consumer import dead_letter_queue

        self.connection = Connection(amqp_uri)
        self.channel = self.connection.channel()
        self.queue = dead_letter_queue(service)(self.channel)
        self.queue.declare()
        self.seen: list[Any] = []

    def wait(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            while (message := self.queue.get(no_ack=False)) is not None:
                self.seen.append(message)
            return [m.decode() for m in self.seen] if len(self.seen) >= count else None
        return wait_for(enough, timeout=timeout)

    def close(self) -> None:
        for message in self.seen:
            message.ack()
        self.connection.release()


def metric_values(port: int, name: str, label: str) -> dict[str, float]:
    """A counter's samples summed by one label, read from a service's /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            value = line.split(f'{label}="')[1].split('"')[0]
            found[value] = found.get(value, 0) + float(line.rsplit(" ", 1)[1])
    return found
