"""Payloads the tasks service accepts over RPC; the gateway reuses them for OpenAPI."""
from __future__ import annotations

from typing import Any

from marshmallow import ValidationError as MarshmallowError
from marshmallow import fields, validate, validates_schema

from services.common.schemas import CountryCode, LanguageCode, Page, StrictSchema, Text, TimeZone
from services.tasks.domain import VETTING_KINDS

URGENCIES = ("critical", "high", "normal", "low")
MODES = ("remote", "onsite", "hybrid")
SKILL_LEVELS = ("beginner", "intermediate", "advanced", "expert")
CATEGORIES = ("digital_literacy", "tutoring", "translation", "psychosocial_support", "data",
              "tech", "communication", "management", "creative", "professional")
SCHEDULE_KINDS = ("one_off", "deadline", "recurring")
TASK_STATUSES = ("draft", "open", "filled", "in_progress", "completed", "cancelled", "expired")
SKILL_ID = validate.Regexp(r"^sk_[a-z0-9_]{1,60}\Z", error="Not a taxonomy skill id.")
ID = validate.Regexp(r"^[a-z]{2,5}_[0-9a-f]{28}\Z", error="Not a valid id.")


class RequiredSkillSchema(StrictSchema):
    skill_id = fields.String(required=True, validate=SKILL_ID)
    min_level = fields.String(load_default="beginner", validate=validate.OneOf(SKILL_LEVELS))


class LocationSchema(StrictSchema):
    country = CountryCode(required=True)
    region = Text(load_default=None, allow_none=True, max_length=100)
    lat = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-90, 90))
    lng = fields.Float(load_default=None, allow_none=True, validate=validate.Range(-180, 180))


class ScheduleSchema(StrictSchema):
    """One of: a one-off window, a deadline, or an RFC 5545 RRULE with a duration.

    Times are local wall-clock times in the task's time zone (`2026-12-01T17:00`), so a
    weekly session stays at 17:00 across daylight-saving changes.
    """

    kind = fields.String(required=True, validate=validate.OneOf(SCHEDULE_KINDS))
    start = fields.NaiveDateTime(load_default=None)
    end = fields.NaiveDateTime(load_default=None)
    due = fields.NaiveDateTime(load_default=None)
    rrule = fields.String(load_default=None, validate=validate.Length(max=300))
    duration_minutes = fields.Integer(load_default=None,
                                      validate=validate.Range(min=5, max=24 * 60))

    @validates_schema
    def _shape(self, data: dict[str, Any], **_: Any) -> None:
        kind = data.get("kind")
        need = {"one_off": ("start", "end"), "deadline": ("due",),
                "recurring": ("start", "rrule", "duration_minutes")}.get(kind, ())
        missing = {name: [f"Required for a {kind} schedule."] for name in need
                   if data.get(name) is None}
        if missing:
            raise MarshmallowError(missing)
        if kind == "one_off" and data["end"] <= data["start"]:
            raise MarshmallowError("Must end after it starts.", "end")


class TaskFields(StrictSchema):
    title = Text(required=True, min_length=3, max_length=150)
    description = Text(load_default="", max_length=5000, multiline=True)
    category = fields.String(required=True, validate=validate.OneOf(CATEGORIES))
    urgency = fields.String(load_default="normal", validate=validate.OneOf(URGENCIES))
    mode = fields.String(load_default="remote", validate=validate.OneOf(MODES))
    location = fields.Nested(LocationSchema, load_default=None, allow_none=True)
    radius_km = fields.Integer(load_default=None, allow_none=True,
                               validate=validate.Range(min=1, max=500))
    timezone = TimeZone(required=True)
    schedule = fields.Nested(ScheduleSchema, required=True)
    required_skills = fields.List(fields.Nested(RequiredSkillSchema), load_default=list,
                                  validate=validate.Length(max=10))
    languages = fields.List(LanguageCode(), load_default=list,
                            validate=validate.Length(max=6))
    skills_practised = fields.List(fields.String(validate=SKILL_ID), load_default=list,
                                   validate=validate.Length(max=10))
    estimated_hours = fields.Float(load_default=1.0, validate=validate.Range(min=0.25,
                                                                             max=1000))
    vetting_required = fields.List(fields.String(validate=validate.OneOf(VETTING_KINDS)),
                                   load_default=list, validate=validate.Length(max=4))
    beneficiary_id = fields.String(load_default=None, allow_none=True, validate=ID)
    slots = fields.Integer(load_default=1, validate=validate.Range(min=1, max=500))

    @validates_schema
    def _place(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("mode") in ("onsite", "hybrid") and "mode" in data \
                and not data.get("location"):
            raise MarshmallowError("On-site and hybrid tasks need a location.", "location")


class CreateTaskSchema(TaskFields):
    organisation_id = fields.String(required=True, validate=ID)


class UpdateTaskSchema(TaskFields):
    """Load with partial=True; `version` is always required."""

    version = fields.Integer(required=True, validate=validate.Range(min=1))


class VersionSchema(StrictSchema):
    version = fields.Integer(required=True, validate=validate.Range(min=1))
    reason = Text(load_default=None, allow_none=True, max_length=300, multiline=True)


class TaskSearchSchema(Page):
    status = fields.String(load_default="open", validate=validate.OneOf(TASK_STATUSES))
    urgency = fields.String(load_default=None, allow_none=True,
                            validate=validate.OneOf(URGENCIES))
    skill_id = fields.String(load_default=None, allow_none=True, validate=SKILL_ID)
    language = LanguageCode(load_default=None, allow_none=True)
    mode = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(MODES))
    organisation_id = fields.String(load_default=None, allow_none=True, validate=ID)
    starts_after = fields.AwareDateTime(load_default=None, allow_none=True)
    starts_before = fields.AwareDateTime(load_default=None, allow_none=True)


class OfferSchema(StrictSchema):
    volunteer_id = fields.String(required=True, validate=ID)
    note = Text(load_default=None, allow_none=True, max_length=500, multiline=True)


class HoursSchema(StrictSchema):
    hours = fields.Float(required=True, validate=validate.Range(min=0.25, max=24))
    session_id = fields.String(load_default=None, allow_none=True,
                               validate=validate.Regexp(r"^s[0-9]{1,4}\Z"))
    note = Text(load_default=None, allow_none=True, max_length=500, multiline=True)


class HoursDecisionSchema(StrictSchema):
    entry_id = fields.String(required=True, validate=validate.Regexp(r"^h[0-9]{1,4}\Z"))
    reason = Text(load_default=None, allow_none=True, max_length=300, multiline=True)


class FeedbackSchema(StrictSchema):
    rating = fields.Integer(required=True, validate=validate.Range(min=1, max=5))
    comment = Text(load_default="", max_length=1000, multiline=True)
