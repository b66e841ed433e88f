"""Shared fixtures: one store and one vhost per test run; fresh database names per test."""
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nameko.standalone.rpc import ServiceRpcProxy
from pymongo import MongoClient

from services.common.caller import caller_context
from tests.support import EventTap, nx_store, rabbit_vhost

SYSTEM = ("system",)


@pytest.fixture(scope="session")
def store_uri() -> Iterator[str]:
    with nx_store() as uri:
        yield uri


@pytest.fixture(scope="session")
def broker_uri() -> Iterator[str]:
    with rabbit_vhost() as uri:
        yield uri


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Credential signing keys for the run (the service makes the first one)."""
    return str(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def config(store_uri: str, broker_uri: str, keys_dir: str) -> Iterator[dict[str, Any]]:
    prefix = f"t{secrets.token_hex(4)}_"
    yield {
        "AMQP_URI": broker_uri,
        "MONGO_URI": store_uri,
        "MONGO_DB_PREFIX": prefix,
        "METRICS_PORT": 0,
        "WEB_SERVER_ADDRESS": "127.0.0.1:0",
        "CREDENTIAL_KEYS_DIR": keys_dir,
        "CREDENTIAL_KEYS_AUTOGEN": True,
        "max_workers": 32,
        "serializer": "json",
        "OUTBOX_RELAY_SECONDS": 0.2,
        "OUTBOX_GRACE_SECONDS": 0.5,
    }
    client: MongoClient = MongoClient(store_uri)
    for name in client.list_database_names():
        if name.startswith(prefix):
            client.drop_database(name)
    client.close()


@pytest.fixture
def db(config: dict[str, Any]) -> Callable[[str], Any]:
    client: MongoClient = MongoClient(config["MONGO_URI"], tz_aware=True)
    yield lambda service: client[config["MONGO_DB_PREFIX"] + service]
    client.close()


@pytest.fixture
def rpc(config: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    """`rpc("registry", roles=..., user_id=...)`: a proxy acting as that caller (every
    call it makes carries `idempotency_key` when given)."""
    proxies: list[ServiceRpcProxy] = []

    def make(service: str, roles: tuple[str, ...] = SYSTEM, user_id: str | None = None,
             org_ids: tuple[str, ...] = (), idempotency_key: str | None = None) -> Any:
        context = caller_context(user_id, roles, org_ids)
        if idempotency_key is not None:
            context["idempotency_key"] = idempotency_key
        proxy = ServiceRpcProxy(service, config, timeout=30, context_data=context)
        proxies.append(proxy)
        return proxy.start()

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def tap(broker_uri: str) -> Iterator[Callable[[str], EventTap]]:
    taps: list[EventTap] = []

    def make(service: str) -> EventTap:
        taps.append(EventTap(broker_uri, service))
        return taps[-1]

    yield make
    for one in taps:
        one.close()
