"""Registry RPC entrypoints: validate → domain → store (with outbox) → publish → reply."""
from __future__ import annotations

from typing import Any

from services.common import requests
from services.common.caller import COORDINATOR, PLATFORM_ADMIN, Caller
from services.common.change import Change
from services.common.consumer import consumes
from services.common.envelope import DomainEvent
from services.common.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ValidationError,
    stale_version,
)
from services.common.ids import check_id, new_id
from services.common.outbox import Outbox, OutboxRelay
from services.common.schemas import load, to_wire
from services.common.service import ServiceBase, rpc
from services.common.storage import Store
from services.registry import domain, schemas
from services.registry.store import BENEFICIARIES, ORGANISATIONS, VOLUNTEERS, RegistryStore
from services.registry.taxonomy import default_taxonomy

# Schemas are stateless once built; building one per call costs more than the call.
REGISTER = schemas.RegisterVolunteerSchema()
UPDATE = schemas.UpdateVolunteerSchema()
VETTING = schemas.VettingSchema()
STATUS = schemas.StatusChangeSchema()
SEARCH = schemas.VolunteerSearchSchema()
REGISTER_ORG = schemas.RegisterOrganisationSchema()
DECISION = schemas.OrganisationDecisionSchema()
MEMBER = schemas.MemberSchema()
SEARCH_ORG = schemas.OrganisationSearchSchema()
REGISTER_BEN = schemas.RegisterBeneficiarySchema()
PAGE = schemas.Page()
IMPORT = schemas.ImportBatchSchema()


class RegistryService(ServiceBase, OutboxRelay):
    name = "registry"

    store: RegistryStore = Store(RegistryStore)
    outbox = Outbox()
    caller: Caller

    # -- plumbing shared by the entrypoints -------------------------------------------
    def _insert(self, collection: str, doc: dict[str, Any], events: list[DomainEvent],
                what: str) -> dict[str, Any]:
        """Insert a new record with its events; what was stored (a redelivered request:
        what its first delivery stored)."""
        return self.outbox.commit(collection, doc["_id"], events, lambda envelopes: (
            self.store.insert(collection, doc, envelopes, what)))

    def _apply(self, collection: str, doc: dict[str, Any], version: int,
               change: Change, what: str) -> dict[str, Any]:
        """Write a domain change of `doc` made at the `version` the caller read."""
        if version != doc["version"]:
            if requests.replays(doc):
                return doc  # a redelivered request: its first delivery wrote this
            raise stale_version(what, version, doc["version"])
        if not change.writes:
            return doc
        return self.outbox.commit(collection, doc["_id"], change.events, lambda envelopes: (
            self.store.update(collection, doc["_id"], version, change.set, envelopes, what,
                              change.unset)))

    def _erase(self, collection: str, doc_id: str, erase: Any, what: str) -> dict[str, Any]:
        """Replace a record by its tombstone and announce the erasure."""
        raw = self.store.raw(collection, doc_id)
        if raw is None:
            raise NotFound(f"No such {what}.", {"id": [doc_id]})
        tombstone = self.outbox.erase(
            raw, collection, lambda record: erase(record, self.now()),
            lambda new_doc, envelopes, published: self.store.replace_keeping_pending(
                collection, raw, new_doc, envelopes, published))
        if tombstone is None:
            raise Conflict(f"The {what} changed meanwhile; try again.", {"version": []})
        return tombstone

    def _volunteer(self, volunteer_id: Any) -> dict[str, Any]:
        doc = self.store.get(VOLUNTEERS, check_id(volunteer_id, "vol", "volunteer_id"),
                             "volunteer")
        if doc["status"] == "erased":
            raise NotFound("No such volunteer.", {"id": [doc["_id"]]})
        return doc

    def _changed_volunteer(self, doc: dict[str, Any], version: int, change: Change
                           ) -> dict[str, Any]:
        return to_wire(domain.public_view(self._apply(VOLUNTEERS, doc, version, change,
                                                      "volunteer")))

    # -- volunteers --------------------------------------------------------------------
    @rpc
    def register_volunteer(self, data: Any) -> dict[str, Any]:
        payload = load(REGISTER, data)
        doc, events = domain.new_volunteer(new_id("vol"), payload, self.caller,
                                           default_taxonomy(), self.now())
        doc = self._insert(VOLUNTEERS, doc, events, "volunteer")
        return to_wire(domain.public_view(doc))

    @rpc
    def get_volunteer(self, volunteer_id: Any) -> dict[str, Any]:
        doc = self._volunteer(volunteer_id)
        domain.require_can_read(self.caller, doc)
        return to_wire(domain.public_view(doc))

    @rpc
    def update_volunteer(self, volunteer_id: Any, data: Any) -> dict[str, Any]:
        payload = load(UPDATE, data, partial=True)
        doc = self._volunteer(volunteer_id)
        domain.require_self_or_admin(self.caller, doc)
        change = domain.update_volunteer(doc, payload, default_taxonomy(), self.now())
        return self._changed_volunteer(doc, payload["version"], change)

    @rpc
    def pause_volunteer(self, volunteer_id: Any, data: Any) -> dict[str, Any]:
        return self._set_status(volunteer_id, data, "paused")

    @rpc
    def resume_volunteer(self, volunteer_id: Any, data: Any) -> dict[str, Any]:
        return self._set_status(volunteer_id, data, "active")

    def _set_status(self, volunteer_id: Any, data: Any, status: str) -> dict[str, Any]:
        payload = load(STATUS, data)
        doc = self._volunteer(volunteer_id)
        domain.require_self_or_admin(self.caller, doc)
        change = domain.set_status(doc, status, payload["reason"], self.now())
        return self._changed_volunteer(doc, payload["version"], change)

    @rpc
    def set_vetting(self, volunteer_id: Any, data: Any) -> dict[str, Any]:
        payload = load(VETTING, data)
        # safeguarding gates: decided by the platform's vetting team, never by oneself
        self.caller.require(PLATFORM_ADMIN)
        doc = self._volunteer(volunteer_id)
        if domain.is_self(self.caller, doc):
            raise Forbidden("Not allowed.", {"caller": ["Nobody vets themselves."]})
        change = domain.set_vetting(doc, payload["kind"], payload["state"],
                                    payload["valid_until"], self.caller, self.now())
        return self._changed_volunteer(doc, payload["version"], change)

    @rpc
    def search_volunteers(self, filters: Any = None) -> dict[str, Any]:
        query = load(SEARCH, filters or {})
        self.caller.require(COORDINATOR)
        skill_ids: list[str] = []
        skill_keys: list[str] = []
        if query["skill"]:
            found = default_taxonomy().normalise(query["skill"])
            if found["skill_id"]:
                skill_ids.append(found["skill_id"])
            skill_keys.append(found["key"])  # also finds free text never mapped
        modes = None
        if query["mode"] in ("remote", "onsite"):
            modes = [query["mode"], "both"]
        elif query["mode"] == "both":
            modes = ["both"]
        items, cursor = self.store.search_volunteers(
            status=None if query["status"] == "any" else query["status"],
            skill_ids=skill_ids, skill_keys=skill_keys, language=query["language"],
            country=query["country"], modes=modes, cursor=query["cursor"],
            limit=query["limit"])
        return {"items": to_wire(items), "next_cursor": cursor}

    @rpc
    def get_contact(self, volunteer_id: Any) -> dict[str, Any]:
        """Contact details for a service that must reach the volunteer (notify)."""
        self.caller.require(COORDINATOR)
        doc = self.store.contact(check_id(volunteer_id, "vol", "volunteer_id"))
        if doc is None:
            raise NotFound("No such volunteer.", {"id": [volunteer_id]})
        return to_wire(doc)

    @rpc
    def export_volunteer(self, volunteer_id: Any) -> dict[str, Any]:
        doc = self._volunteer(volunteer_id)
        domain.require_self_or_admin(self.caller, doc)
        return to_wire({**domain.export_volunteer(doc), "exported_at": self.now()})

    @rpc
    def erase_volunteer(self, volunteer_id: Any) -> dict[str, Any]:
        doc = self._volunteer(volunteer_id)
        domain.require_self_or_admin(self.caller, doc)
        tombstone = self._erase(VOLUNTEERS, doc["_id"], domain.erase_volunteer, "volunteer")
        return to_wire({"volunteer_id": doc["_id"], "status": "erased",
                        "erased_at": tombstone["erased_at"]})

    @rpc
    def import_volunteers(self, batch: Any) -> dict[str, Any]:
        """One batch of CSV rows; the per-row report says created, updated or rejected."""
        self.caller.require(COORDINATOR)  # before reading up to 4 MB of rows
        payload = load(IMPORT, batch)
        report = [self._import_row(payload["first_row"] + n, row, payload["terms_version"])
                  for n, row in enumerate(payload["rows"])]
        return {"rows": report}

    def _import_row(self, line: int, row: dict[str, Any], terms: str) -> dict[str, Any]:
        data, errors = domain.csv_row_to_registration(row, terms)
        if errors:
            return {"row": line, "outcome": "rejected", "errors": errors}
        try:
            payload = load(REGISTER, data)
            payload["source"] = "import"
            existing = self.store.volunteer_by_email(domain.email_norm(payload["email"]))
            if existing is None:
                doc, events = domain.new_volunteer(new_id("vol"), payload, self.caller,
                                                   default_taxonomy(), self.now())
                doc = self._insert(VOLUNTEERS, doc, events, "volunteer")
                return {"row": line, "outcome": "created", "volunteer_id": doc["_id"]}
            if existing.get("source") != "import":
                # a self-registered volunteer's profile is theirs to change
                return {"row": line, "outcome": "rejected",
                        "errors": {"email": ["Already registered by the volunteer."]}}
            # the volunteer's own consent record stands; blank cells change nothing
            changes = domain.csv_changes(row, payload, existing)
            change = domain.update_volunteer(existing, changes, default_taxonomy(),
                                             self.now())
            self._apply(VOLUNTEERS, existing, existing["version"], change, "volunteer")
            outcome = "updated" if change.set else "unchanged"
            return {"row": line, "outcome": outcome, "volunteer_id": existing["_id"]}
        except (ValidationError, Conflict) as exc:
            return {"row": line, "outcome": "rejected", "errors": exc.details}

    @consumes("tasks", "sanad.assignment.hours_verified.v1")
    def on_hours_verified(self, event: dict[str, Any]) -> None:
        data = event["data"]  # checked against the tasks contract
        inc = domain.credit_hours(data.get("hours"), data.get("skills_practised") or [])
        self.store.credit(data["volunteer_id"], data.get("credit_id") or event["id"], inc)

    @consumes("tasks", "sanad.assignment.feedback_left.v1")
    def on_feedback_left(self, event: dict[str, Any]) -> None:
        data = event["data"]  # checked against the tasks contract
        entry = {"task_id": data["task_id"], "assignment_id": data["assignment_id"],
                 "by": data["by"], "rating": data["rating"], "at": event.get("time")}
        self.store.add_feedback(data["volunteer_id"], f"{data['assignment_id']}:{data['by']}",
                                entry)

    # -- skills --------------------------------------------------------------------------
    @rpc
    def list_skills(self, lang: str = "en") -> list[dict[str, Any]]:
        return default_taxonomy().as_list(lang if lang in ("ar", "en", "fr") else "en")

    @rpc
    def normalise_skill(self, text: Any) -> dict[str, Any]:
        if not isinstance(text, str) or not 0 < len(text) <= 100:
            raise ValidationError("Invalid input.", {"text": ["1 to 100 characters."]})
        return default_taxonomy().normalise(text)

    # -- organisations -------------------------------------------------------------------
    def _organisation(self, org_id: Any) -> dict[str, Any]:
        return self.store.get(ORGANISATIONS, check_id(org_id, "org", "organisation_id"),
                              "organisation")

    @rpc
    def register_organisation(self, data: Any) -> dict[str, Any]:
        payload = load(REGISTER_ORG, data)
        doc, events = domain.new_organisation(new_id("org"), payload, self.caller,
                                              self.now())
        doc = self._insert(ORGANISATIONS, doc, events, "organisation")
        return to_wire(domain.public_view(doc))

    @rpc
    def get_organisation(self, org_id: Any) -> dict[str, Any]:
        """Members and admins see everything; anyone else the public profile."""
        doc = self._organisation(org_id)
        if self.caller.is_admin or self.caller.user_id in doc.get("member_ids", []):
            return to_wire(domain.public_view(doc))
        return to_wire(domain.organisation_public(doc))

    @rpc
    def verify_organisation(self, org_id: Any, data: Any) -> dict[str, Any]:
        return self._decide(org_id, data, "verified")

    @rpc
    def suspend_organisation(self, org_id: Any, data: Any) -> dict[str, Any]:
        return self._decide(org_id, data, "suspended")

    def _decide(self, org_id: Any, data: Any, status: str) -> dict[str, Any]:
        payload = load(DECISION, data)
        doc = self._organisation(org_id)
        change = domain.decide_organisation(doc, status, payload["reason"], self.caller,
                                            self.now())
        after = self._apply(ORGANISATIONS, doc, payload["version"], change, "organisation")
        return to_wire(domain.public_view(after))

    @rpc
    def set_member(self, org_id: Any, data: Any) -> dict[str, Any]:
        payload = load(MEMBER, data)
        return self._change_member(org_id, payload["user_id"], payload["role"])

    @rpc
    def remove_member(self, org_id: Any, user_id: Any) -> dict[str, Any]:
        payload = load(MEMBER, {"user_id": user_id})
        return self._change_member(org_id, payload["user_id"], None)

    def _change_member(self, org_id: Any, user_id: str, role: str | None) -> dict[str, Any]:
        doc = self._organisation(org_id)
        domain.require_org_role(doc, self.caller, ("owner",))
        change = domain.set_member(doc, user_id, role, self.now())
        return to_wire(domain.public_view(
            self._apply(ORGANISATIONS, doc, doc["version"], change, "organisation")))

    @rpc
    def search_organisations(self, filters: Any = None) -> dict[str, Any]:
        query = load(SEARCH_ORG, filters or {})
        member = None
        if not self.caller.is_admin:
            member = self.caller.require_user()  # others see their own organisations
        items, cursor = self.store.search_organisations(
            status=query["status"], country=query["country"], member=member,
            cursor=query["cursor"], limit=query["limit"])
        return {"items": to_wire([domain.public_view(d) for d in items]),
                "next_cursor": cursor}

    # -- beneficiaries -------------------------------------------------------------------
    @rpc
    def register_beneficiary(self, org_id: Any, data: Any) -> dict[str, Any]:
        payload = load(REGISTER_BEN, data)
        org = self._organisation(org_id)
        doc, events = domain.new_beneficiary(new_id("ben"), org, payload, self.caller,
                                             self.now())
        doc = self._insert(BENEFICIARIES, doc, events, "beneficiary")
        return to_wire(doc)

    def _beneficiary(self, ben_id: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        doc = self.store.get(BENEFICIARIES, check_id(ben_id, "ben", "beneficiary_id"),
                             "beneficiary")
        if doc["status"] == "erased":
            raise NotFound("No such beneficiary.", {"id": [doc["_id"]]})
        org = self.store.get(ORGANISATIONS, doc["organisation_id"], "organisation")
        domain.require_org_role(org, self.caller, ("owner", "coordinator", "viewer"))
        return doc, org

    @rpc
    def get_beneficiary(self, ben_id: Any) -> dict[str, Any]:
        return to_wire(self._beneficiary(ben_id)[0])

    @rpc
    def list_beneficiaries(self, org_id: Any, page: Any = None) -> dict[str, Any]:
        query = load(PAGE, page or {})
        org = self._organisation(org_id)
        domain.require_org_role(org, self.caller, ("owner", "coordinator", "viewer"))
        items, cursor = self.store.beneficiaries_of(org["_id"], query["cursor"],
                                                    query["limit"])
        return {"items": to_wire(items), "next_cursor": cursor}

    @rpc
    def erase_beneficiary(self, ben_id: Any) -> dict[str, Any]:
        doc, org = self._beneficiary(ben_id)
        domain.require_org_role(org, self.caller, ("owner", "coordinator"))
        self._erase(BENEFICIARIES, doc["_id"], domain.erase_beneficiary, "beneficiary")
        return {"beneficiary_id": doc["_id"], "status": "erased"}



# What `python -m services.common.run registry` starts (scripts/run-service.sh); naming
# it avoids nameko also trying to run the imported OutboxRelay mixin.
Service = RegistryService
