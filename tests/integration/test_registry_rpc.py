"""Registry over real RPC: a real broker vhost, a real nx-27017, an in-process container."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from services.common.errors import Conflict, Forbidden, NotFound, ValidationError
from services.common.outbox import OutboxHandle
from services.registry.service import RegistryService
from services.registry.store import VOLUNTEERS
from tests.factories import volunteer
from tests.support import wait_for


def test_register_get_round_trip_normalises_and_publishes(system: Any, tap: Any) -> None:
    events = tap("registry")
    created = system.register_volunteer(volunteer())
    assert created["id"].startswith("vol_") and created["version"] == 1
    assert created["status"] == "active"
    fetched = system.get_volunteer(created["id"])
    assert fetched == created
    skills = {s["text"]: s for s in fetched["skills"]}
    assert skills["تحليل البيانات"]["skill_id"] == "sk_data_analysis"
    assert skills["Underwater basket weaving"]["skill_id"] is None  # kept, not dropped
    assert skills["Underwater basket weaving"]["label"] == "Underwater basket weaving"
    assert fetched["availability"]["windows"] == [{"day": "tue", "start": "17:00",
                                                   "end": "20:00"}]
    assert fetched["location"] == {"country": "LB", "region": "Tripoli", "lat": 34.44,
                                   "lng": 35.85}
    assert fetched["languages"][1] == {"code": "en", "level": "fluent"}
    assert "email_norm" not in fetched and "outbox" not in fetched

    [event] = events.wait(1, "sanad.volunteer.registered.v1")
    assert event["specversion"] == "1.0" and event["subject"] == created["id"]
    assert event["source"] == "/sanad/registry"
    snapshot = event["data"]["volunteer"]
    assert snapshot["volunteer_id"] == created["id"] and snapshot["version"] == 1
    flat = repr(event)
    for secret in ("Rana@Example.org", "rana@example.org", "رنا الخطيب", "+9613123456"):
        assert secret not in flat  # events carry no contact data


def test_duplicate_email_is_a_conflict_whatever_the_case(system: Any, db: Any) -> None:
    system.register_volunteer(volunteer("sami@example.org"))
    with pytest.raises(Conflict) as caught:
        system.register_volunteer(volunteer("  SAMI@example.ORG "))
    assert "email" in caught.value.details
    assert db("registry")[VOLUNTEERS].count_documents({}) == 1


def test_update_with_stale_version_conflicts_and_changes_nothing(system: Any, tap: Any) -> None:
    events = tap("registry")
    vol = system.register_volunteer(volunteer())
    updated = system.update_volunteer(vol["id"], {"version": 1, "mode": "both",
                                                  "location": {"country": "LB"}})
    assert updated["version"] == 2 and updated["mode"] == "both"
    with pytest.raises(Conflict) as caught:
        system.update_volunteer(vol["id"], {"version": 1, "about": "late writer"})
    assert "version" in caught.value.details
    assert system.get_volunteer(vol["id"])["about"] == vol["about"]
    [event] = events.wait(1, "sanad.volunteer.updated.v1")
    assert event["data"]["changed"] == ["location", "mode"]
    assert event["data"]["volunteer"]["version"] == 2


def test_pause_resume_and_vetting(system: Any, tap: Any, rpc: Any) -> None:
    events = tap("registry")
    vol = system.register_volunteer(volunteer())
    paused = system.pause_volunteer(vol["id"], {"version": 1, "reason": "exams"})
    assert paused["status"] == "paused"
    again = system.pause_volunteer(vol["id"], {"version": 2})
    assert again["version"] == 2  # pausing twice changes nothing
    resumed = system.resume_volunteer(vol["id"], {"version": 2})
    with pytest.raises(Forbidden):  # vetting is the platform's decision, not a coordinator's
        rpc("registry", roles=("coordinator",), user_id="u_c").set_vetting(
            vol["id"], {"kind": "criminal_record", "state": "cleared", "version": 3})
    vetted = system.set_vetting(vol["id"], {"kind": "criminal_record", "state": "cleared",
                                            "valid_until": "2099-01-31", "version": 3})
    assert resumed["status"] == "active"
    assert vetted["vetting"]["criminal_record"]["state"] == "cleared"
    types = [e["type"] for e in events.wait(4)]
    assert types == ["sanad.volunteer.registered.v1", "sanad.volunteer.paused.v1",
                     "sanad.volunteer.resumed.v1", "sanad.volunteer.updated.v1"]


def test_search_by_skill_language_country_mode_with_cursor(system: Any, rpc: Any) -> None:
    for n in range(7):
        system.register_volunteer(volunteer(
            f"v{n}@example.org",
            skills=[{"name": "Data analysis" if n % 2 == 0 else "Translation"}],
            mode="remote" if n < 5 else "onsite"))
    system.register_volunteer(volunteer("fr@example.org", languages=[{"code": "fr",
                                                                      "level": "native"}]))
    coordinator = rpc("registry", roles=("coordinator",), user_id="u_coord")
    seen, cursor = [], None
    while True:
        page = coordinator.search_volunteers({"skill": "analyse de données", "limit": 2,
                                              "cursor": cursor, "language": "ar"})
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 4 and len({v["id"] for v in seen}) == 4
    remote = coordinator.search_volunteers({"mode": "remote", "country": "LB"})["items"]
    assert len(remote) == 6
    free_text = coordinator.search_volunteers({"skill": "underwater BASKET weaving"})
    assert [v["languages"][0]["code"] for v in free_text["items"]] == ["fr"]  # free text
    with pytest.raises(Forbidden):
        rpc("registry", roles=("volunteer",), user_id="u_x").search_volunteers({})


def test_ownership_is_enforced_by_the_service(system: Any, rpc: Any) -> None:
    me = rpc("registry", roles=("volunteer",), user_id="u_rana")
    mine = me.register_volunteer(volunteer())
    assert me.get_volunteer(mine["id"])["email"] == "Rana@Example.org"
    other = rpc("registry", roles=("volunteer",), user_id="u_other")
    with pytest.raises(Forbidden):
        other.get_volunteer(mine["id"])
    with pytest.raises(Forbidden):
        other.update_volunteer(mine["id"], {"version": 1, "about": "x"})
    with pytest.raises(Forbidden):
        other.erase_volunteer(mine["id"])
    assert me.update_volunteer(mine["id"], {"version": 1, "about": "ok"})["version"] == 2


def test_erasure_keeps_pending_events_it_could_not_send(
        container_factory: Any, config: dict[str, Any], rpc: Any, db: Any, tap: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a short relay lease: the relay's failed attempts lease the record too
    container_factory(RegistryService, {**config, "OUTBOX_LEASE_SECONDS": 1}).start()
    system = rpc("registry")
    events = tap("registry")
    vol = system.register_volunteer(volunteer())
    stuck = "evt_" + "1" * 28
    pending = {stuck: {"n": 0, "event": {**events.wait(1)[0], "id": stuck}}}
    stored = db("registry")[VOLUNTEERS].find_one({"_id": vol["id"]})
    stored.update(outbox=pending, outbox_n=1)
    db("registry")[VOLUNTEERS].replace_one({"_id": vol["id"]}, stored)
    broker_down = True
    real_init = OutboxHandle.__init__

    def init(handle: OutboxHandle, provider: Any, dispatch: Any) -> None:
        def dispatch_or_fail(event_type: str, data: dict[str, Any]) -> None:
            if broker_down and data["id"] == stuck:
                raise ConnectionError("broker unreachable")
            dispatch(event_type, data)
        real_init(handle, provider, dispatch_or_fail)

    monkeypatch.setattr(OutboxHandle, "__init__", init)
    system.erase_volunteer(vol["id"])
    tombstone = db("registry")[VOLUNTEERS].find_one({"_id": vol["id"]})
    assert stuck in tombstone["outbox"]  # not sent, so not dropped: the relay owes it
    broker_down = False  # the relay sends it once the broker is back
    wait_for(lambda: any(e["id"] == stuck for e in events.drain()))
    wait_for(lambda: stuck not in db("registry")[VOLUNTEERS].find_one(
        {"_id": vol["id"]})["outbox"])


def test_erasure_leaves_no_personal_data_anywhere(system: Any, db: Any, tap: Any) -> None:
    events = tap("registry")
    vol = system.register_volunteer(volunteer())
    system.update_volunteer(vol["id"], {"version": 1, "name": "Rana K."})
    exported = system.export_volunteer(vol["id"])
    assert exported["data"]["email"] == "Rana@Example.org"
    assert exported["data"]["consent"]["terms_version"] == "2026-01"

    # as if the broker had been down: the profile's events are still in the outbox
    pending = {"evt_" + "0" * 28: {"n": 0, "event": {**events.wait(1)[0],
                                                   "id": "evt_" + "0" * 28}}}
    stored = db("registry")[VOLUNTEERS].find_one({"_id": vol["id"]})
    stored.update(outbox=pending, outbox_n=1)
    db("registry")[VOLUNTEERS].replace_one({"_id": vol["id"]}, stored)

    system.erase_volunteer(vol["id"])
    with pytest.raises(NotFound):
        system.get_volunteer(vol["id"])
    erased = events.wait(1, "sanad.volunteer.erased.v1")[0]
    assert erased["data"] == {"volunteer_id": vol["id"], "erased_at": erased["data"]["erased_at"]}
    database = db("registry")
    dump = repr([list(database[name].find()) for name in database.list_collection_names()])
    for personal in ("Rana", "rana@example.org", "رنا", "+9613123456", "Tripoli", "أدرّس"):
        assert personal not in dump
    # the address is free again: a person may come back
    assert system.register_volunteer(volunteer())["id"] != vol["id"]


BAD_FIELDS: list[tuple[str, Any]] = [
    ("email", "not-an-email"), ("email", "a@" + "b" * 300 + ".org"), ("email", 42),
    ("name", ""), ("name", "x" * 101), ("name", "bad\x00name"), ("name", {"$gt": ""}),
    ("phone", "12345"), ("preferred_language", "english"),
    ("languages", [{"code": "ar", "level": "guru"}]), ("languages", "ar"),
    ("skills", [{"name": ""}]), ("skills", [{"name": "x", "level": "god"}]),
    ("skills", [{"name": "x"}] * 41), ("skills_to_learn", [""]),
    ("availability", {"timezone": "Mars/Olympus"}),
    ("availability", {"timezone": "UTC", "windows": [{"day": "xyz", "start": "1", "end": "2"}]}),
    ("availability", {"timezone": "UTC", "windows": [{"day": "mon", "start": "18:00",
                                                       "end": "17:00"}]}),
    ("availability", {"timezone": "UTC", "hours_per_week": 1000}),
    ("mode", "teleport"), ("location", {"country": "Lebanon"}),
    ("location", {"country": "LB", "lat": 91, "lng": 0}),
    ("location", {"country": "LB", "lat": 33.9}),
    ("about", "x" * 2001),
    ("consent", {"terms_version": "1", "privacy_accepted": False}),
    ("unknown_field", 1),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_every_invalid_field_is_refused_by_name(system: Any, db: Any, field: str,
                                                value: Any) -> None:
    data = volunteer()
    data[field] = value
    with pytest.raises(ValidationError) as caught:
        system.register_volunteer(data)
    named = [key for key in caught.value.details if key.split(".")[0] == field]
    assert named, caught.value.details
    assert db("registry")[VOLUNTEERS].count_documents({}) == 0
    assert system.get_volunteer  # the service still answers:
    assert system.search_volunteers({})["items"] == []


INJECTIONS = [
    {"$where": "sleep(1000)"},
    {"email": {"$ne": None}},
    {"languages": [{"code": "ar", "level": "native", "$set": {"status": "x"}}]},
    {"location": {"country": "LB", "region.x": "y"}},
    {"availability": {"timezone": "UTC", "windows": [], "$inc": {"v": 1}}},
]


@pytest.mark.parametrize("patch", INJECTIONS)
def test_mongo_operators_in_user_data_never_reach_the_store(system: Any, db: Any,
                                                            patch: dict[str, Any]) -> None:
    data = copy.deepcopy(volunteer())
    data.update(patch)
    with pytest.raises(ValidationError):
        system.register_volunteer(data)
    assert db("registry")[VOLUNTEERS].count_documents({}) == 0


def test_injection_in_ids_and_filters(system: Any) -> None:
    for bad in ({"$gt": ""}, "vol_../../", "org_" + "0" * 28, 7, None):
        with pytest.raises(ValidationError):
            system.get_volunteer(bad)
    with pytest.raises(ValidationError) as caught:
        system.search_volunteers({"status": {"$ne": "erased"}})
    assert list(caught.value.details) == ["status.$ne"]
    with pytest.raises(ValidationError):
        system.search_volunteers({"cursor": {"$gt": ""}})
    with pytest.raises(NotFound):
        system.get_volunteer("vol_" + "0" * 28)


def test_huge_payload_is_refused(system: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        system.register_volunteer(volunteer(about="ا" * 70_000))
    assert "_schema" in caught.value.details


def test_organisation_lifecycle_members_and_beneficiaries(system: Any, rpc: Any,
                                                          tap: Any, db: Any) -> None:
    events = tap("registry")
    owner = rpc("registry", roles=("coordinator",), user_id="u_owner")
    org = owner.register_organisation({"name": "جمعية سند", "country": "LB",
                                       "contact_email": "info@sanad.example"})
    assert org["status"] == "pending" and org["members"][0]["role"] == "owner"
    benef = {"display_name": "أم أحمد", "country": "LB", "needs": ["digital_literacy"],
             "consent_recorded": True}
    with pytest.raises(Conflict):  # not verified yet
        owner.register_beneficiary(org["id"], benef)
    with pytest.raises(Forbidden):
        owner.verify_organisation(org["id"], {"version": 1})
    admin = rpc("registry", roles=("platform_admin",), user_id="u_admin")
    verified = admin.verify_organisation(org["id"], {"version": 1})
    assert verified["status"] == "verified"
    owner.set_member(org["id"], {"user_id": "u_helper", "role": "coordinator"})
    helper = rpc("registry", roles=("coordinator",), user_id="u_helper")
    ben = helper.register_beneficiary(org["id"], benef)
    assert ben["organisation_id"] == org["id"]
    stranger = rpc("registry", roles=("coordinator",), user_id="u_stranger")
    with pytest.raises(Forbidden):
        stranger.get_beneficiary(ben["id"])
    assert len(helper.list_beneficiaries(org["id"])["items"]) == 1
    with pytest.raises(Conflict):  # the last owner cannot leave
        owner.remove_member(org["id"], "u_owner")
    suspended = admin.suspend_organisation(org["id"], {"version": 3, "reason": "audit"})
    assert suspended["status"] == "suspended"
    helper.erase_beneficiary(ben["id"])
    types = [e["type"] for e in events.wait(5)]
    assert types == ["sanad.organisation.registered.v1", "sanad.organisation.verified.v1",
                     "sanad.beneficiary.registered.v1", "sanad.organisation.suspended.v1",
                     "sanad.beneficiary.erased.v1"]
    ben_event = next(e for e in events.events if e["type"].startswith("sanad.beneficiary.reg"))
    assert "أم أحمد" not in repr(ben_event)
    assert "أم أحمد" not in repr(list(db("registry")["beneficiaries"].find()))


@pytest.mark.parametrize(("patch", "field"), [
    ({"availability": {"hours_per_week": 3}}, "availability"),
    ({"location": {"region": "Beirut"}}, "location"),
    ({"skills": [{"level": "expert"}]}, "skills"),
    ({"availability": {"timezone": "UTC", "windows": [{"day": "mon", "start": "10:00"}]}},
     "availability"),
])
def test_partial_update_still_needs_whole_nested_objects(system: Any, patch: dict[str, Any],
                                                         field: str) -> None:
    vol = system.register_volunteer(volunteer())
    with pytest.raises(ValidationError) as caught:
        system.update_volunteer(vol["id"], {"version": 1, **patch})
    assert field in caught.value.details
    assert system.get_volunteer(vol["id"])["version"] == 1
    with pytest.raises(ValidationError) as caught:
        system.update_volunteer(vol["id"], {"about": "no version"})
    assert "version" in caught.value.details


def test_organisation_profile_is_public_but_members_are_not(system: Any, rpc: Any) -> None:
    owner = rpc("registry", roles=("coordinator",), user_id="u_owner")
    org = owner.register_organisation({"name": "Sanad", "country": "LB",
                                       "contact_email": "info@sanad.example"})
    public = rpc("registry", roles=(), user_id=None).get_organisation(org["id"])
    assert public["name"] == "Sanad" and "members" not in public
    assert "contact_email" not in public
    assert owner.get_organisation(org["id"])["contact_email"] == "info@sanad.example"
    same = owner.remove_member(org["id"], "u_nobody")  # not a member: nothing to do
    assert same["version"] == org["version"]
