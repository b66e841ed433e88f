"""Registry rules without broker or store: milliseconds each."""
from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from services.common.caller import Caller
from services.common.errors import Conflict, Forbidden
from services.common.schemas import load
from services.contracts import registry as events
from services.registry import domain
from services.registry.schemas import RegisterVolunteerSchema
from services.registry.taxonomy import default_taxonomy

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
TAXONOMY = default_taxonomy()
ADMIN = Caller("u_admin", frozenset({"platform_admin"}))
VOLUNTEER = Caller("u_vol", frozenset({"volunteer"}))


def registration(**overrides: Any) -> dict[str, Any]:
    data = {"email": "Ünal@Example.ORG", "name": "Ünal", "availability": {"timezone": "UTC"},
            "skills": [{"name": "ANALYSE DE DONNÉES", "level": "expert"},
                       {"name": "data analysis"}, {"name": "Knitting"}],
            "languages": [{"code": "tr", "level": "native"}, {"code": "tr", "level": "basic"}],
            "location": {"country": "TR", "lat": 41.0082376, "lng": 28.9783589},
            "consent": {"terms_version": "1", "privacy_accepted": True}}
    data.update(overrides)
    return load(RegisterVolunteerSchema(), data)


def test_new_volunteer_normalises_and_derives_index_keys() -> None:
    doc, [event] = domain.new_volunteer("vol_1", registration(), VOLUNTEER, TAXONOMY, NOW)
    assert doc["email_norm"] == "ünal@example.org"
    assert doc["skill_ids"] == ["sk_data_analysis"]  # two spellings, one skill
    assert [s["skill_id"] for s in doc["skills"]] == ["sk_data_analysis", None]
    assert doc["skills"][0]["level"] == "expert"  # first mention wins
    assert doc["languages"] == [{"code": "tr", "level": "basic"}]
    assert doc["location"]["lat"] == 41.01 and doc["country"] == "TR"
    assert doc["user_id"] == "u_vol" and doc["version"] == 1
    assert doc["consent"]["accepted_at"] == NOW
    assert event.type == events.VOLUNTEER_REGISTERED
    events.VolunteerChanged().load(event.data)  # matches the published schema
    assert "Ünal" not in repr(event.data)


def test_merge_windows_joins_overlaps_per_day() -> None:
    merged = domain.merge_windows([
        {"day": "sat", "start": "09:00", "end": "10:00"},
        {"day": "mon", "start": "18:00", "end": "20:00"},
        {"day": "mon", "start": "17:00", "end": "18:00"},
        {"day": "mon", "start": "21:00", "end": "22:00"}])
    assert merged == [{"day": "mon", "start": "17:00", "end": "20:00"},
                      {"day": "mon", "start": "21:00", "end": "22:00"},
                      {"day": "sat", "start": "09:00", "end": "10:00"}]


def test_update_reports_public_changes_only_and_noop_is_empty() -> None:
    doc, _ = domain.new_volunteer("vol_1", registration(), VOLUNTEER, TAXONOMY, NOW)
    change = domain.update_volunteer(doc, {"name": "Ü.", "mode": "both",
                                           "location": {"country": "TR"}}, TAXONOMY, NOW)
    [event] = change.events
    assert event.data["changed"] == ["location", "mode"]
    assert event.data["volunteer"]["version"] == 2
    assert change.set["name"] == "Ü."
    assert domain.update_volunteer(doc, {"mode": "remote"}, TAXONOMY, NOW).events == []


def test_status_and_erasure_rules() -> None:
    doc, _ = domain.new_volunteer("vol_1", registration(), VOLUNTEER, TAXONOMY, NOW)
    paused = domain.set_status(doc, "paused", "holiday", NOW)
    assert paused.events[0].type == events.VOLUNTEER_PAUSED
    assert domain.set_status(doc, "active", None, NOW).events == []
    tombstone, [erased] = domain.erase_volunteer(doc, NOW)
    assert set(tombstone) == {"_id", "status", "version", "created_at", "updated_at",
                              "erased_at"}
    assert erased.data["volunteer_id"] == "vol_1"
    with pytest.raises(Conflict):
        domain.update_volunteer(tombstone, {"mode": "both"}, TAXONOMY, NOW)


def test_vetting_in_the_past_is_refused() -> None:
    doc, _ = domain.new_volunteer("vol_1", registration(), VOLUNTEER, TAXONOMY, NOW)
    with pytest.raises(Conflict):
        domain.set_vetting(doc, "criminal_record", "cleared", date(2020, 1, 1), ADMIN, NOW)
    change = domain.set_vetting(doc, "criminal_record", "cleared", date(2027, 1, 1), ADMIN,
                                NOW)
    snapshot = change.events[0].data["volunteer"]
    assert snapshot["vetting"] == {"criminal_record": {"state": "cleared",
                                                       "valid_until": "2027-01-01"}}


def test_ownership() -> None:
    doc, _ = domain.new_volunteer("vol_1", registration(), VOLUNTEER, TAXONOMY, NOW)
    domain.require_self_or_admin(VOLUNTEER, doc)
    domain.require_self_or_admin(ADMIN, doc)
    with pytest.raises(Forbidden):
        domain.require_self_or_admin(Caller("u_else", frozenset({"volunteer"})), doc)
    domain.require_can_read(Caller("u_c", frozenset({"coordinator"})), doc)


def test_organisation_transitions_and_members() -> None:
    owner = Caller("u_owner", frozenset({"coordinator"}))
    org, [registered] = domain.new_organisation(
        "org_1", {"name": "Sanad", "kind": "ngo", "country": "LB",
                  "contact_email": "A@B.org"}, owner, NOW)
    assert org["status"] == "pending" and registered.type == events.ORGANISATION_REGISTERED
    with pytest.raises(Forbidden):
        domain.decide_organisation(org, "verified", None, owner, NOW)
    verified = domain.decide_organisation(org, "verified", None, ADMIN, NOW)
    assert verified.events[0].type == events.ORGANISATION_VERIFIED
    assert domain.decide_organisation({**org, "status": "verified"}, "verified", None, ADMIN,
                                      NOW).events == []
    with pytest.raises(Conflict):
        domain.set_member(org, "u_owner", None, NOW)  # last owner
    added = domain.set_member(org, "u_2", "coordinator", NOW)
    assert added.set["member_ids"] == ["u_owner", "u_2"]
    with pytest.raises(Forbidden):
        domain.require_org_role(org, Caller("u_2", frozenset({"coordinator"})), ("owner",))


def test_beneficiary_keeps_the_alias_out_of_events() -> None:
    org = {"_id": "org_1", "status": "verified",
           "members": [{"user_id": "u_c", "role": "coordinator"}]}
    doc, [event] = domain.new_beneficiary(
        "ben_1", org, {"display_name": "Abu Samir", "country": "LB", "needs": ["tutoring"],
                       "consent_recorded": True}, Caller("u_c"), NOW)
    assert doc["display_name"] == "Abu Samir" and "consent_recorded" not in doc
    assert "Abu Samir" not in repr(event.data)
    with pytest.raises(Conflict):
        domain.new_beneficiary("ben_2", {**org, "status": "pending"}, {}, Caller("u_c"), NOW)


def test_csv_row_formats() -> None:
    payload, errors = domain.csv_row_to_registration({
        "email": " a@b.org ", "name": "أ", "languages": "ar:native; en",
        "skills": "Data analysis:advanced; ترجمة", "availability": "Monday 17:00-20:00",
        "hours_per_week": "3", "country": "lb", "region": "Akkar", "timezone": "Asia/Beirut",
    }, "2026-01")
    assert errors == {}
    assert payload["languages"] == [{"code": "ar", "level": "native"},
                                    {"code": "en", "level": "conversational"}]
    assert payload["skills"] == [{"name": "Data analysis", "level": "advanced"},
                                 {"name": "ترجمة"}]
    assert payload["availability"]["windows"] == [{"day": "mon", "start": "17:00",
                                                   "end": "20:00"}]
    assert payload["location"] == {"country": "lb", "region": "Akkar"}
    loaded = load(RegisterVolunteerSchema(), payload)
    assert loaded["location"]["country"] == "LB"
    _, errors = domain.csv_row_to_registration(
        {"email": "x", "hours_per_week": "many", "availability": "whenever", "colour": "r"},
        "1")
    assert set(errors) == {"_columns", "hours_per_week", "availability"}
