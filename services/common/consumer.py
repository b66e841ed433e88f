"""Idempotent event consumers that never drop an event because of their own bug.

`@consumes("registry", "sanad.volunteer.erased.v1")` is nameko's event handler plus:

- the envelope and its `data` are checked against the publisher's contract
  (`services.contracts`) before the handler runs; a malformed event is refused there and
  moved to the dead-letter queue at once (retrying cannot fix it);
- an event already handled (same id, same handler) is skipped;
- anything the handler raises after that is a handler failure: the event goes back to
  its queue after a growing pause, up to `EVENT_MAX_ATTEMPTS` tries, then it is moved to
  the service's dead-letter queue through RabbitMQ's dead-letter exchange, counted in
  `sanad_events_dead_lettered_total` and logged with its id; never silently dropped.

Each event is claimed atomically in the store before it is handled, so concurrent
redeliveries run it once; the claim becomes "done" after the handler returns. A crash in
between leaves a claim whose lease expires and the redelivered event runs again, so
handlers also keep their own writes idempotent (upserts keyed by entity id, version
guards). The attempts are counted in that claim record, so they add up across replicas
and restarts. The service must have `self.store` (a BaseStore).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import eventlet
from kombu import Exchange, Queue
from kombu.common import maybe_declare
from marshmallow import Schema
from marshmallow import ValidationError as MarshmallowError
from nameko.amqp import get_connection
from nameko.constants import AMQP_SSL_CONFIG_KEY
from nameko.events import EventHandler
from nameko.messaging import QueueConsumer

from services.common.envelope import CLOUDEVENTS_SERIALIZER, check_envelope
from services.common.errors import ValidationError
from services.common.metrics import metrics_of
from services.common.schemas import guard_raw_input
from services.contracts import payload_schema

log = logging.getLogger(__name__)

KEEP_PROCESSED = timedelta(days=7)  # longer than any redelivery or relay delay
CLAIM_LEASE = timedelta(minutes=2)  # longer than any handler runs
BUSY_PAUSE_SECONDS = 1.0
MAX_EVENT_BYTES = 256 * 1024
DEAD_LETTER_EXCHANGE = "sanad.dead-letter"


def dead_letter_queue(service: str) -> Queue:
    """Where a service's events end up when they cannot be handled (one per service)."""
    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)
    return Queue(f"sanad.dead-letter.{service}", exchange=exchange, routing_key=service,
                 durable=True)


class _Busy(Exception):
    """Another worker is handling the same event right now: requeue and look again."""

    outcome = "busy"


class HandlerFailed(Exception):
    """The handler raised; `attempts` tries have failed so far (the cause is chained)."""

    def __init__(self, key: str, event_id: str, attempts: int) -> None:
        super().__init__(f"{key} failed (attempt {attempts})")
        self.key, self.event_id, self.attempts = key, event_id, attempts


class EventQueueConsumer(QueueConsumer):
    """nameko's queue consumer for event handlers: also accepts CloudEvents structured
    mode (`application/cloudevents+json`), which is how Sanad publishes events."""

    @property
    def accept(self) -> list[str]:
        return [*self.container.accept, CLOUDEVENTS_SERIALIZER]


class SanadEventHandler(EventHandler):
    """A service-pool event handler whose queue dead-letters to the service's DLQ, with
    bounded retries (see the module docstring)."""

    queue_consumer = EventQueueConsumer()

    def setup(self) -> None:
        super().setup()
        config = self.container.config
        service = self.container.service_name
        self.max_attempts = int(config.get("EVENT_MAX_ATTEMPTS", 5))
        self.retry_seconds = float(config.get("EVENT_RETRY_SECONDS", 1.0))
        self.queue = Queue(
            self.queue.name, exchange=self.queue.exchange, routing_key=self.event_type,
            durable=True, queue_arguments={"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                                           "x-dead-letter-routing-key": service})
        with get_connection(config["AMQP_URI"], config.get(AMQP_SSL_CONFIG_KEY)) as conn:
            maybe_declare(dead_letter_queue(service), conn.channel())

    def handle_message_processed(self, message: Any, result: Any = None,
                                 exc_info: Any = None) -> None:
        if exc_info is None:
            if result == "rejected":
                self._dead_letter(message, "malformed")
            else:
                self.queue_consumer.ack_message(message)
            return
        failure = exc_info[1]
        if isinstance(failure, HandlerFailed):
            if failure.attempts >= self.max_attempts:
                log.error("event %s dead-lettered after %d failed attempts (%s)",
                          failure.event_id, failure.attempts, self.method_name)
                self._dead_letter(message, "handler_failed")
                return
            # a growing pause before the event is offered again: a peer or the store
            # may be coming back; the worker holds the message meanwhile
            eventlet.sleep(min(self.retry_seconds * 2 ** (failure.attempts - 1), 30.0))
        elif isinstance(failure, _Busy):
            eventlet.sleep(BUSY_PAUSE_SECONDS)  # then it is done, or its lease ran out
        else:
            eventlet.sleep(self.retry_seconds)  # the store is down: requeue, don't spin
        self.queue_consumer.requeue_message(message)

    def _dead_letter(self, message: Any, reason: str) -> None:
        metrics = metrics_of(self.container)
        if metrics is not None:
            metrics.events_dead_lettered.labels(self.event_type, reason).inc()
        if message.channel.connection:
            try:
                message.reject(requeue=False)  # the queue's dead-letter exchange takes it
            except ConnectionError:
                pass  # the broker has reclaimed it and will deliver it again


def consumes(source_service: str, event_type: str, schema: Schema | None = None
             ) -> Callable[[Callable[..., Any]], Any]:
    """Handle `event_type` events of `source_service`; `data` is checked against the
    publisher's contract (or `schema`), and the handler gets the envelope with `data` as
    the contract loads it (fields the contract does not know are left out)."""
    contract = schema if schema is not None else payload_schema(event_type)

    def decorate(handle: Callable[..., Any]) -> Any:
        @functools.wraps(handle)
        def handler(self: Any, message: Any) -> str:
            try:
                envelope = _checked(message, contract)
            except (ValueError, ValidationError, MarshmallowError) as exc:
                log.warning("rejected malformed event on %s: %s", event_type, exc)
                return "rejected"
            key = f"{handle.__name__}:{envelope['id']}"
            claim, attempts = self.store.claim_event(key, datetime.now(UTC), CLAIM_LEASE,
                                                     KEEP_PROCESSED)
            if claim == "done":
                return "duplicate"
            if claim == "busy":
                raise _Busy(key)
            try:
                handle(self, envelope)
            except Exception as exc:
                attempts = self.store.fail_event(key, attempts, datetime.now(UTC),
                                                 KEEP_PROCESSED)
                raise HandlerFailed(key, envelope["id"], attempts) from exc
            self.store.finish_event(key, datetime.now(UTC), KEEP_PROCESSED)
            return "processed"

        return SanadEventHandler.decorator(
            source_service, event_type, requeue_on_error=True,
            expected_exceptions=_Busy)(handler)

    return decorate


def _checked(message: Any, contract: Schema) -> dict[str, Any]:
    envelope = check_envelope(message)
    data = envelope.get("data")
    # event data is input too: no operator or dotted keys reach a query
    guard_raw_input(data, MAX_EVENT_BYTES)
    envelope["data"] = contract.load(data if data is not None else {})
    return envelope
