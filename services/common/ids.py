"""Identifiers: strings (portable across stores), sortable by creation time."""
from __future__ import annotations

import re
import secrets
import time

from services.common.errors import ValidationError


def new_id(prefix: str) -> str:
    """`<prefix>_<48-bit ms timestamp><64 random bits>`, all lowercase hex.

    Time-ordered ids make `_id` a natural cursor for pagination and keep inserts
    append-mostly on the primary index.
    """
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


ID_PATTERN = re.compile(r"^[a-z]{2,5}_[0-9a-f]{28}\Z")


def check_id(value: object, prefix: str, field: str = "id") -> str:
    """An id argument as given by a caller: the right shape and kind, or ValidationError."""
    if not isinstance(value, str) or not ID_PATTERN.match(value) \
            or not value.startswith(prefix + "_"):
        raise ValidationError("Invalid input.", {field: [f"Not a valid {prefix} id."]})
    return value
