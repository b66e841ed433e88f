"""Idempotent event consumers.

`@consumes("registry", "sanad.volunteer.erased.v1")` is nameko's event handler plus:
the envelope is checked, an event already handled (same id, same handler) is skipped,
a poison event is logged and dropped instead of looping, and a transient failure (store
down) is retried after a pause. The service must have `self.store` (a BaseStore).

Each event is claimed atomically before it is handled, so concurrent redeliveries run
it once; the claim becomes "done" after the handler returns. A crash in between leaves
a claim whose lease expires and the redelivered event runs again, so handlers also keep
their own writes idempotent (upserts keyed by entity id, version guards).
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import ValidationError as MarshmallowError
from nameko.events import event_handler

from services.common.envelope import check_envelope
from services.common.errors import EXPECTED_ERRORS
from services.common.schemas import guard_raw_input

log = logging.getLogger(__name__)

KEEP_PROCESSED = timedelta(days=7)  # longer than any redelivery or relay delay
CLAIM_LEASE = timedelta(minutes=2)  # longer than any handler runs
RETRY_PAUSE_SECONDS = 1.0
MAX_EVENT_BYTES = 256 * 1024


class _Busy(Exception):
    """Another worker is handling the same event right now: requeue and look again."""


def consumes(source_service: str, event_type: str) -> Callable[[Callable[..., Any]], Any]:
    def decorate(handle: Callable[..., Any]) -> Any:
        @functools.wraps(handle)
        def handler(self: Any, message: Any) -> str:
            try:
                envelope = check_envelope(message)
            except ValueError as exc:
                log.warning("rejected malformed event on %s: %s", event_type, exc)
                return "rejected"
            key = f"{handle.__name__}:{envelope['id']}"
            try:
                claim = self.store.claim_event(key, datetime.now(UTC), CLAIM_LEASE,
                                               KEEP_PROCESSED)
            except Exception:
                time.sleep(RETRY_PAUSE_SECONDS)  # the store is down: requeue, don't spin
                raise
            if claim == "done":
                return "duplicate"
            if claim == "busy":
                time.sleep(RETRY_PAUSE_SECONDS)
                raise _Busy(key)
            outcome = "processed"
            try:
                # event data is input too: no operator or dotted keys reach a query
                guard_raw_input(envelope.get("data"), MAX_EVENT_BYTES)
                handle(self, envelope)
            except (*EXPECTED_ERRORS, MarshmallowError, KeyError, TypeError, AttributeError,
                    ValueError) as exc:
                # the event is not what the contract says: retrying cannot fix it
                log.warning("rejected event %s (%s): %s", envelope["id"], event_type, exc)
                outcome = "rejected"
            except Exception:
                self.store.release_event(key)
                time.sleep(RETRY_PAUSE_SECONDS)  # the store or a peer is down: don't spin
                raise
            self.store.finish_event(key, datetime.now(UTC), KEEP_PROCESSED)
            return outcome

        return event_handler(source_service, event_type, requeue_on_error=True,
                             expected_exceptions=_Busy)(handler)

    return decorate
