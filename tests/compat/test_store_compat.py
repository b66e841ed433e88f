"""Store compatibility: the store patterns Sanad relies on, asserted over the wire.

Runs against the run's nx-27017 by default, or any MongoDB given as MONGO_URI
(`MONGO_URI=mongodb://host/?replicaSet=rs0 make test-compat`). Where nx-27017 is known
to differ, the test states both behaviours, so a change in either shows up here.
docs/store-compatibility.md explains each case.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import eventlet
import pytest
from pymongo import MongoClient, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure

from services.common.storage import (
    BaseStore,
    Index,
    asc,
    new_with_outbox,
    visible,
    with_outbox,
)
from services.registry.store import VOLUNTEERS, RegistryStore

pytestmark = pytest.mark.compat
# The real clock, not a fixed date: stores expire TTL records against their own clock,
# so a fixed date turns into a failure once it lies more than a TTL in the past.
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def client(store_uri: str) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(store_uri, tz_aware=True)
    yield client
    client.close()


@pytest.fixture
def db(client: MongoClient) -> Iterator[Database]:
    name = f"compat_{secrets.token_hex(4)}"
    yield client[name]
    client.drop_database(name)


@pytest.fixture
def is_nx(client: MongoClient) -> bool:
    return client.admin.command("buildInfo").get("process") == "nx_27017"


def test_outbox_write_ack_and_lease(db: Database) -> None:
    store = RegistryStore(db)
    store.ensure_indexes()
    events = [{"id": "evt_1", "type": "t", "time": "x"}, {"id": "evt_2", "type": "t"}]
    db[VOLUNTEERS].insert_one(new_with_outbox({"_id": "v1", "version": 1}, events[:1]))
    db[VOLUNTEERS].update_one({"_id": "v1", "version": 1},
                              with_outbox({"$inc": {"version": 1}}, events[1:]))
    doc = db[VOLUNTEERS].find_one({"_id": "v1"})
    assert doc["outbox_n"] == 2 and set(doc["outbox"]) == {"evt_1", "evt_2"}
    assert store.outbox_backlog() == 1
    lease = store.outbox_claim(VOLUNTEERS, NOW, timedelta(seconds=30))
    assert lease is not None and lease["_id"] == "v1"
    assert store.outbox_claim(VOLUNTEERS, NOW, timedelta(seconds=30)) is None  # leased
    assert store.outbox_claim(VOLUNTEERS, NOW + timedelta(minutes=1),
                              timedelta(seconds=30)) is not None  # lease expired
    assert store.outbox_ack(VOLUNTEERS, "v1", "evt_1") is True
    assert store.outbox_ack(VOLUNTEERS, "v1", "evt_1") is False  # second ack: no-op
    assert store.outbox_ack(VOLUNTEERS, "v1", "evt_2") is True
    assert db[VOLUNTEERS].find_one({"_id": "v1"})["outbox_n"] == 0
    assert store.outbox_backlog() == 0


def test_compare_and_set_on_version_has_one_winner(db: Database) -> None:
    db.docs.insert_one({"_id": "d", "version": 1, "v": 0})
    results = [db.docs.update_one({"_id": "d", "version": 1},
                                  {"$set": {"v": n}, "$inc": {"version": 1}}).modified_count
               for n in range(5)]
    assert results == [1, 0, 0, 0, 0]
    after = db.docs.find_one_and_update({"_id": "d", "version": 2}, {"$inc": {"version": 1}},
                                        return_document=ReturnDocument.AFTER)
    assert after["version"] == 3


def test_conditional_claims_never_oversell(db: Database) -> None:
    """The slot-claim pattern the tasks service uses: concurrent `$inc` with a guard."""
    db.tasks.insert_one({"_id": "t", "free": 5})

    def claim(_: int) -> bool:
        return db.tasks.update_one({"_id": "t", "free": {"$gt": 0}},
                                   {"$inc": {"free": -1}}).modified_count == 1

    won = list(eventlet.GreenPool(20).imap(claim, range(40)))
    assert won.count(True) == 5
    assert db.tasks.find_one({"_id": "t"})["free"] == 0


def test_a_claim_with_its_conditions_and_audit_time_in_one_update(db: Database) -> None:
    """The tasks service's sign-up: `$nin` on an array (empty or not) in the guard, and
    `$inc`, `$push`, `$pull` and an integer `$max` in one find_one_and_update that returns
    the document as it was; then the audit's indexed integer range."""
    from pymongo import ReturnDocument

    Index("tasks", asc("claims_audit_ms")).create(db)
    db.tasks.insert_many([
        {"_id": "open", "free": 2, "holders": [], "waitlist": ["v1"], "vetting_required": [],
         "claims_audit_ms": 0},
        {"_id": "vetted", "free": 2, "holders": [], "waitlist": [],
         "vetting_required": ["identity", "reference"], "claims_audit_ms": 0}])

    def claim(task_id: str, vid: str, audit_ms: int, gaps: list[str]) -> dict | None:
        return db.tasks.find_one_and_update(
            {"_id": task_id, "free": {"$gt": 0}, "holders": {"$nin": [vid]},
             "vetting_required": {"$nin": gaps}},
            {"$inc": {"free": -1}, "$push": {"holders": vid}, "$pull": {"waitlist": vid},
             "$max": {"claims_audit_ms": audit_ms}},
            projection={"free": 1}, return_document=ReturnDocument.BEFORE)

    assert claim("open", "v1", 2000, ["identity"]) == {"_id": "open", "free": 2}
    assert claim("open", "v1", 3000, []) is None  # holds one already
    assert claim("open", "v2", 1000, ["identity"]) is not None  # $max keeps 2000
    assert claim("vetted", "v3", 5000, ["identity"]) is None  # needs what v3 lacks
    assert claim("vetted", "v3", 5000, ["criminal_record"]) is not None
    stored = db.tasks.find_one({"_id": "open"})
    assert stored["holders"] == ["v1", "v2"] and stored["waitlist"] == []
    assert stored["free"] == 0 and stored["claims_audit_ms"] == 2000
    due = db.tasks.find({"claims_audit_ms": {"$gt": 0, "$lt": 4000}})
    assert [d["_id"] for d in due] == ["open"]


def test_sparse_unique_allows_many_tombstones(db: Database) -> None:
    Index("people", asc("email_norm"), unique=True, sparse=True).create(db)
    db.people.insert_one({"_id": "a", "email_norm": "x@y.org"})
    with pytest.raises(DuplicateKeyError) as caught:
        db.people.insert_one({"_id": "b", "email_norm": "x@y.org"})
    assert caught.value.code == 11000
    db.people.insert_many([{"_id": "t1"}, {"_id": "t2"}])  # tombstones lack the key
    db.people.update_one({"_id": "a"}, {"$unset": {"email_norm": ""}})
    db.people.insert_one({"_id": "c", "email_norm": "x@y.org"})  # free again


def test_array_queries_with_in_and_all(db: Database) -> None:
    Index("vols", asc("skill_ids")).create(db)
    db.vols.insert_many([{"_id": "1", "skill_ids": ["a", "b"]}, {"_id": "2", "skill_ids": ["b"]},
                         {"_id": "3", "skill_ids": []}])
    assert [d["_id"] for d in db.vols.find({"skill_ids": {"$in": ["a"]}})] == ["1"]
    assert [d["_id"] for d in db.vols.find({"skill_ids": {"$all": ["a", "b"]}})] == ["1"]
    assert [d["_id"] for d in db.vols.find({"skill_ids": {"$in": ["b"]}}).sort("_id", 1)] \
        == ["1", "2"]


def test_plain_equality_on_indexed_array(db: Database, is_nx: bool) -> None:
    """Deviation: MongoDB matches any element; Sanad always writes `$in` instead."""
    Index("vols", asc("tags")).create(db)
    db.vols.insert_one({"_id": "1", "tags": ["a", "b"]})
    found = [d["_id"] for d in db.vols.find({"tags": "a"})]
    if is_nx:
        assert found == []  # measured on 0.8.1: silently nothing
    else:
        assert found == ["1"]


def test_compound_index_with_id(db: Database, is_nx: bool) -> None:
    """Deviation: nx-27017 cannot index `_id` inside a compound index."""
    def index_and_insert() -> None:
        db.c.create_index([("_id", 1), ("status", 1)])
        db.c.insert_one({"_id": "1", "status": "open"})

    if is_nx:
        with pytest.raises(OperationFailure):
            index_and_insert()
    else:
        index_and_insert()


def test_datetimes_round_trip_timezone_aware_at_millisecond_precision(db: Database) -> None:
    at = datetime(2026, 3, 29, 0, 30, 15, 123456, tzinfo=UTC)
    db.t.insert_one({"_id": "1", "at": at})
    back = db.t.find_one({"_id": "1"})["at"]
    assert back == at.replace(microsecond=123000) and back.tzinfo is not None
    assert db.t.count_documents({"at": {"$gt": at - timedelta(seconds=1)}}) == 1


def test_keyset_pagination_on_string_ids(db: Database) -> None:
    db.p.insert_many([{"_id": f"vol_{n:03d}", "s": "active"} for n in range(25)])
    seen, cursor = [], None
    while True:
        query: dict[str, Any] = {"s": "active"}
        if cursor:
            query["_id"] = {"$gt": cursor}
        page = list(db.p.find(query).sort("_id", 1).limit(11))
        seen += [d["_id"] for d in page[:10]]
        if len(page) <= 10:
            break
        cursor = page[9]["_id"]
    assert seen == [f"vol_{n:03d}" for n in range(25)]


def test_event_claims_are_exclusive_and_expire(db: Database) -> None:
    store = BaseStore(db)
    store.ensure_indexes()
    lease, keep = timedelta(seconds=30), timedelta(days=7)
    assert store.claim_event("h:evt_1", NOW, lease, keep) == ("claimed", 0)
    assert store.claim_event("h:evt_1", NOW, lease, keep) == ("busy", 0)
    later = NOW + timedelta(minutes=1)  # the first worker died: its lease ran out
    assert store.claim_event("h:evt_1", later, lease, keep) == ("claimed", 0)
    store.finish_event("h:evt_1", NOW, keep)
    assert store.claim_event("h:evt_1", NOW, lease, keep) == ("done", 0)
    # an expired record is as good as absent even where TTL deletion is lazy
    assert store.claim_event("h:evt_1", NOW + timedelta(days=8), lease, keep) == ("claimed", 0)


def test_failed_attempts_add_up_and_the_event_is_claimed_again(db: Database) -> None:
    store = BaseStore(db)
    store.ensure_indexes()
    lease, keep = timedelta(seconds=30), timedelta(days=7)
    state, attempts = store.claim_event("h:evt_2", NOW, lease, keep)
    for expected in (1, 2, 3):
        assert store.fail_event("h:evt_2", attempts, NOW, keep) == expected
        state, attempts = store.claim_event("h:evt_2", NOW, lease, keep)
        assert (state, attempts) == ("claimed", expected)
    assert store.claim_event("h:evt_2", NOW, lease, keep) == ("busy", 0)


def test_dotted_set_and_unset_inside_subdocuments(db: Database) -> None:
    db.v.insert_one({"_id": "1", "vetting": {}})
    db.v.update_one({"_id": "1"}, {"$set": {"vetting.criminal_record": {"state": "cleared"}},
                                   "$inc": {"hours_by_skill.sk_a": 2.5}})
    db.v.update_one({"_id": "1"}, {"$inc": {"hours_by_skill.sk_a": 1.0}})
    doc = db.v.find_one({"_id": "1"})
    assert doc["vetting"] == {"criminal_record": {"state": "cleared"}}
    assert doc["hours_by_skill"] == {"sk_a": 3.5}


def test_replace_keeps_only_the_new_document(db: Database) -> None:
    db.v.insert_one({"_id": "1", "version": 3, "name": "x", "email": "e"})
    result = db.v.replace_one({"_id": "1", "version": 3}, {"_id": "1", "status": "erased"})
    assert result.matched_count == 1
    assert db.v.find_one({"_id": "1"}) == {"_id": "1", "status": "erased"}
    assert db.v.replace_one({"_id": "1", "version": 3}, {"_id": "1"}).matched_count == 0


def test_booleans_set_by_update(db: Database, is_nx: bool) -> None:
    """Deviation: nx-27017 stores a bare boolean written by `$set` as the integer 1.

    Inside a sub-document, or on insert, booleans survive. Sanad never `$set`s a bare
    boolean: flags are strings (`offer_kind: "reserved"`) or live in sub-documents.
    """
    db.b.insert_one({"_id": "1", "on_insert": True})
    db.b.update_one({"_id": "1"}, {"$set": {"bare": True, "nested": {"flag": True}}})
    doc = db.b.find_one({"_id": "1"})
    assert doc["on_insert"] is True and doc["nested"] == {"flag": True}
    if is_nx:
        assert doc["bare"] == 1 and doc["bare"] is not True
    else:
        assert doc["bare"] is True


def test_push_of_subdocuments(db: Database, is_nx: bool) -> None:
    """Deviation: nx-27017 stores sub-documents added by `$push` as JSON strings.

    Sanad pushes only strings (holders, waitlists, credit ids); lists of sub-documents
    are rewritten whole under a version check (`compare_and_replace`).
    """
    db.p.insert_one({"_id": "1", "subs": [], "ids": []})
    db.p.update_one({"_id": "1"}, {"$push": {"subs": {"a": 1}, "ids": "k1"}})
    doc = db.p.find_one({"_id": "1"})
    assert doc["ids"] == ["k1"]
    if is_nx:
        assert doc["subs"] == ['{"a":1}']
    else:
        assert doc["subs"] == [{"a": 1}]


def test_datetimes_written_by_set(db: Database, is_nx: bool) -> None:
    """Deviation: nx-27017 stores a bare datetime written by `$set` as a string."""
    db.d.insert_one({"_id": "1", "version": 1})
    db.d.update_one({"_id": "1"}, {"$set": {"at": NOW}})
    stored = db.d.find_one({"_id": "1"})["at"]
    if is_nx:
        assert isinstance(stored, str)
    else:
        assert stored == NOW
    store = BaseStore(db)
    after = store.compare_and_replace("d", "1", 1, {"at": NOW, "flag": True}, [])
    assert after is not None and after["at"] == NOW and after["flag"] is True
    stored = db.d.find_one({"_id": "1"})  # what the store kept, not what was sent
    assert isinstance(stored["at"], datetime) and stored["at"] == NOW
    assert stored["flag"] is True
    assert visible(stored) == after
    assert after["version"] == 2
    assert store.compare_and_replace("d", "1", 1, {"at": NOW}, []) is None  # stale
    # what a writer gets back is what a later read returns, to the millisecond
    precise = NOW + timedelta(microseconds=123456)
    after = store.compare_and_replace("d", "1", 2, {"at": precise, "pair": ("a", "b")}, [])
    assert after == visible(db.d.find_one({"_id": "1"}))
    assert after["at"] == NOW + timedelta(milliseconds=123) and after["pair"] == ["a", "b"]


def test_range_on_a_number_skips_nulls(db: Database) -> None:
    """The expiry timer relies on it: ended tasks carry `ends_at_ms: null`."""
    Index("t", asc("ends_at_ms")).create(db)
    db.t.insert_many([{"_id": "a", "ends_at_ms": 5}, {"_id": "b", "ends_at_ms": None},
                      {"_id": "c"}, {"_id": "d", "ends_at_ms": 50}])
    assert [d["_id"] for d in db.t.find({"ends_at_ms": {"$lt": 10}})] == ["a"]


def test_revision_guarded_upserts_never_go_back(db: Database) -> None:
    """Derived entries (the tasks search index) carry their source's revision: an upsert
    filtered on an older revision collides on `_id` instead of overwriting."""
    from pymongo import UpdateOne
    from pymongo.errors import BulkWriteError

    def sync(rev: int, key: str) -> list[int]:
        try:
            db.ix.bulk_write([UpdateOne({"_id": "t1|a", "rev": {"$lt": rev}},
                                        {"$set": {"key": key, "rev": rev}}, upsert=True)],
                             ordered=False)
        except BulkWriteError as exc:
            return [e["code"] for e in exc.details["writeErrors"]]
        return []

    assert sync(5, "open|a") == []
    assert sync(7, "filled|a") == []
    assert sync(6, "open|a") == [11000]  # late and older: refused
    assert sync(7, "filled|a") == [11000]  # a repeat: refused alike
    db.ix.delete_many({"_id": {"$nin": []}, "rev": {"$lt": 7}})  # older removals too
    assert list(db.ix.find()) == [{"_id": "t1|a", "key": "filled|a", "rev": 7}]


def test_pages_are_ranges_of_a_compound_index(db: Database) -> None:
    """Keyset pages on (key, copy of the id): `$eq` on the key and `$gt` on the copy."""
    Index("ix", asc("key", "task_id")).create(db)
    db.ix.insert_many([{"_id": f"tsk_{n:03d}|{k}", "key": k, "task_id": f"tsk_{n:03d}"}
                       for n in range(30) for k in ("open|a", "open|b")])
    seen, cursor = [], None
    while True:
        span: dict[str, Any] = {"key": {"$eq": "open|a"}}
        if cursor:
            span["task_id"] = {"$gt": cursor}
        page = [d["task_id"] for d in db.ix.find(span).sort("task_id", 1).limit(8)]
        seen += page
        if len(page) < 8:
            break
        cursor = page[-1]
    assert seen == [f"tsk_{n:03d}" for n in range(30)]
