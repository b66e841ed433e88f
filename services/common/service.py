"""What every Sanad service class inherits: metrics, health, call-id logging, caller."""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nameko.rpc import rpc as nameko_rpc

from services.common.caller import CallerProvider
from services.common.errors import EXPECTED_ERRORS
from services.common.logs import CallIdLogging
from services.common.metrics import Metrics


class ServiceBase:
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


def rpc(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """nameko's `@rpc` with Sanad's caller errors marked as expected.

    Expected errors are logged as warnings, not as crashes, so alerts on error logs mean
    something; the caller still receives the exception.
    """
    options.setdefault("expected_exceptions", EXPECTED_ERRORS)
    decorator = nameko_rpc(**options)
    return decorator if fn is None else decorator(fn)
