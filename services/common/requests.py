"""Idempotent RPC requests: a request delivered twice writes once.

RabbitMQ redelivers an RPC request whose worker died before acknowledging it (a killed
process, a lost connection). If the first delivery had already written, the second
must not write again: it answers with what the first wrote.

Every RPC request has a key: the caller's `idempotency_key` from the context data (for
callers that retry on their own, as payment APIs allow), else the AMQP
`correlation_id` the caller's proxy gave the request (a redelivery keeps it). The key
rides with each write of the worker, in the same single-document write: an inserted
document keeps it in `request_key` (unique, sparse), a compare-and-replace adds it to the
document's `request_keys` (the last 20). A redelivered request (or one with a caller's
key) first looks for a document that holds its key, and a stale-version check that finds
its own key in the document answers the document instead of a Conflict.

The key lives in a greenthread-local for the worker, never in the context data that
nameko forwards to downstream calls (two writes there would share it).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from eventlet.corolocal import local
from nameko.extensions import DependencyProvider

CONTEXT_KEY = "sanad.request"  # set by the RPC entrypoint, taken off before the worker runs
CALLER_KEY = "idempotency_key"  # what a caller may send
KEEP_KEYS = 20
_CALLER_KEY = re.compile(r"[A-Za-z0-9_.:-]{8,100}")
_state = local()


def key_of_message(message: Any, context: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request key of an RPC message, and whether it may have been written before."""
    given = context.get(CALLER_KEY)
    if isinstance(given, str) and _CALLER_KEY.fullmatch(given):
        # scoped to the caller, so two callers' keys never meet
        caller = hashlib.sha256(str(context.get("caller", "")).encode()).hexdigest()[:16]
        return {"key": f"ik:{caller}:{given}", "replay": True}
    correlation = message.properties.get("correlation_id")
    if not isinstance(correlation, str) or not correlation:
        return None
    return {"key": f"rk:{correlation}",
            "replay": bool(message.delivery_info.get("redelivered"))}


def current() -> str | None:
    """This worker's request key (None outside an RPC worker)."""
    return getattr(_state, "key", None)


def may_replay() -> bool:
    """Whether this request may have written already (a redelivery, a caller's key)."""
    return bool(getattr(_state, "replay", False))


def replays(doc: Mapping[str, Any] | None) -> bool:
    """Whether `doc` already holds this request's write."""
    key = current()
    return key is not None and doc is not None and (
        doc.get("request_key") == key or key in (doc.get("request_keys") or ()))


def insert_key() -> str | None:
    """The `request_key` of this request's next insert: the n-th insert of a request has
    the same key in every delivery of it (a batch import inserts many)."""
    key = current()
    if key is None:
        return None
    _state.inserts = getattr(_state, "inserts", 0) + 1
    return f"{key}#{_state.inserts}"


class Replayed(Exception):  # noqa: N818 - not an error: the answer of a repeated request
    """This request's write is already stored: `doc` is what it wrote."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__(doc.get("_id"))
        self.doc = doc


def remembered(doc: Mapping[str, Any]) -> list[str]:
    """The `request_keys` a compare-and-replace writes: this request's key added."""
    keys = list(doc.get("request_keys") or ())
    key = current()
    if key is not None and key not in keys:
        keys.append(key)
    return keys[-KEEP_KEYS:]


class RequestKeys(DependencyProvider):
    """Makes each RPC worker's request key current while it runs."""

    def worker_setup(self, worker_ctx: Any) -> None:
        found = worker_ctx.data.pop(CONTEXT_KEY, None)
        worker_ctx.data.pop(CALLER_KEY, None)  # never forwarded downstream
        _state.key = found["key"] if isinstance(found, dict) else None
        _state.replay = bool(found and found.get("replay"))
        _state.inserts = 0

    def worker_teardown(self, worker_ctx: Any) -> None:
        _state.key = None
        _state.replay = False
