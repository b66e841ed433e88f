"""The registry's collections, indexes and queries: the only module that speaks pymongo.

Array fields are queried with `$in`/`$all` only (plain equality on an array field
silently matches nothing on nx-27017, see docs/store-compatibility.md); uniqueness
uses normalised copies with sparse unique indexes, so tombstones (which drop the key)
never collide.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pymongo.errors import DuplicateKeyError

from services.common.errors import Conflict, NotFound, stale_version
from services.common.storage import (
    HIDDEN,
    BaseStore,
    Contention,
    Index,
    asc,
    new_with_outbox,
    visible,
)

VOLUNTEERS = "volunteers"
ORGANISATIONS = "organisations"
BENEFICIARIES = "beneficiaries"

SUMMARY = {"name": 1, "status": 1, "skills": 1, "languages": 1, "mode": 1, "location": 1,
           "availability": 1, "vetting": 1, "verified_hours": 1, "version": 1}


class RegistryStore(BaseStore):
    OUTBOX_COLLECTIONS = (VOLUNTEERS, ORGANISATIONS, BENEFICIARIES)
    INDEXES = (
        Index(VOLUNTEERS, asc("email_norm"), unique=True, sparse=True),
        Index(VOLUNTEERS, asc("user_id"), unique=True, sparse=True),
        Index(VOLUNTEERS, asc("status")),
        Index(VOLUNTEERS, asc("skill_ids")),
        Index(VOLUNTEERS, asc("skill_keys")),
        Index(VOLUNTEERS, asc("language_codes")),
        Index(VOLUNTEERS, asc("country")),
        Index(ORGANISATIONS, asc("status")),
        Index(ORGANISATIONS, asc("country")),
        Index(ORGANISATIONS, asc("member_ids")),
        Index(BENEFICIARIES, asc("organisation_id")),
    )

    # -- generic single-document writes, each with its events -------------------------
    def insert(self, collection: str, doc: dict[str, Any],
               envelopes: Iterable[Mapping[str, Any]], what: str) -> dict[str, Any]:
        try:
            return visible(self.insert_new(collection, new_with_outbox(doc, envelopes)))
        except DuplicateKeyError as exc:
            raise Conflict(f"This {what} is already registered.",
                           _duplicate_fields(exc)) from None

    def get(self, collection: str, doc_id: str, what: str) -> dict[str, Any]:
        # no exclusion projection: stripping in Python is cheaper on nx-27017
        doc = visible(self.db[collection].find_one({"_id": doc_id}))
        if doc is None:
            raise NotFound(f"No such {what}.", {"id": [doc_id]})
        return doc

    def raw(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The stored document with its pending events (for erasure only)."""
        return self.db[collection].find_one({"_id": doc_id})

    def update(self, collection: str, doc_id: str, version: int, set_: Mapping[str, Any],
               envelopes: Iterable[Mapping[str, Any]], what: str,
               unset: Iterable[str] = ()) -> dict[str, Any]:
        """Compare-and-set on `version`: Conflict if someone else wrote first."""
        try:
            after = self.compare_and_replace(collection, doc_id, version, set_, envelopes,
                                             unset)
        except DuplicateKeyError as exc:
            raise Conflict(f"This {what} clashes with another.", _duplicate_fields(exc)) from None
        if after is None:
            raise stale_version(what, version, self.get(collection, doc_id, what)["version"])
        return after

    def _once(self, volunteer_id: str, keys_field: str, key: str, limit: int,
              fields: Iterable[str], change: Any) -> bool:
        """Apply `change(doc)` to a live volunteer once per `key` (kept in `keys_field`).

        Read-modify-write under the version, like every other change of a volunteer: a
        `$inc`/`$push` beside a whole-document replace (compare_and_replace) could be
        overwritten by it, and nx-27017 stores pushed sub-documents as JSON strings.
        """
        projection = {name: 1 for name in ("version", "status", keys_field, *fields)}
        for _ in range(5):  # a concurrent profile update wins the CAS: read again
            doc = self.db[VOLUNTEERS].find_one({"_id": volunteer_id}, projection)
            if doc is None or doc["status"] not in ("active", "paused") \
                    or key in doc.get(keys_field, []):
                return False
            changes = {**change(doc), keys_field: [*doc.get(keys_field, []), key][-limit:]}
            if self.compare_and_replace(VOLUNTEERS, volunteer_id, doc["version"], changes,
                                        []) is not None:
                return True
        raise Contention(f"volunteer {volunteer_id} kept changing")

    def add_feedback(self, volunteer_id: str, key: str, entry: Mapping[str, Any]) -> bool:
        """Ratings the volunteer received or gave, once per assignment and side."""
        return self._once(volunteer_id, "feedback_keys", key, 200, ("feedback",),
                          lambda doc: {"feedback": [*doc.get("feedback", []),
                                                    dict(entry)][-200:]})

    def credit(self, volunteer_id: str, credit_id: str, inc: Mapping[str, float]) -> bool:
        """Add verified hours once per credit id, even if the event is handled twice."""
        def add(doc: dict[str, Any]) -> dict[str, Any]:
            totals = {"verified_hours": float(doc.get("verified_hours") or 0),
                      **{f"hours_by_skill.{skill}": float(hours) for skill, hours
                         in (doc.get("hours_by_skill") or {}).items()}}
            return {path: totals.get(path, 0.0) + amount for path, amount in inc.items()}

        return self._once(volunteer_id, "credited", credit_id, 2000,
                          ("verified_hours", "hours_by_skill"), add)

    # -- volunteers -------------------------------------------------------------------
    def volunteer_by_email(self, email_norm: str) -> dict[str, Any] | None:
        return self.db[VOLUNTEERS].find_one({"email_norm": email_norm}, HIDDEN)

    def contact(self, volunteer_id: str) -> dict[str, Any] | None:
        return self.db[VOLUNTEERS].find_one(
            {"_id": volunteer_id, "status": {"$in": ["active", "paused"]}},
            {"name": 1, "email": 1, "phone": 1, "preferred_language": 1, "consent": 1})

    def search_volunteers(self, *, status: str | None, skill_ids: list[str],
                          skill_keys: list[str], language: str | None, country: str | None,
                          modes: list[str] | None, cursor: str | None, limit: int
                          ) -> tuple[list[dict[str, Any]], str | None]:
        query: dict[str, Any] = {}
        query["status"] = {"$in": [status] if status else ["active", "paused"]}
        if skill_ids or skill_keys:
            either = []
            if skill_ids:
                either.append({"skill_ids": {"$in": skill_ids}})
            if skill_keys:
                either.append({"skill_keys": {"$in": skill_keys}})
            query["$or"] = either
        if language:
            query["language_codes"] = {"$in": [language]}
        if country:
            query["country"] = country
        if modes:
            query["mode"] = {"$in": modes}
        return self.page(VOLUNTEERS, query, SUMMARY, cursor, limit)

    # -- organisations and beneficiaries --------------------------------------------------
    def search_organisations(self, *, status: str | None, country: str | None,
                             member: str | None, cursor: str | None, limit: int
                             ) -> tuple[list[dict[str, Any]], str | None]:
        query: dict[str, Any] = {}
        if status:
            query["status"] = status
        if country:
            query["country"] = country
        if member:
            query["member_ids"] = {"$in": [member]}
        return self.page(ORGANISATIONS, query, HIDDEN, cursor, limit)

    def beneficiaries_of(self, org_id: str, cursor: str | None, limit: int
                         ) -> tuple[list[dict[str, Any]], str | None]:
        query = {"organisation_id": org_id, "status": "active"}
        return self.page(BENEFICIARIES, query, HIDDEN, cursor, limit)


def _duplicate_fields(exc: DuplicateKeyError) -> dict[str, list[str]]:
    text = str(exc)
    if "email" in text:
        return {"email": ["Already registered."]}
    if "user_id" in text:
        return {"user_id": ["This account already has a volunteer profile."]}
    return {"_schema": ["Already exists."]}
