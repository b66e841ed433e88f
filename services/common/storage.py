"""MongoDB access shared by every service: the Store dependency and the store base class.

Each service subclasses `BaseStore` in its own `store.py` (the only module that speaks
pymongo), declares its indexes there, and gets the outbox and processed-event
collections for free. Patterns follow docs/store-compatibility.md: string ids, one
atomic single-document write per change, no transactions, no partial indexes.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import bson
from nameko.extensions import DependencyProvider
from pymongo import ASCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from services.common import requests

# Fields the outbox keeps inside a changed document; never returned to callers.
OUTBOX_FIELDS = ("outbox", "outbox_n", "outbox_lease")
HIDDEN = {name: 0 for name in OUTBOX_FIELDS}
PROCESSED = "processed_events"


class Contention(RuntimeError):
    """A compare-and-set kept losing to other writers; not the caller's fault.

    Not a SanadError on purpose: an event handler that raises it is retried
    (the event is requeued), not rejected.
    """


@dataclass(frozen=True)
class Index:
    collection: str
    keys: Sequence[tuple[str, int]]
    unique: bool = False
    sparse: bool = False
    ttl_seconds: int | None = None

    def create(self, db: Database) -> None:
        options: dict[str, Any] = {"unique": self.unique, "sparse": self.sparse}
        if self.ttl_seconds is not None:
            options["expireAfterSeconds"] = self.ttl_seconds
        db[self.collection].create_index(list(self.keys), **options)


def epoch_ms(at: datetime) -> int:
    """A time as stored where a datetime is not portable: a `$set` or `$max` datetime
    comes back a string from nx-27017 (see compare_and_replace)."""
    return int(at.timestamp() * 1000)


def asc(*names: str) -> list[tuple[str, int]]:
    return [(name, ASCENDING) for name in names]


def with_outbox(update: dict[str, Any], envelopes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add pending events to an update so state and events commit in one write."""
    update = {op: dict(values) for op, values in update.items()}
    count = 0
    for n, envelope in enumerate(envelopes):
        update.setdefault("$set", {})[f"outbox.{envelope['id']}"] = {"n": n, "event": envelope}
        count += 1
    if count:
        update.setdefault("$inc", {})["outbox_n"] = count
    return update


def new_with_outbox(doc: dict[str, Any], envelopes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A document to insert, carrying the events its creation causes."""
    pending = {e["id"]: {"n": n, "event": e} for n, e in enumerate(envelopes)}
    # outbox_lease is always present so the relay's query needs no `$or`/`$exists`,
    # which nx-27017 answers with a full scan.
    stored = {**doc, "outbox": pending, "outbox_n": len(pending), "outbox_lease": 0}
    if (key := requests.insert_key()) is not None:
        stored["request_key"] = key  # a redelivery of the request finds it (requests.py)
    return stored


def apply_changes(doc: Mapping[str, Any], set_: Mapping[str, Any],
                  unset: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of `doc` with `$set`/`$unset`-style changes (dotted paths) applied."""
    out = copy.deepcopy(dict(doc))
    for path, value in set_.items():
        *parents, leaf = path.split(".")
        target = out
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = value
    for path in unset:
        *parents, leaf = path.split(".")
        target = out
        for name in parents:
            target = target.get(name) or {}
        target.pop(leaf, None)
    return out


def _ack(doc_id: str, event_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Filter and update that drop one published event, only if it is still pending."""
    return ({"_id": doc_id, f"outbox.{event_id}": {"$exists": True}},
            {"$unset": {f"outbox.{event_id}": ""}, "$inc": {"outbox_n": -1}})


def pending_events(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The envelopes still waiting in a document's outbox, in the order they were written."""
    entries = sorted((doc.get("outbox") or {}).values(),
                     key=lambda entry: (entry["event"]["time"], entry["n"]))
    return [entry["event"] for entry in entries]


def visible(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored document without the outbox bookkeeping."""
    if doc is None:
        return None
    return {k: v for k, v in doc.items() if k not in OUTBOX_FIELDS}


class BaseStore:
    """A service's database. Subclasses set INDEXES and OUTBOX_COLLECTIONS."""

    INDEXES: Sequence[Index] = ()
    OUTBOX_COLLECTIONS: Sequence[str] = ()

    def __init__(self, db: Database) -> None:
        self.db = db

    def ensure_indexes(self) -> None:
        indexes = [*self.INDEXES,
                   Index(PROCESSED, asc("expires_at"), ttl_seconds=0)]
        indexes += [Index(name, asc("outbox_n")) for name in self.OUTBOX_COLLECTIONS]
        indexes += [Index(name, asc("request_key"), unique=True, sparse=True)
                    for name in self.OUTBOX_COLLECTIONS]
        indexes += [Index(name, asc("request_keys")) for name in self.OUTBOX_COLLECTIONS]
        for index in indexes:
            index.create(self.db)

    def ping(self) -> None:
        self.db.client.admin.command("ping")

    def compare_and_replace(self, collection: str, doc_id: str, version: int,
                            set_: Mapping[str, Any], envelopes: Iterable[Mapping[str, Any]],
                            unset: Iterable[str] = (), match: Mapping[str, Any] | None = None,
                            stored: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Apply a change to one document if it is still at `version`; None otherwise.

        The new document is computed here and written with a conditional replace, not
        `$set`: nx-27017 turns bare datetimes and booleans written by `$set` into strings
        and integers (docs/store-compatibility.md); a replace keeps every type on every
        store. Events ride along in the same write, after those still pending.

        `match` adds fields that must be unchanged too: counters that other atomic
        updates of the same document bump without touching `version`.

        `stored` is the document exactly as this caller just wrote it (outbox fields
        included), to save the read. Safe because every write that adds events also
        bumps `version`: if the guard still matches, nothing but acks and relay leases
        can have touched it, and a replace that revives an acked event only publishes it
        once more to idempotent consumers.
        """
        guard = {"_id": doc_id, "version": version, **(match or {})}
        before = stored if stored is not None else self.db[collection].find_one(guard)
        if before is None:
            self._raise_if_replayed(collection, doc_id)
            return None
        after = apply_changes(before, set_, unset)
        after["version"] = version + 1
        if requests.current() is not None:
            after["request_keys"] = requests.remembered(before)
        pending = dict(after.get("outbox") or {})
        for envelope in envelopes:
            pending[envelope["id"]] = {"n": len(pending), "event": envelope}
        after["outbox"], after["outbox_n"] = pending, len(pending)
        # the replacement is the new document: no need to have the store send it back
        if self.db[collection].replace_one(guard, after).matched_count != 1:
            self._raise_if_replayed(collection, doc_id)
            return None
        # as a read would return it: BSON turns tuples into lists and cuts datetimes to
        # milliseconds, under the client's own codec options (tz-aware)
        options = self.db[collection].codec_options
        return visible(bson.decode(bson.encode(after, codec_options=options),
                                   codec_options=options))

    def insert_new(self, collection: str, stored: dict[str, Any]) -> dict[str, Any]:
        """Insert a document made by `new_with_outbox`; if this request inserted it
        before (a redelivery), raise `requests.Replayed` with what it inserted then."""
        try:
            self.db[collection].insert_one(stored)
        except DuplicateKeyError:
            key = stored.get("request_key")
            prior = None if key is None else self.db[collection].find_one({"request_key": key})
            if prior is not None:
                raise requests.Replayed(visible(prior)) from None
            raise
        return stored

    def _raise_if_replayed(self, collection: str, doc_id: str) -> None:
        """A lost compare-and-set that this request's own earlier delivery won."""
        if requests.may_replay():
            doc = self.db[collection].find_one({"_id": doc_id})
            if requests.replays(doc):
                raise requests.Replayed(visible(doc))

    def replace_keeping_pending(self, collection: str, raw: Mapping[str, Any],
                                new_doc: dict[str, Any], envelopes: Iterable[Mapping[str, Any]],
                                published: Iterable[str] = ()) -> dict[str, Any] | None:
        """Swap the document `raw` (as read, at its version) for `new_doc`, keeping the
        events still waiting to be published (all but those just `published`) and adding
        `envelopes`; None if it changed since it was read."""
        gone = set(published)
        pending = {k: v for k, v in (raw.get("outbox") or {}).items() if k not in gone}
        doc = new_with_outbox(new_doc, envelopes)
        pending.update(doc["outbox"])
        doc["outbox"], doc["outbox_n"] = pending, len(pending)
        result = self.db[collection].replace_one(
            {"_id": raw["_id"], "version": raw["version"]}, doc)
        return visible(doc) if result.matched_count == 1 else None

    def page(self, collection: str, query: Mapping[str, Any], projection: Mapping[str, Any],
             cursor: str | None, limit: int, key: str = "_id"
             ) -> tuple[list[dict[str, Any]], str | None]:
        """Keyset pagination on a time-ordered id (`key`: `_id`, or an indexed copy of it
        where the store answers a range on `_id` with a scan): stable under inserts."""
        if cursor:
            query = {**query, key: {"$gt": cursor}}
        docs = list(self.db[collection].find(dict(query), dict(projection))
                    .sort(key, 1).limit(limit + 1))
        return docs[:limit], (docs[limit - 1]["_id"] if len(docs) > limit else None)

    # -- read models of other services' records ---------------------------------------
    def upsert_snapshot(self, collection: str, doc_id: str, version: int,
                        fields: Mapping[str, Any]) -> bool:
        """Keep the newest snapshot of another service's record: an older or replayed
        version changes nothing, so duplicates and reordering converge."""
        try:
            result = self.db[collection].update_one(
                {"_id": doc_id, "version": {"$lt": version}},
                {"$set": {**fields, "version": version}}, upsert=True)
        except DuplicateKeyError:
            return False  # a newer version is stored: the upsert's insert collided
        return result.modified_count == 1 or result.upserted_id is not None

    # -- outbox ---------------------------------------------------------------------
    def outbox_ack(self, collection: str, doc_id: str, event_id: str) -> bool:
        """Drop one published event; a second ack of the same event is a no-op."""
        result = self.db[collection].update_one(*_ack(doc_id, event_id))
        return result.modified_count == 1

    def outbox_claim(self, collection: str, now: datetime, lease: timedelta
                     ) -> dict[str, Any] | None:
        """Lease one document with pending events, so replicas relay different ones."""
        # Epoch milliseconds, not a datetime: a `$set` datetime is not portable (see
        # compare_and_replace), and nobody reads this field but the relay.
        now_ms = epoch_ms(now)
        return self.db[collection].find_one_and_update(
            {"outbox_n": {"$gt": 0}, "outbox_lease": {"$lt": now_ms}},
            {"$set": {"outbox_lease": now_ms + int(lease.total_seconds() * 1000)}},
            projection={"outbox": 1, "outbox_lease": 1},
            return_document=ReturnDocument.AFTER,
        )

    def outbox_release(self, collection: str, doc_id: str, lease_ms: int,
                       until: datetime) -> None:
        """Shorten a lease this relay holds (`lease_ms`, as claimed) to `until`."""
        self.db[collection].update_one(
            {"_id": doc_id, "outbox_lease": lease_ms},
            {"$set": {"outbox_lease": epoch_ms(until)}})

    def outbox_backlog(self, cap: int = 10_000) -> int:
        """Documents with unpublished events (counted up to `cap` per collection).

        An indexed, bounded find: `count_documents` scans the collection on nx-27017.
        """
        return sum(
            len(list(self.db[name].find({"outbox_n": {"$gt": 0}}, {"_id": 1}).limit(cap)))
            for name in self.OUTBOX_COLLECTIONS
        )

    def outbox_ack_many(self, acks: Iterable[tuple[str, str, str]]) -> None:
        """Drop many published events in one round trip: (collection, doc id, event id)."""
        by_collection: dict[str, list[UpdateOne]] = {}
        for collection, doc_id, event_id in acks:
            by_collection.setdefault(collection, []).append(UpdateOne(*_ack(doc_id, event_id)))
        for collection, ops in by_collection.items():
            self.db[collection].bulk_write(ops, ordered=False)

    # -- idempotent consumers -------------------------------------------------------
    def claim_event(self, key: str, now: datetime, lease: timedelta, keep: timedelta
                    ) -> tuple[str, int]:
        """Take the right to handle one event: ("claimed", attempts failed so far),
        ("done", 0) if it was handled, or ("busy", 0).

        The claim is one atomic insert, or a conditional takeover of a failed attempt, an
        expired record or a claim whose lease ran out, so two workers given the same
        event at once never both handle it. "busy" means another worker holds a live
        lease: the caller requeues and finds it "done" later, or takes it over if that
        worker died.
        """
        running = {"_id": key, "state": "running", "at": now, "lease_until": now + lease,
                   "expires_at": now + keep, "attempts": 0}
        for _ in range(3):
            try:
                self.db[PROCESSED].insert_one(running)
                return "claimed", 0
            except DuplicateKeyError:
                pass
            current = self.db[PROCESSED].find_one({"_id": key})
            if current is None:
                continue  # expired and removed meanwhile: insert again
            expired = current["expires_at"] <= now  # TTL deletion is lazy on some stores
            if not expired and current["state"] == "done":
                return "done", 0
            if not expired and current["state"] == "running" \
                    and current["lease_until"] >= now:
                return "busy", 0
            attempts = 0 if expired else int(current.get("attempts", 0))
            guard = {"_id": key, "state": current["state"], "at": current["at"]}
            if self.db[PROCESSED].find_one_and_replace(
                    guard, {**running, "attempts": attempts}) is not None:
                return "claimed", attempts
        return "busy", 0

    def fail_event(self, key: str, attempts: int, now: datetime, keep: timedelta) -> int:
        """Record a failed attempt at handling a claimed event; returns the attempts so far.
        The event may be claimed again at once (its redelivery)."""
        self.db[PROCESSED].replace_one(
            {"_id": key, "state": "running"},
            {"_id": key, "state": "failed", "at": now, "expires_at": now + keep,
             "attempts": attempts + 1})
        return attempts + 1

    def finish_event(self, key: str, now: datetime, keep: timedelta) -> None:
        self.db[PROCESSED].replace_one(
            {"_id": key}, {"_id": key, "state": "done", "at": now, "expires_at": now + keep})


class Store(DependencyProvider):
    """One MongoClient per container; injects the service's store object.

    Database name: `MONGO_DB_PREFIX` + service name (`sanad_registry` by default), so
    each service owns its database and tests use throwaway prefixes.
    """

    def __init__(self, store_cls: type[BaseStore]) -> None:
        self.store_cls = store_cls
        self.client: MongoClient | None = None
        self.store: BaseStore | None = None

    def setup(self) -> None:
        config = self.container.config
        self.client = MongoClient(
            config.get("MONGO_URI", "mongodb://127.0.0.1:27017"),
            tz_aware=True,
            serverSelectionTimeoutMS=int(config.get("MONGO_TIMEOUT_MS", 5000)),
            # a store that stops answering fails the call instead of holding its worker
            # (and a claim's slot) forever
            socketTimeoutMS=int(config.get("MONGO_SOCKET_TIMEOUT_MS", 30000)),
            appname=f"sanad-{self.container.service_name}",
        )
        db_name = config.get("MONGO_DB_PREFIX", "sanad_") + self.container.service_name
        self.store = self.store_cls(self.client[db_name])
        self.store.ensure_indexes()

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx: Any) -> BaseStore:
        assert self.store is not None
        return self.store

    def health_check(self) -> None:
        assert self.store is not None
        self.store.ping()
