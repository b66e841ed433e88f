"""The transactional outbox: a state change and the events it causes commit together.

A service's store writes the change and its pending events in one single-document
update (`storage.with_outbox`). Once the worker has replied, the service publishes those
events and acknowledges each one (removing it from the document). If the process dies in
between, or the broker is down, the events stay pending and `OutboxRelay`'s timer
publishes them later. Delivery is therefore at-least-once; consumers deduplicate by
event id.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import eventlet
import eventlet.event
from nameko.events import EventDispatcher

from services.common import requests
from services.common.envelope import (
    CLOUDEVENTS_SERIALIZER,
    DomainEvent,
    make_envelope,
    parse_time,
)
from services.common.failpoints import failpoint
from services.common.metrics import metrics_of
from services.common.storage import BaseStore, Store, pending_events
from services.common.timers import every

log = logging.getLogger(__name__)

ACK_BATCH_SECONDS = 0.02
T = TypeVar("T")


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)  # BSON's precision


class Outbox(EventDispatcher):
    """Event dispatcher that publishes pending outbox events and acknowledges them."""

    @property
    def serializer(self) -> str:
        return CLOUDEVENTS_SERIALIZER  # structured mode, as the CloudEvents bindings read it

    def setup(self) -> None:
        super().setup()
        config = self.container.config
        self.source = f"/sanad/{self.container.service_name}"
        self.grace = timedelta(seconds=float(config.get("OUTBOX_GRACE_SECONDS", 5)))
        self.lease = timedelta(seconds=float(config.get("OUTBOX_LEASE_SECONDS", 30)))
        self.batch = int(config.get("OUTBOX_RELAY_BATCH", 500))

    def start(self) -> None:
        super().start()
        self._handles: dict[Any, OutboxHandle] = {}
        self._acks: list[tuple[str, str, str]] = []
        self._ack_ready = eventlet.event.Event()
        self._running = True
        self.container.spawn_managed_thread(self._flush_acks)

    def stop(self) -> None:
        self._running = False
        if not self._ack_ready.ready():
            self._ack_ready.send(True)  # wake the flusher so it ends by itself
        self._flush_now()
        super().stop()

    def defer_ack(self, collection: str, doc_id: str, event_id: str) -> None:
        """Acknowledge a published event soon, together with others.

        The ack is the second store write of every change; batching takes it off the
        request path. If the process dies first, the relay re-sends those events and
        consumers drop the duplicates, as after any crash between publish and ack.
        """
        self._acks.append((collection, doc_id, event_id))
        if not self._ack_ready.ready():
            self._ack_ready.send(True)

    def _flush_acks(self) -> None:
        while self._running:
            self._ack_ready.wait()
            self._ack_ready = eventlet.event.Event()
            eventlet.sleep(ACK_BATCH_SECONDS)  # let concurrent workers add theirs
            self._flush_now()

    def _flush_now(self) -> None:
        acks, self._acks = self._acks, []
        if not acks:
            return
        try:
            self._store().outbox_ack_many(acks)
        except Exception:  # noqa: BLE001 - sent already; the relay re-sends, consumers dedupe
            log.warning("could not acknowledge %d published event(s)", len(acks),
                        exc_info=True)

    def _store(self) -> BaseStore:
        for dependency in self.container.dependencies:
            if isinstance(dependency, Store) and dependency.store is not None:
                return dependency.store
        raise RuntimeError("Outbox needs a Store dependency on the same service")

    def get_dependency(self, worker_ctx: Any) -> OutboxHandle:
        handle = OutboxHandle(self, super().get_dependency(worker_ctx))
        self._handles[worker_ctx] = handle
        return handle

    def worker_result(self, worker_ctx: Any, result: Any = None, exc_info: Any = None) -> None:
        # nameko calls this after the entrypoint has replied (RPC) or finished
        handle = self._handles.pop(worker_ctx, None)
        if handle is not None:
            handle.flush()

    def worker_teardown(self, worker_ctx: Any) -> None:
        self._handles.pop(worker_ctx, None)


class OutboxHandle:
    """What a service sees as `self.outbox` inside a worker."""

    def __init__(self, provider: Outbox, dispatch: Any) -> None:
        self._provider = provider
        self._dispatch = dispatch
        self._metrics = metrics_of(provider.container)
        self._queued: list[tuple[str, str, list[Mapping[str, Any]]]] = []

    def commit(self, collection: str, doc_id: str, events: Iterable[DomainEvent],
               write: Callable[[list[dict[str, Any]]], T | None]) -> T | None:
        """Write a change with the events it causes; publish them once the worker has
        replied. The one way a Sanad service changes state.

        `write` gets the events as CloudEvents envelopes and stores them with the change
        in one single-document write (an insert, a compare-and-replace or a conditional
        update of the store); it returns what it wrote, or None when it wrote nothing (a
        lost compare-and-set), and then nothing is published. A caller never waits for
        the broker; events not sent (broker down, process killed) stay pending in the
        document for the relay, so a change is never committed without its events.
        """
        envelopes = [make_envelope(event, source=self._provider.source, now=_now())
                     for event in events]
        try:
            written = write(envelopes)
        except requests.Replayed as replay:
            return replay.doc  # a redelivered request: its first delivery wrote this
        failpoint("outbox.after_commit")
        if written is not None and envelopes:
            self._queued.append((collection, doc_id, envelopes))
        return written

    def erase(self, raw: Mapping[str, Any], collection: str,
              tombstone_of: Callable[[Mapping[str, Any]], tuple[dict[str, Any],
                                                                 list[DomainEvent]]],
              replace: Callable[[dict[str, Any], list[dict[str, Any]], list[str]],
                                T | None]) -> T | None:
        """Replace a record by its tombstone and announce the erasure.

        Events still pending in `raw` carry the record's data: they are sent now, before
        the tombstone is written, so it keeps none of the ones that went out (`replace`
        gets the tombstone, the erasure's envelopes and the ids of the events sent). What
        the broker refuses stays pending for the relay.
        """
        pending = pending_events(raw)
        sent = self._send(collection, raw["_id"], pending)
        tombstone, events = tombstone_of(raw)
        published = [event["id"] for event in pending[:sent]]
        return self.commit(collection, raw["_id"], events,
                           lambda envelopes: replace(tombstone, envelopes, published))

    def flush(self) -> None:
        queued, self._queued = self._queued, []
        for collection, doc_id, envelopes in queued:
            if self._send(collection, doc_id, envelopes) < len(envelopes):
                return  # broker trouble: the rest waits for the relay as well

    def _send(self, collection: str, doc_id: str,
              envelopes: Iterable[Mapping[str, Any]]) -> int:
        failpoint("outbox.after_write")
        sent = 0
        for envelope in envelopes:
            try:
                self._dispatch(envelope["type"], dict(envelope))
            except Exception:  # noqa: BLE001 - the change is committed; the relay retries
                log.warning("publish failed, left for relay: %s %s",
                            envelope["type"], envelope["id"], exc_info=True)
                return sent
            if self._metrics:
                self._metrics.events_published.labels(envelope["type"]).inc()
            failpoint("outbox.after_publish")
            self._provider.defer_ack(collection, doc_id, envelope["id"])
            sent += 1
        return sent

    def relay(self, now: datetime | None = None) -> int:
        """Publish events left pending longer than the grace period; returns how many.

        Each tick also sets `sanad_outbox_backlog`, to NaN when the store cannot be read:
        a last good value would hide an outage (the `SanadOutboxBacklogUnknown` alert).
        """
        store = self._provider._store()
        try:
            sent = self._relay(store, now or datetime.now(UTC))
            backlog = float(store.outbox_backlog())
        except Exception:
            if self._metrics:
                self._metrics.outbox_backlog.set(float("nan"))
            raise
        if self._metrics:
            self._metrics.outbox_backlog.set(backlog)
        return sent

    def _relay(self, store: BaseStore, now: datetime) -> int:
        provider = self._provider
        sent = 0
        for collection in store.OUTBOX_COLLECTIONS:
            while sent < provider.batch:
                doc = store.outbox_claim(collection, now, provider.lease)
                if doc is None:
                    break
                pending = pending_events(doc)
                written = [parse_time(event["time"]) for event in pending]
                due = [event for event, at in zip(pending, written, strict=True)
                       if now - at >= provider.grace]
                published = self._send(collection, doc["_id"], due)
                sent += published
                if published < len(due):
                    return sent  # broker trouble: stop hammering, the lease expires
                if len(due) < len(pending):
                    # Events still in their grace: the call that wrote them is publishing
                    # them. Look again when the first is due, not a whole lease later (a
                    # process killed before its publish would hold them back that long).
                    store.outbox_release(collection, doc["_id"], doc["outbox_lease"],
                                         min(written) + provider.grace)
        if sent:
            log.info("outbox relay published %d pending event(s)", sent)
        return sent


def commit_unpublished(service: str) -> Callable[..., Any]:
    """`OutboxHandle.commit` for a service's code driven outside a worker (tests, benches,
    tools): the change is written with its events, which stay pending for the relay of
    a running replica."""
    source = f"/sanad/{service}"

    def commit(collection: str, doc_id: str, events: Iterable[DomainEvent],
               write: Callable[[list[dict[str, Any]]], T | None]) -> T | None:
        return write([make_envelope(event, source=source, now=_now()) for event in events])

    return commit


class OutboxRelay:
    """Mixin for a service class: relays pending outbox events on a timer.

    Several replicas may run it; each leases different documents.
    """

    outbox: Any

    @every("OUTBOX_RELAY_SECONDS", 2.0)
    def relay_outbox(self) -> None:
        self.outbox.relay()
