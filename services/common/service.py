"""What every Sanad service class inherits: metrics, health, call-id logging, caller."""
from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kombu.serialization
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY,
)
from nameko.exceptions import UnserializableValueError, serialize
from nameko.rpc import Responder, Rpc, RpcConsumer, get_rpc_exchange

from services.common import requests
from services.common.caller import CallerProvider
from services.common.errors import EXPECTED_ERRORS
from services.common.logs import CallIdLogging
from services.common.metrics import Metrics
from services.common.requests import RequestKeys


class ServiceBase:
    request_keys = RequestKeys()
    metrics = Metrics()
    call_logging = CallIdLogging()
    caller = CallerProvider()

    @staticmethod
    def now() -> datetime:
        """The clock read of a worker; the domain gets time passed in.

        Truncated to milliseconds, BSON's precision, so a reply equals what a later read
        of the same record returns.
        """
        now = datetime.now(UTC)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)


class _Responder(Responder):
    """nameko's responder, serialising each reply once.

    nameko's own serialises a result twice (a check that it can, then the publish); on
    a page of search results that second encoding is a noticeable share of the call.
    """

    def send_response(self, result: Any, exc_info: Any) -> tuple[Any, Any]:
        error = None if exc_info is None else serialize(exc_info[1])
        # encoded the same way as the request
        serializer = kombu.serialization.registry.type_to_name[
            self.message.properties["content_type"]]
        try:
            encoded = kombu.serialization.dumps({"result": result, "error": error},
                                                serializer)
        except Exception:  # noqa: BLE001 - nameko's own rule: report, do not crash
            exc_info = sys.exc_info()
            encoded = kombu.serialization.dumps(
                {"result": None, "error": serialize(UnserializableValueError(result))},
                serializer)
            result = None
        content_type, content_encoding, body = encoded
        publisher = self.publisher_cls(self.amqp_uri, ssl=self.ssl,
                                       login_method=self.login_method)
        publisher.publish(body, content_type=content_type, content_encoding=content_encoding,
                          exchange=self.exchange,
                          routing_key=self.message.properties["reply_to"],
                          correlation_id=self.message.properties.get("correlation_id"))
        return result, exc_info


class ReplyingRpcConsumer(RpcConsumer):
    """nameko's RPC consumer, with replies encoded once.

    Replies keep publisher confirms: without them a reply published on a pooled
    connection the broker has dropped (a restart) or refused is lost silently, and an
    in-service `RpcProxy` waits for it without a timeout.
    """

    def handle_result(self, message: Any, result: Any, exc_info: Any) -> tuple[Any, Any]:
        config = self.container.config
        responder = _Responder(
            config[AMQP_URI_CONFIG_KEY], get_rpc_exchange(config),
            config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER), message,
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY))
        result, exc_info = responder.send_response(result, exc_info)
        self.queue_consumer.ack_message(message)
        return result, exc_info


class SanadRpc(Rpc):
    """nameko's RPC entrypoint with Sanad's reply path.

    Its consumer is a shared extension of its own: a service must not mix it with
    nameko's plain `@rpc`, or two consumers would share the service's queue.
    """

    rpc_consumer = ReplyingRpcConsumer()

    def unpack_message_headers(self, message: Any) -> dict[str, Any]:
        context = super().unpack_message_headers(message)
        found = requests.key_of_message(message, context)
        if found is not None:
            context[requests.CONTEXT_KEY] = found  # RequestKeys takes it off
        return context


def rpc(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """nameko's `@rpc` with Sanad's caller errors marked as expected.

    Expected errors are logged as warnings, not as crashes, so alerts on error logs mean
    something; the caller still receives the exception.
    """
    options.setdefault("expected_exceptions", EXPECTED_ERRORS)
    decorator = SanadRpc.decorator(**options)
    return decorator if fn is None else decorator(fn)
