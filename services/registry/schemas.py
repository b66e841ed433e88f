"""Payloads the registry accepts and returns over RPC.

Every input goes through one of these before anything is read or written; the gateway
reuses them to build its OpenAPI document.
"""
from __future__ import annotations

import re
from typing import Any

from marshmallow import ValidationError as MarshmallowError
from marshmallow import fields, validate, validates_schema

from services.common.schemas import (
    CountryCode,
    Email,
    LanguageCode,
    Page,
    StrictSchema,
    Text,
    TimeZone,
)

LANGUAGE_LEVELS = ("basic", "conversational", "fluent", "native")
SKILL_LEVELS = ("beginner", "intermediate", "advanced", "expert")
MODES = ("remote", "onsite", "both")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
STATUSES = ("active", "paused")
VETTING_KINDS = ("criminal_record", "child_safeguarding", "identity", "reference")
VETTING_STATES = ("not_required", "pending", "cleared", "rejected", "expired")
ORG_KINDS = ("ngo", "community_group", "public_body", "social_enterprise", "other")
ORG_ROLES = ("owner", "coordinator", "viewer")
CONTACT_CHANNELS = ("sms", "phone", "whatsapp", "none")
NEED_CATEGORIES = ("digital_literacy", "tutoring", "translation", "psychosocial_support",
                   "data", "tech", "communication", "management", "creative", "professional")
_HHMM = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d\Z|^24:00\Z")
ID = {"validate": validate.Regexp(r"^[a-z]{2,5}_[0-9a-f]{28}\Z", error="Not a valid id.")}
PHONE = validate.Regexp(r"^\+[1-9]\d{6,14}\Z",
                        error="Expected an E.164 number such as +9611234567.")


class LanguageSchema(StrictSchema):
    code = LanguageCode(required=True)
    level = fields.String(required=True, validate=validate.OneOf(LANGUAGE_LEVELS))


class SkillInputSchema(StrictSchema):
    name = Text(required=True, min_length=1, max_length=100)
    level = fields.String(load_default="intermediate", validate=validate.OneOf(SKILL_LEVELS))


class WindowSchema(StrictSchema):
    day = fields.String(required=True, validate=validate.OneOf(DAYS))
    start = fields.String(required=True, validate=validate.Regexp(_HHMM, error="Use HH:MM."))
    end = fields.String(required=True, validate=validate.Regexp(_HHMM, error="Use HH:MM."))

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        if data["end"] <= data["start"]:
            raise MarshmallowError("Must end after it starts.", "end")


class AvailabilitySchema(StrictSchema):
    timezone = TimeZone(required=True)
    windows = fields.List(fields.Nested(WindowSchema), load_default=list,
                          validate=validate.Length(max=28))
    hours_per_week = fields.Integer(load_default=2, validate=validate.Range(min=0, max=80))


class LocationSchema(StrictSchema):
    country = CountryCode(required=True)
    region = Text(load_default=None, allow_none=True, max_length=100)
    lat = fields.Float(load_default=None, allow_none=True,
                       validate=validate.Range(min=-90, max=90))
    lng = fields.Float(load_default=None, allow_none=True,
                       validate=validate.Range(min=-180, max=180))

    @validates_schema
    def _pair(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("lat") is None) != (data.get("lng") is None):
            raise MarshmallowError("Give both lat and lng, or neither.", "lat")


class ConsentSchema(StrictSchema):
    terms_version = Text(required=True, min_length=1, max_length=32)
    privacy_accepted = fields.Boolean(required=True)
    contact_ok = fields.Boolean(load_default=False)

    @validates_schema
    def _accepted(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("privacy_accepted") is not True:
            raise MarshmallowError("Registration needs the privacy notice accepted.",
                                   "privacy_accepted")


class VolunteerProfileFields(StrictSchema):
    """Fields a volunteer controls; shared by registration, update and import."""

    name = Text(required=True, min_length=1, max_length=100)
    phone = fields.String(load_default=None, allow_none=True, validate=PHONE)
    preferred_language = LanguageCode(load_default="en")
    languages = fields.List(fields.Nested(LanguageSchema), load_default=list,
                            validate=validate.Length(max=12))
    skills = fields.List(fields.Nested(SkillInputSchema), load_default=list,
                         validate=validate.Length(max=40))
    skills_to_learn = fields.List(Text(min_length=1, max_length=100), load_default=list,
                                  validate=validate.Length(max=20))
    availability = fields.Nested(AvailabilitySchema, required=True)
    mode = fields.String(load_default="remote", validate=validate.OneOf(MODES))
    location = fields.Nested(LocationSchema, load_default=None, allow_none=True)
    about = Text(load_default="", max_length=2000, multiline=True)

    @validates_schema
    def _onsite_needs_place(self, data: dict[str, Any], partial: bool = False,
                            **_: Any) -> None:
        if data.get("mode") in ("onsite", "both") and "location" in data \
                and not data.get("location"):
            raise MarshmallowError("On-site volunteering needs a location.", "location")


class RegisterVolunteerSchema(VolunteerProfileFields):
    email = Email(required=True)
    consent = fields.Nested(ConsentSchema, required=True)


class UpdateVolunteerSchema(VolunteerProfileFields):
    """Partial update: load with partial=True; `version` is always required."""

    email = Email()
    consent = fields.Nested(ConsentSchema)
    version = fields.Integer(required=True, validate=validate.Range(min=1))


class VettingSchema(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(VETTING_KINDS))
    state = fields.String(required=True, validate=validate.OneOf(VETTING_STATES))
    valid_until = fields.Date(load_default=None, allow_none=True)
    version = fields.Integer(required=True, validate=validate.Range(min=1))


class StatusChangeSchema(StrictSchema):
    version = fields.Integer(required=True, validate=validate.Range(min=1))
    reason = Text(load_default=None, allow_none=True, max_length=300, multiline=True)


class VolunteerSearchSchema(Page):
    skill = Text(load_default=None, allow_none=True, max_length=100)
    language = LanguageCode(load_default=None, allow_none=True)
    country = CountryCode(load_default=None, allow_none=True)
    mode = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(MODES))
    status = fields.String(load_default="active",
                           validate=validate.OneOf((*STATUSES, "any")))


class RegisterOrganisationSchema(StrictSchema):
    name = Text(required=True, min_length=2, max_length=150)
    kind = fields.String(load_default="ngo", validate=validate.OneOf(ORG_KINDS))
    country = CountryCode(required=True)
    contact_email = Email(required=True)
    website = fields.Url(load_default=None, allow_none=True, schemes={"https", "http"},
                         validate=validate.Length(max=300))
    description = Text(load_default="", max_length=2000, multiline=True)


class OrganisationDecisionSchema(StrictSchema):
    version = fields.Integer(required=True, validate=validate.Range(min=1))
    reason = Text(load_default=None, allow_none=True, max_length=300, multiline=True)


class MemberSchema(StrictSchema):
    user_id = fields.String(required=True, validate=validate.Regexp(
        r"^[A-Za-z0-9_@:.\-|]{1,128}\Z", error="Not a valid user id."))
    role = fields.String(load_default="coordinator", validate=validate.OneOf(ORG_ROLES))


class OrganisationSearchSchema(Page):
    status = fields.String(load_default=None, allow_none=True,
                           validate=validate.OneOf(("pending", "verified", "suspended")))
    country = CountryCode(load_default=None, allow_none=True)


class RegisterBeneficiarySchema(StrictSchema):
    """Minimal personal data: an alias the organisation knows the person by."""

    display_name = Text(required=True, min_length=1, max_length=60)
    preferred_language = LanguageCode(load_default="ar")
    country = CountryCode(required=True)
    region = Text(load_default=None, allow_none=True, max_length=100)
    needs = fields.List(fields.String(validate=validate.OneOf(NEED_CATEGORIES)),
                        load_default=list, validate=validate.Length(max=10))
    contact_channel = fields.String(load_default="none",
                                    validate=validate.OneOf(CONTACT_CHANNELS))
    phone = fields.String(load_default=None, allow_none=True, validate=PHONE)
    consent_recorded = fields.Boolean(required=True)

    @validates_schema
    def _consent_and_phone(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("consent_recorded") is not True:
            raise MarshmallowError("The person's consent must be recorded first.",
                                   "consent_recorded")
        if data.get("contact_channel") not in (None, "none") and not data.get("phone"):
            raise MarshmallowError("A phone number is needed for this channel.", "phone")


class ImportBatchSchema(StrictSchema):
    max_bytes = 4 * 1024 * 1024
    rows = fields.List(fields.Dict(keys=fields.String(), values=fields.Raw()),
                       required=True, validate=validate.Length(min=1, max=1000))
    first_row = fields.Integer(load_default=2,  # a spreadsheet line
                               validate=validate.Range(min=1, max=10**9))
    terms_version = Text(required=True, min_length=1, max_length=32)
