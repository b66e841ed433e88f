"""Events the registry publishes (source `registry`, CloudEvents envelope, JSON data).

These type names and `data` schemas are a published contract (docs/asyncapi.yaml):
add optional fields freely; anything breaking gets a new `.vN` type. Volunteer events
carry a full snapshot with its `version`, so a consumer keeps the newest one and can
ignore replays and reordering. No event carries a name, email or phone number.
"""
from __future__ import annotations

from marshmallow import Schema, fields

from services.contracts.base import ID, VERSION, Data

SOURCE_SERVICE = "registry"

VOLUNTEER_REGISTERED = "sanad.volunteer.registered.v1"
VOLUNTEER_UPDATED = "sanad.volunteer.updated.v1"
VOLUNTEER_PAUSED = "sanad.volunteer.paused.v1"
VOLUNTEER_RESUMED = "sanad.volunteer.resumed.v1"
VOLUNTEER_ERASED = "sanad.volunteer.erased.v1"
ORGANISATION_REGISTERED = "sanad.organisation.registered.v1"
ORGANISATION_VERIFIED = "sanad.organisation.verified.v1"
ORGANISATION_SUSPENDED = "sanad.organisation.suspended.v1"
BENEFICIARY_REGISTERED = "sanad.beneficiary.registered.v1"
BENEFICIARY_ERASED = "sanad.beneficiary.erased.v1"

# Changed-field names that are contact data: reported as changed only to the registry.
PRIVATE_FIELDS = frozenset({"name", "email", "email_norm", "phone"})


class SkillRef(Data):
    skill_id = fields.String(allow_none=True, required=True)
    label = fields.String(required=True)
    key = fields.String(required=True)
    level = fields.String()


class VolunteerSnapshot(Data):
    volunteer_id = fields.String(required=True, validate=ID)
    status = fields.String(required=True)
    version = fields.Integer(required=True, validate=VERSION)
    preferred_language = fields.String(allow_none=True)
    languages = fields.List(fields.Dict(), required=True)
    skills = fields.List(fields.Nested(SkillRef), required=True)
    skills_to_learn = fields.List(fields.Nested(SkillRef), required=True)
    availability = fields.Dict(allow_none=True)
    mode = fields.String(allow_none=True)
    location = fields.Dict(allow_none=True)
    about = fields.String()
    vetting = fields.Dict(required=True)
    taxonomy_version = fields.String(allow_none=True)


class VolunteerChanged(Data):
    """registered, updated, paused, resumed."""

    volunteer = fields.Nested(VolunteerSnapshot, required=True)
    changed = fields.List(fields.String())


class VolunteerErased(Data):
    volunteer_id = fields.String(required=True, validate=ID)
    erased_at = fields.String(required=True)


class OrganisationSnapshot(Data):
    organisation_id = fields.String(required=True, validate=ID)
    name = fields.String(required=True)
    kind = fields.String(required=True)
    country = fields.String(required=True)
    status = fields.String(required=True)
    version = fields.Integer(required=True, validate=VERSION)


class OrganisationChanged(Data):
    organisation = fields.Nested(OrganisationSnapshot, required=True)
    reason = fields.String(allow_none=True)


class BeneficiaryRegistered(Data):
    beneficiary_id = fields.String(required=True, validate=ID)
    organisation_id = fields.String(required=True, validate=ID)
    preferred_language = fields.String()
    country = fields.String()
    region = fields.String(allow_none=True)
    needs = fields.List(fields.String())
    contact_channel = fields.String()


class BeneficiaryErased(Data):
    beneficiary_id = fields.String(required=True, validate=ID)
    organisation_id = fields.String(required=True, validate=ID)
    erased_at = fields.String(required=True)


PAYLOADS: dict[str, type[Schema]] = {
    VOLUNTEER_REGISTERED: VolunteerChanged,
    VOLUNTEER_UPDATED: VolunteerChanged,
    VOLUNTEER_PAUSED: VolunteerChanged,
    VOLUNTEER_RESUMED: VolunteerChanged,
    VOLUNTEER_ERASED: VolunteerErased,
    ORGANISATION_REGISTERED: OrganisationChanged,
    ORGANISATION_VERIFIED: OrganisationChanged,
    ORGANISATION_SUSPENDED: OrganisationChanged,
    BENEFICIARY_REGISTERED: BeneficiaryRegistered,
    BENEFICIARY_ERASED: BeneficiaryErased,
}
