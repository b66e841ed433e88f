"""Idempotent event consumers.

`@consumes("registry", "sanad.volunteer.erased.v1")` is nameko's event handler plus:
the envelope is checked, an event already handled (same id, same handler) is skipped,
a poison event is logged and dropped instead of looping, and a transient failure (store
down) is retried after a pause. The service must have `self.store` (a BaseStore).

The processed mark is written after the handler succeeds: a crash in between means the
handler runs again, so handlers also keep their own writes idempotent (upserts keyed by
entity id, version guards).
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

log = logging.getLogger(__name__)

KEEP_PROCESSED = timedelta(days=7)  # longer than any redelivery or relay delay
RETRY_PAUSE_SECONDS = 1.0


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
            if self.store.already_processed(key, datetime.now(UTC)):
                return "duplicate"
            try:
                handle(self, envelope)
            except (*EXPECTED_ERRORS, MarshmallowError) as exc:
                log.warning("rejected event %s (%s): %s", envelope["id"], event_type, exc)
            except Exception:
                time.sleep(RETRY_PAUSE_SECONDS)  # the store or a peer is down: don't spin
                raise
            else:
                self.store.mark_processed(key, datetime.now(UTC), KEEP_PROCESSED)
                return "processed"
            self.store.mark_processed(key, datetime.now(UTC), KEEP_PROCESSED)
            return "rejected"

        return event_handler(source_service, event_type, requeue_on_error=True)(handler)

    return decorate
