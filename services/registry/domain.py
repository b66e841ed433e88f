"""Registry rules: pure functions over plain dicts. No broker, no store, no clock.

Each change returns the fields to write and the events it causes; `service.py` hands
both to the store in one atomic write (the outbox). Events never carry contact data
(name, email, phone): other services learn what they match and plan on, and ask the
registry for contact details when they must reach someone.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from services.common.caller import COORDINATOR, VOLUNTEER, Caller
from services.common.change import Change
from services.common.envelope import DomainEvent
from services.common.errors import Conflict, Forbidden, ValidationError
from services.contracts import registry as events
from services.registry.taxonomy import Taxonomy, match_key


def iso(moment: datetime) -> str:
    """Times in event data are written like the envelope's: UTC with a Z."""
    return moment.isoformat().replace("+00:00", "Z")


COARSE_DECIMALS = 2  # ~1 km: enough to match on distance, too coarse to find a home


# -- volunteers ------------------------------------------------------------------------
def email_norm(email: str) -> str:
    """The uniqueness key: case-insensitive across scripts (casefold, not lower)."""
    return email.strip().casefold()


def is_self(caller: Caller, volunteer: Mapping[str, Any]) -> bool:
    return bool(caller.user_id) and caller.user_id in (volunteer.get("user_id"),
                                                       volunteer.get("_id"))


def require_self_or_admin(caller: Caller, volunteer: Mapping[str, Any]) -> None:
    if not (caller.is_admin or is_self(caller, volunteer)):
        raise Forbidden("Not allowed.", {"caller": ["Only the volunteer or an admin may."]})


def require_can_read(caller: Caller, volunteer: Mapping[str, Any]) -> None:
    if not (caller.has_any(COORDINATOR) or is_self(caller, volunteer)):
        raise Forbidden("Not allowed.",
                        {"caller": ["Only the volunteer, a coordinator or an admin may."]})


def normalise_skills(skills: Iterable[Mapping[str, Any]], taxonomy: Taxonomy
                     ) -> list[dict[str, Any]]:
    """Map free text to taxonomy ids; unknown skills stay as text. One entry per skill."""
    out: dict[str, dict[str, Any]] = {}
    for skill in skills:
        found = taxonomy.normalise(skill["name"])
        entry = {"skill_id": found["skill_id"], "label": found["label"], "key": found["key"],
                 "text": skill["name"]}
        if "level" in skill:
            entry["level"] = skill["level"]
        out.setdefault(found["skill_id"] or f"text:{found['key']}", entry)
    return list(out.values())


def merge_windows(windows: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    """Sort and merge overlapping or touching windows of the same day."""
    order = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
    merged: list[dict[str, str]] = []
    for window in sorted(windows, key=lambda w: (order[w["day"]], w["start"], w["end"])):
        last = merged[-1] if merged else None
        if last and last["day"] == window["day"] and window["start"] <= last["end"]:
            last["end"] = max(last["end"], window["end"])
        else:
            merged.append({"day": window["day"], "start": window["start"],
                           "end": window["end"]})
    return merged


def coarse_location(location: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not location:
        return None
    coarse = dict(location)
    for key in ("lat", "lng"):
        if coarse.get(key) is not None:
            coarse[key] = round(float(coarse[key]), COARSE_DECIMALS)
    return coarse


def profile_fields(data: Mapping[str, Any], taxonomy: Taxonomy) -> dict[str, Any]:
    """Stored form of the profile fields present in `data`, with derived index keys."""
    out: dict[str, Any] = {}
    for name in ("name", "phone", "preferred_language", "mode", "about"):
        if name in data:
            out[name] = data[name]
    if "email" in data:
        out["email"] = data["email"]
        out["email_norm"] = email_norm(data["email"])
    if "languages" in data:
        by_code = {lang["code"]: lang for lang in data["languages"]}  # last level wins
        out["languages"] = [dict(lang) for lang in by_code.values()]
        out["language_codes"] = sorted(by_code)
    if "skills" in data:
        skills = normalise_skills(data["skills"], taxonomy)
        out["skills"] = skills
        out["skill_ids"] = sorted({s["skill_id"] for s in skills if s["skill_id"]})
        out["skill_keys"] = sorted({s["key"] for s in skills})
    if "skills_to_learn" in data:
        out["skills_to_learn"] = normalise_skills(
            ({"name": name} for name in data["skills_to_learn"]), taxonomy)
    if "availability" in data:
        availability = dict(data["availability"])
        availability["windows"] = merge_windows(availability.get("windows", []))
        out["availability"] = availability
    if "location" in data:
        out["location"] = coarse_location(data["location"])
        out["country"] = out["location"]["country"] if out["location"] else None
    return out


def volunteer_snapshot(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The event view of a volunteer: what matching and tasks need, no contact data."""
    return {
        "volunteer_id": doc["_id"],
        "status": doc["status"],
        "version": doc["version"],
        "preferred_language": doc.get("preferred_language"),
        "languages": doc.get("languages", []),
        "skills": [{k: s.get(k) for k in ("skill_id", "label", "key", "level")}
                   for s in doc.get("skills", [])],
        "skills_to_learn": [{k: s.get(k) for k in ("skill_id", "label", "key")}
                            for s in doc.get("skills_to_learn", [])],
        "availability": doc.get("availability"),
        "mode": doc.get("mode"),
        "location": doc.get("location"),
        "about": doc.get("about", ""),
        "vetting": {kind: {"state": v["state"], "valid_until": v.get("valid_until")}
                    for kind, v in (doc.get("vetting") or {}).items()},
        "taxonomy_version": doc.get("taxonomy_version"),
    }


def new_volunteer(volunteer_id: str, data: Mapping[str, Any], caller: Caller,
                  taxonomy: Taxonomy, now: datetime) -> tuple[dict[str, Any], list[DomainEvent]]:
    """A registered volunteer document and its `registered` event."""
    consent = dict(data["consent"])
    consent.update(accepted_at=now, updated_at=now)
    doc: dict[str, Any] = {
        "_id": volunteer_id,
        "status": "active",
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "consent": consent,
        "vetting": {},
        "verified_hours": 0.0,
        "hours_by_skill": {},
        "taxonomy_version": taxonomy.version,
        "source": data.get("source", "self"),
        "language_codes": [], "skills": [], "skill_ids": [], "skill_keys": [],
        "skills_to_learn": [], "location": None, "country": None,
        **profile_fields(data, taxonomy),
    }
    if caller.user_id and VOLUNTEER in caller.roles and doc["source"] == "self":
        doc["user_id"] = caller.user_id  # the account that registered itself
    return doc, [DomainEvent(events.VOLUNTEER_REGISTERED, volunteer_id,
                             {"volunteer": volunteer_snapshot(doc)})]


def _require_live(doc: Mapping[str, Any]) -> None:
    if doc["status"] == "erased":
        raise Conflict("This volunteer was erased.", {"status": ["erased"]})


def update_volunteer(doc: Mapping[str, Any], data: Mapping[str, Any], taxonomy: Taxonomy,
                     now: datetime) -> Change:
    _require_live(doc)
    changes = profile_fields(data, taxonomy)
    if "consent" in data:
        consent = {**doc.get("consent", {}), **data["consent"], "updated_at": now}
        changes["consent"] = consent
    changed = sorted(k for k in changes if doc.get(k) != changes[k])
    if not changed:
        return Change()
    if "skills" in changes:
        changes["taxonomy_version"] = taxonomy.version
    changes["updated_at"] = now
    after = {**doc, **changes, "version": doc["version"] + 1}
    visible_changes = [k for k in changed
                       if k not in events.PRIVATE_FIELDS and k not in INTERNAL_FIELDS]
    return Change(set=changes, events=[DomainEvent(
        events.VOLUNTEER_UPDATED, doc["_id"],
        {"volunteer": volunteer_snapshot(after), "changed": visible_changes})])


def set_status(doc: Mapping[str, Any], status: str, reason: str | None,
               now: datetime) -> Change:
    """Pause or resume; the same status twice is a no-op, not an error."""
    _require_live(doc)
    if doc["status"] == status:
        return Change()
    event_type = events.VOLUNTEER_PAUSED if status == "paused" else events.VOLUNTEER_RESUMED
    after = {**doc, "status": status, "version": doc["version"] + 1}
    return Change(set={"status": status, "status_reason": reason, "updated_at": now},
                  # the reason is the volunteer's own words (exams, illness): kept here,
                  # not broadcast
                  events=[DomainEvent(event_type, doc["_id"],
                                      {"volunteer": volunteer_snapshot(after)})])


def set_vetting(doc: Mapping[str, Any], kind: str, state: str, valid_until: date | None,
                caller: Caller, now: datetime) -> Change:
    _require_live(doc)
    if state == "cleared" and valid_until is not None and valid_until < now.date():
        raise Conflict("A clearance cannot be valid until a past date.",
                       {"valid_until": ["Must not be in the past."]})
    entry = {"state": state,
             "valid_until": valid_until.isoformat() if valid_until else None,
             "decided_at": now, "decided_by": caller.user_id}
    vetting = {**(doc.get("vetting") or {}), kind: entry}
    after = {**doc, "vetting": vetting, "version": doc["version"] + 1}
    return Change(set={f"vetting.{kind}": entry, "updated_at": now},
                  events=[DomainEvent(events.VOLUNTEER_UPDATED, doc["_id"],
                                      {"volunteer": volunteer_snapshot(after),
                                       "changed": ["vetting"]})])


def erase_volunteer(doc: Mapping[str, Any], now: datetime) -> tuple[dict[str, Any],
                                                                     list[DomainEvent]]:
    """The tombstone that replaces a volunteer: no personal data left, only the id.

    The id stays so late events about this volunteer are recognised and dropped, and
    so the `erased` event can tell other services whose data to purge.
    """
    tombstone = {"_id": doc["_id"], "status": "erased", "version": doc["version"] + 1,
                 "created_at": doc.get("created_at"), "updated_at": now, "erased_at": now}
    return tombstone, [DomainEvent(events.VOLUNTEER_ERASED, doc["_id"],
                                   {"volunteer_id": doc["_id"], "erased_at": iso(now)})]


def export_volunteer(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Everything held about a volunteer, for a subject-access request."""
    held = {k: v for k, v in doc.items()
            if k not in ("_id", "outbox", "outbox_n", "outbox_lease")}
    return {"volunteer_id": doc["_id"], "data": held}


SKILL_ID = re.compile(r"^sk_[a-z0-9_]{1,60}\Z")


def credit_hours(hours: Any, skill_ids: Iterable[Any]) -> dict[str, float]:
    """Increments for verified hours: total and per skill practised.

    Skill ids become field names, so anything not shaped like a taxonomy id is refused
    (the event comes from another service, but it is still input).
    """
    if not isinstance(hours, int | float) or not 0 < hours <= 24:
        raise ValidationError("Invalid hours.", {"hours": ["Between 0 and 24."]})
    inc: dict[str, float] = {"verified_hours": float(hours)}
    for skill_id in skill_ids:
        if not isinstance(skill_id, str) or not SKILL_ID.match(skill_id):
            raise ValidationError("Invalid skill id.", {"skills_practised": [str(skill_id)[:80]]})
        inc[f"hours_by_skill.{skill_id}"] = float(hours)
    return inc


# -- organisations ---------------------------------------------------------------------
def organisation_snapshot(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"organisation_id": doc["_id"], "name": doc["name"], "kind": doc["kind"],
            "country": doc["country"], "status": doc["status"], "version": doc["version"]}


def new_organisation(org_id: str, data: Mapping[str, Any], caller: Caller, now: datetime
                     ) -> tuple[dict[str, Any], list[DomainEvent]]:
    owner = caller.require_user()
    doc = {"_id": org_id, **data, "name_key": match_key(data["name"]),
           "contact_email_norm": email_norm(data["contact_email"]),
           "status": "pending", "version": 1, "created_at": now, "updated_at": now,
           "members": [{"user_id": owner, "role": "owner", "added_at": now}],
           "member_ids": [owner]}
    return doc, [DomainEvent(events.ORGANISATION_REGISTERED, org_id,
                             {"organisation": organisation_snapshot(doc)})]


def organisation_public(doc: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("_id", "name", "kind", "country", "website", "description", "status")
    return {k: doc.get(k) for k in keys}


ORG_TRANSITIONS = {"verified": {"pending", "suspended"}, "suspended": {"pending", "verified"}}


def decide_organisation(doc: Mapping[str, Any], status: str, reason: str | None,
                        caller: Caller, now: datetime) -> Change:
    if not caller.is_admin:
        raise Forbidden("Not allowed.", {"roles": ["Only a platform admin may."]})
    if doc["status"] == status:
        return Change()
    if doc["status"] not in ORG_TRANSITIONS[status]:
        raise Conflict(f"Cannot go from {doc['status']} to {status}.",
                       {"status": [doc["status"]]})
    event_type = (events.ORGANISATION_VERIFIED if status == "verified"
                  else events.ORGANISATION_SUSPENDED)
    after = {**doc, "status": status, "version": doc["version"] + 1}
    return Change(
        set={"status": status, "status_reason": reason, "updated_at": now,
             "decided_by": caller.user_id},
        events=[DomainEvent(event_type, doc["_id"],
                            {"organisation": organisation_snapshot(after), "reason": reason})])


def require_org_role(doc: Mapping[str, Any], caller: Caller, roles: Iterable[str]) -> None:
    """Members act for their organisation; caller.org_ids alone is not trusted for it."""
    if caller.is_admin:
        return
    allowed = set(roles)
    for member in doc.get("members", []):
        if member["user_id"] == caller.user_id and member["role"] in allowed:
            return
    raise Forbidden("Not allowed.",
                    {"caller": [f"Requires the {' or '.join(sorted(allowed))} role here."]})


def set_member(doc: Mapping[str, Any], user_id: str, role: str | None, now: datetime
               ) -> Change:
    """Add, change (role) or remove (role None) a member; keep at least one owner."""
    current = {m["user_id"]: m["role"] for m in doc.get("members", [])}
    if current.get(user_id) == role:
        return Change()  # already so (or, for a removal, not a member)
    members = [m for m in doc.get("members", []) if m["user_id"] != user_id]
    if role is not None:
        members.append({"user_id": user_id, "role": role, "added_at": now})
    if not any(m["role"] == "owner" for m in members):
        raise Conflict("An organisation keeps at least one owner.", {"role": ["last owner"]})
    return Change(set={"members": members, "member_ids": [m["user_id"] for m in members],
                       "updated_at": now})


# -- beneficiaries ---------------------------------------------------------------------
def new_beneficiary(ben_id: str, org: Mapping[str, Any], data: Mapping[str, Any],
                    caller: Caller, now: datetime) -> tuple[dict[str, Any], list[DomainEvent]]:
    if org["status"] != "verified":
        raise Conflict("Only a verified organisation registers beneficiaries.",
                       {"organisation_id": [f"status is {org['status']}"]})
    require_org_role(org, caller, ("owner", "coordinator"))
    doc = {"_id": ben_id, "organisation_id": org["_id"], **data, "status": "active",
           "version": 1, "created_at": now, "updated_at": now,
           "registered_by": caller.user_id, "consent_recorded_at": now}
    doc.pop("consent_recorded", None)
    public = {k: doc.get(k) for k in ("organisation_id", "preferred_language", "country",
                                      "region", "needs", "contact_channel")}
    return doc, [DomainEvent(events.BENEFICIARY_REGISTERED, ben_id,
                             {"beneficiary_id": ben_id, **public})]


def erase_beneficiary(doc: Mapping[str, Any], now: datetime
                      ) -> tuple[dict[str, Any], list[DomainEvent]]:
    tombstone = {"_id": doc["_id"], "organisation_id": doc["organisation_id"],
                 "status": "erased", "version": doc["version"] + 1,
                 "created_at": doc.get("created_at"), "updated_at": now, "erased_at": now}
    return tombstone, [DomainEvent(events.BENEFICIARY_ERASED, doc["_id"],
                                   {"beneficiary_id": doc["_id"],
                                    "organisation_id": doc["organisation_id"],
                                    "erased_at": iso(now)})]


# -- CSV import ------------------------------------------------------------------------
CSV_COLUMNS = ("email", "name", "phone", "preferred_language", "languages", "skills",
               "skills_to_learn", "timezone", "availability", "hours_per_week", "mode",
               "country", "region", "about")


# Which registration fields each CSV column feeds: an update from a row only touches
# fields whose columns have a value, so blank cells never wipe what a volunteer entered.
CSV_FIELDS = {"email": "email", "name": "name", "phone": "phone",
              "preferred_language": "preferred_language", "languages": "languages",
              "skills": "skills", "skills_to_learn": "skills_to_learn",
              "timezone": "availability", "availability": "availability",
              "hours_per_week": "availability", "mode": "mode", "country": "location",
              "region": "location", "about": "about"}


def csv_changes(row: Mapping[str, Any], payload: Mapping[str, Any],
                existing: Mapping[str, Any]) -> dict[str, Any]:
    """The update a row makes to a volunteer already registered: given cells only."""
    given = {k for k, v in row.items() if k in CSV_FIELDS and str(v or "").strip()}
    changes = {k: v for k, v in payload.items()
               if k in {CSV_FIELDS[c] for c in given} - {"email"}}
    if "availability" in changes:
        merged = dict(existing.get("availability") or {})
        for column, key in (("timezone", "timezone"), ("availability", "windows"),
                            ("hours_per_week", "hours_per_week")):
            if column in given:
                merged[key] = payload["availability"][key]
        changes["availability"] = merged
    return changes


def _split(cell: str) -> list[str]:
    return [part.strip() for part in cell.split(";") if part.strip()]


def csv_row_to_registration(row: Mapping[str, Any], terms_version: str
                            ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Turn one CSV row (as NGOs keep them) into a registration payload.

    Formats: languages `ar:native; en:fluent`; skills `Data analysis:advanced; ترجمة`;
    availability `mon 17:00-20:00; sat 09:00-12:00`. Returns (payload, errors); the
    payload is validated by the registration schema afterwards.
    """
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(row) - set(CSV_COLUMNS))
    if unknown:
        errors["_columns"] = [f"Unknown column(s): {', '.join(map(str, unknown))}."]
    cell = {k: (str(row.get(k) or "")).strip() for k in CSV_COLUMNS}
    payload: dict[str, Any] = {
        "email": cell["email"], "name": cell["name"],
        "consent": {"terms_version": terms_version, "privacy_accepted": True},
        "availability": {"timezone": cell["timezone"] or "UTC", "windows": []},
        "mode": cell["mode"] or "remote", "about": cell["about"],
    }
    for name in ("phone", "preferred_language"):
        if cell[name]:
            payload[name] = cell[name]
    payload["languages"] = []
    for part in _split(cell["languages"]):
        code, _, level = part.partition(":")
        payload["languages"].append({"code": code.strip(),
                                     "level": level.strip() or "conversational"})
    payload["skills"] = []
    for part in _split(cell["skills"]):
        name, _, level = part.rpartition(":") if ":" in part else (part, "", "")
        skill = {"name": name.strip()}
        if level.strip():
            skill["level"] = level.strip()
        payload["skills"].append(skill)
    payload["skills_to_learn"] = _split(cell["skills_to_learn"])
    for part in _split(cell["availability"]):
        day, _, span = part.partition(" ")
        start, _, end = span.strip().partition("-")
        if not (day and start and end):
            errors.setdefault("availability", []).append(
                f"{part!r} is not like 'mon 17:00-20:00'.")
            continue
        payload["availability"]["windows"].append(
            {"day": day.strip().lower()[:3], "start": start.strip(), "end": end.strip()})
    if cell["hours_per_week"]:
        try:
            payload["availability"]["hours_per_week"] = int(cell["hours_per_week"])
        except ValueError:
            errors["hours_per_week"] = ["Not a whole number."]
    if cell["country"]:
        payload["location"] = {"country": cell["country"]}
        if cell["region"]:
            payload["location"]["region"] = cell["region"]
    return payload, errors


# Derived keys kept for indexes and uniqueness; callers see the fields they came from.
INTERNAL_FIELDS = ("email_norm", "language_codes", "skill_ids", "skill_keys", "country",
                   "name_key", "contact_email_norm", "member_ids", "credited",
                   "feedback_keys")


def public_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in INTERNAL_FIELDS}
