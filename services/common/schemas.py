"""Marshmallow foundations for every payload that crosses a service boundary.

`StrictSchema` refuses unknown fields; `load()` first refuses any key that could become
a MongoDB operator or path (`$…`, dotted, NUL), oversized payloads and absurd nesting,
before a field is read, and turns marshmallow's errors into the RPC `ValidationError`
with field messages. Every RPC validates through `load()`.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from marshmallow import RAISE, Schema, fields, validate
from marshmallow import ValidationError as MarshmallowError

from services.common.errors import ValidationError

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_DEPTH = 8

# Control characters (C0 but tab and newline, DEL, C1), line and paragraph separators and
# the BOM break logs, CSV exports and terminals; bidi embeddings and overrides (U+202A-E)
# can make `admin` show in place of another name. The marks LRM/RLM/ALM and the isolates
# (U+2066-9) stay: legitimate Arabic and mixed-direction text uses them.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\u202a-\u202e]")
# A one-line field (a name, a title, a region) also refuses tab and newline.
_LINE_BREAK = re.compile("[\t\n]")
# 64-bit signed: what BSON stores as a number; anything beyond is refused, not converted.
MAX_INT = 2**63 - 1
MAX_LIST_ITEMS = 5000


def _check_value(value: Any, path: str, errors: dict[str, list[str]]) -> None:
    """Numbers and strings that would cost a lot, or fail, once a field converts them."""
    where = path or "_schema"
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_INT - 1 <= value <= MAX_INT:
            errors[where] = ["Number out of range (64-bit signed integers at most)."]
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            errors[where] = ["Not a finite number."]
    elif isinstance(value, Decimal):
        # judged by its exponent: int(Decimal("1e999999")) would take seconds
        if not value.is_finite() or value.adjusted() > 18:
            errors[where] = ["Number out of range (64-bit signed integers at most)."]
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            errors[where] = ["Not valid text (a lone surrogate)."]


def _check_keys(value: Any, path: str, depth: int, errors: dict[str, list[str]]) -> None:
    if depth > MAX_DEPTH:
        errors[path or "_schema"] = [f"Nested deeper than {MAX_DEPTH} levels."]
        return
    if isinstance(value, list | tuple) and len(value) > MAX_LIST_ITEMS:
        # before walking or sizing it: a million empty rows is cheap to send
        errors[path or "_schema"] = [f"More than {MAX_LIST_ITEMS} items."]
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                errors[where] = ["Keys must be strings."]
            elif key.startswith("$") or "." in key or "\x00" in key:
                errors[where] = ["Keys may not start with '$' or contain '.' or NUL."]
            else:
                _check_keys(item, where, depth + 1, errors)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_keys(item, f"{path}.{index}" if path else str(index), depth + 1, errors)
    else:
        _check_value(value, path, errors)


class StrictSchema(Schema):
    """Base schema: unknown fields are errors; load it with `load()`, which guards the
    raw input first (up to `max_bytes`)."""

    max_bytes = MAX_PAYLOAD_BYTES

    class Meta:
        unknown = RAISE


def guard_raw_input(data: Any, max_bytes: int) -> None:
    """Refuse oversized input and keys that could become operators or paths, once, on
    the whole payload, before any field is read (nested schemas need not repeat it)."""
    if data is None:
        return
    # keys, depth, list lengths and numbers first: cheap, and they make sizing safe
    errors: dict[str, list[str]] = {}
    _check_keys(data, "", 0, errors)
    if errors:
        raise ValidationError("Invalid input.", errors)
    try:
        size = len(json.dumps(data, ensure_ascii=False, default=str).encode())
    except (TypeError, ValueError) as exc:
        raise ValidationError("Invalid input.", {"_schema": [
            f"Payload is not JSON-serialisable: {exc}"]}) from None
    if size > max_bytes:
        raise ValidationError("Invalid input.", {"_schema": [
            f"Payload is {size} bytes; the limit is {max_bytes}."]})


def load(schema: Schema, data: Any, *, partial: bool = False) -> Any:
    """Validate `data`; raise the RPC ValidationError with per-field messages.

    `partial` makes top-level fields optional except `version`; nested objects that are
    given must still be whole (marshmallow's own partial would reach inside them).
    """
    if data is not None and not isinstance(data, Mapping) and not schema.many:
        raise ValidationError("Invalid input.", {"_schema": ["Expected an object."]})
    guard_raw_input(data, getattr(schema, "max_bytes", MAX_PAYLOAD_BYTES))
    if partial:
        partial_fields = tuple(name for name in schema.fields if name != "version")
        try:
            return schema.load(data, partial=partial_fields)
        except MarshmallowError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) \
                else {"_schema": exc.messages}
            raise ValidationError("Invalid input.", messages) from None
    if data is not None and not isinstance(data, Mapping) and not schema.many:
        raise ValidationError("Invalid input.", {"_schema": ["Expected an object."]})
    try:
        return schema.load(data, partial=partial)
    except MarshmallowError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationError("Invalid input.", messages) from None


class Text(fields.String):
    """User text in any script: NFC-normalised, trimmed, bounded, no control characters.

    One line unless `multiline` (descriptions, notes): there CRLF and CR become LF.
    """

    def __init__(self, *, max_length: int = 200, min_length: int = 0,
                 multiline: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length
        self.min_length = min_length
        self.multiline = multiline

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = unicodedata.normalize("NFC", super()._deserialize(value, attr, data, **kwargs))
        text = text.strip()
        if self.multiline:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        elif _LINE_BREAK.search(text):
            raise MarshmallowError("Must be one line (no tab or line break).")
        if _CONTROL.search(text):
            raise MarshmallowError(
                "Contains control characters, line separators or bidi overrides.")
        if len(text) > self.max_length:
            raise MarshmallowError(f"Longer than {self.max_length} characters.")
        if len(text) < self.min_length:
            raise MarshmallowError(
                "May not be empty." if self.min_length == 1
                else f"Shorter than {self.min_length} characters."
            )
        return text


class TimeZone(fields.String):
    """An IANA time zone name such as `Asia/Beirut`."""

    _known: frozenset[str] | None = None

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        name = super()._deserialize(value, attr, data, **kwargs).strip()
        if TimeZone._known is None:
            TimeZone._known = frozenset(available_timezones())
        if name not in TimeZone._known:
            raise MarshmallowError(f"Unknown IANA time zone: {name[:64]!r}.")
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise MarshmallowError(f"Unknown IANA time zone: {name[:64]!r}.") from exc
        return name


class LanguageCode(fields.String):
    """An ISO 639 language code (`ar`, `en`, `fr`, `apc`), stored lowercase."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        code = super()._deserialize(value, attr, data, **kwargs).strip().lower()
        if not re.fullmatch(r"[a-z]{2,3}", code):
            raise MarshmallowError("Expected an ISO 639 language code such as 'ar' or 'en'.")
        return code


class CountryCode(fields.String):
    """An ISO 3166-1 alpha-2 country code, stored uppercase."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        code = super()._deserialize(value, attr, data, **kwargs).strip().upper()
        if not re.fullmatch(r"[A-Z]{2}", code):
            raise MarshmallowError("Expected an ISO 3166-1 alpha-2 country code such as 'LB'.")
        return code


class Email(fields.Email):
    """An email address, trimmed; bounded per RFC 5321."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, str):
            value = value.strip()
        return super()._deserialize(value, attr, data, **kwargs)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=validate.Length(max=254), **kwargs)


class Page(StrictSchema):
    """Cursor pagination parameters shared by every list call."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.String(load_default=None, allow_none=True,
                           validate=validate.Regexp(r"^[a-z]{2,5}_[0-9a-f]{28}\Z"))


_PLAIN = frozenset({str, int, float, bool, type(None)})
# what storage keeps for idempotent requests (services/common/requests.py): never replied
_BOOKKEEPING = frozenset({"request_key", "request_keys"})


def to_wire(value: Any) -> Any:
    """A stored document as an RPC reply: `_id` becomes `id`, dates become ISO strings.

    Replies stay plain JSON so non-Python callers (the gateway, partners) read them as is.
    """
    # exact-type checks first: every field of every reply passes here, and an
    # isinstance against the Mapping ABC costs several times a type lookup
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {("id" if key == "_id" else key): to_wire(item) for key, item in value.items()
                if key not in _BOOKKEEPING}
    if kind is list or isinstance(value, tuple):
        return [to_wire(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value
