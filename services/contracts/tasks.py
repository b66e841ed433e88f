"""Events the tasks service publishes (source `tasks`): a published contract.

Task events carry a task snapshot with its `version`; assignment events carry ids and
what changed. No personal data: volunteers appear by id only.
"""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from services.contracts.base import ID, VERSION, Data

SOURCE_SERVICE = "tasks"

TASK_PUBLISHED = "sanad.task.published.v1"
TASK_UPDATED = "sanad.task.updated.v1"
TASK_FILLED = "sanad.task.filled.v1"
TASK_REOPENED = "sanad.task.reopened.v1"
TASK_STARTED = "sanad.task.started.v1"
TASK_CANCELLED = "sanad.task.cancelled.v1"
TASK_COMPLETED = "sanad.task.completed.v1"
TASK_EXPIRED = "sanad.task.expired.v1"
ASSIGNMENT_OFFERED = "sanad.assignment.offered.v1"
ASSIGNMENT_APPLIED = "sanad.assignment.applied.v1"
ASSIGNMENT_WAITLISTED = "sanad.assignment.waitlisted.v1"
ASSIGNMENT_ACCEPTED = "sanad.assignment.accepted.v1"
ASSIGNMENT_DECLINED = "sanad.assignment.declined.v1"
ASSIGNMENT_WITHDRAWN = "sanad.assignment.withdrawn.v1"
ASSIGNMENT_EXPIRED = "sanad.assignment.expired.v1"
ASSIGNMENT_STARTED = "sanad.assignment.started.v1"
ASSIGNMENT_NO_SHOW = "sanad.assignment.no_show.v1"
ASSIGNMENT_COMPLETED = "sanad.assignment.completed.v1"
HOURS_SUBMITTED = "sanad.assignment.hours_submitted.v1"
HOURS_VERIFIED = "sanad.assignment.hours_verified.v1"
HOURS_REJECTED = "sanad.assignment.hours_rejected.v1"
FEEDBACK_LEFT = "sanad.assignment.feedback_left.v1"
CREDENTIAL_ISSUED = "sanad.credential.issued.v1"
CREDENTIAL_REVOKED = "sanad.credential.revoked.v1"


class TaskSnapshot(Data):
    task_id = fields.String(required=True, validate=ID)
    organisation_id = fields.String(required=True, validate=ID)
    title = fields.String(required=True)
    category = fields.String(required=True)
    urgency = fields.String(required=True)
    mode = fields.String(required=True)
    timezone = fields.String(required=True)
    required_skills = fields.List(fields.Dict(), required=True)
    languages = fields.List(fields.String(), required=True)
    skills_practised = fields.List(fields.String(), required=True)
    slots = fields.Integer(required=True)
    free = fields.Integer(required=True)
    status = fields.String(required=True)
    version = fields.Integer(required=True, validate=VERSION)
    sessions = fields.List(fields.Dict(), required=True)
    starts_at = fields.String(allow_none=True)
    ends_at = fields.String(required=True)


class TaskChanged(Data):
    """published, updated, cancelled, completed, expired."""

    task = fields.Nested(TaskSnapshot, required=True)
    changed = fields.List(fields.String())
    reason = fields.String(allow_none=True)


class TaskSlots(Data):
    """filled, reopened, started (in progress)."""

    task_id = fields.String(required=True, validate=ID)
    slots = fields.Integer()
    free = fields.Integer()


class AssignmentChanged(Data):
    assignment_id = fields.String(required=True, validate=ID)
    task_id = fields.String(required=True, validate=ID)
    volunteer_id = fields.String(required=True, validate=ID)
    organisation_id = fields.String(required=True, validate=ID)
    offer_expires_at = fields.String(allow_none=True)
    source = fields.String()
    reason = fields.String(allow_none=True)


class HoursChanged(AssignmentChanged):
    entry_id = fields.String(required=True)
    session_id = fields.String(allow_none=True)
    hours = fields.Float(validate=validate.Range(min=0, max=24))
    skills_practised = fields.List(fields.String())
    credit_id = fields.String()


class FeedbackLeft(AssignmentChanged):
    by = fields.String(required=True, validate=validate.OneOf(("volunteer", "organisation")))
    rating = fields.Integer(required=True, validate=validate.Range(min=1, max=5))


class CredentialChanged(Data):
    credential_id = fields.String(required=True)
    assignment_id = fields.String(required=True, validate=ID)
    task_id = fields.String(required=True, validate=ID)
    volunteer_id = fields.String(required=True, validate=ID)
    organisation_id = fields.String(required=True, validate=ID)
    hours = fields.Float()
    reason = fields.String(allow_none=True)


PAYLOADS: dict[str, type[Schema]] = {
    **{t: TaskChanged for t in (TASK_PUBLISHED, TASK_UPDATED, TASK_CANCELLED, TASK_COMPLETED,
                                 TASK_EXPIRED)},
    TASK_FILLED: TaskSlots, TASK_REOPENED: TaskSlots, TASK_STARTED: TaskSlots,
    **{t: AssignmentChanged for t in (ASSIGNMENT_OFFERED, ASSIGNMENT_APPLIED,
                                       ASSIGNMENT_WAITLISTED, ASSIGNMENT_ACCEPTED,
                                       ASSIGNMENT_DECLINED, ASSIGNMENT_WITHDRAWN,
                                       ASSIGNMENT_EXPIRED, ASSIGNMENT_STARTED,
                                       ASSIGNMENT_NO_SHOW, ASSIGNMENT_COMPLETED)},
    **{t: HoursChanged for t in (HOURS_SUBMITTED, HOURS_VERIFIED, HOURS_REJECTED)},
    FEEDBACK_LEFT: FeedbackLeft,
    CREDENTIAL_ISSUED: CredentialChanged,
    CREDENTIAL_REVOKED: CredentialChanged,
}
