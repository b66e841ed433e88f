"""Events on RabbitMQ as a partner reads them with the official CloudEvents SDK's own
AMQP and RabbitMQ bindings, at their default settings: structured mode, recognised by the
message's content type alone."""
from __future__ import annotations

import secrets
from typing import Any

from cloudevents.core.bindings import amqp, rabbitmq
from cloudevents.core.formats.json import JSONFormat
from kombu import Connection, Exchange, Queue

from tests.factories import volunteer
from tests.support import wait_for


def raw_messages(amqp_uri: str, service: str, count: int, action: Any) -> list[Any]:
    """What arrives on a queue bound to the service's exchange, undecoded."""
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        queue = Queue(f"partner-{secrets.token_hex(4)}",
                      Exchange(f"{service}.events", type="topic", durable=True),
                      routing_key="#", exclusive=True, auto_delete=True)(channel)
        queue.declare()
        action()
        got: list[Any] = []

        def enough() -> list[Any] | None:
            while (message := queue.get(no_ack=True)) is not None:
                got.append(message)
            return got if len(got) >= count else None

        return wait_for(enough)


def test_a_partner_reads_events_with_the_cloudevents_sdk_bindings(
        system: Any, config: dict[str, Any]) -> None:
    created: dict[str, Any] = {}
    [message] = raw_messages(config["AMQP_URI"], "registry", 1, lambda: created.update(
        system.register_volunteer(volunteer())))
    assert message.content_type == "application/cloudevents+json"
    headers = {k: str(v) for k, v in (message.headers or {}).items()}

    via_rabbitmq = rabbitmq.from_rabbitmq(
        rabbitmq.RabbitMQMessage(headers=headers, content_type=message.content_type,
                                 body=message.body), JSONFormat())
    via_amqp = amqp.from_amqp(
        amqp.AMQPMessage(properties={"content-type": message.content_type},
                         application_properties=headers, application_data=message.body),
        JSONFormat())
    for event in (via_rabbitmq, via_amqp):
        assert event.get_type() == "sanad.volunteer.registered.v1"
        assert event.get_source() == "/sanad/registry"
        assert event.get_subject() == created["id"]
        assert event.get_specversion() == "1.0"
        assert event.get_id().startswith("evt_")
        assert event.get_data()["volunteer"]["volunteer_id"] == created["id"]
    assert via_rabbitmq.get_id() == via_amqp.get_id()
