"""The tasks service's collections and queries: the only module that speaks pymongo.

Slots live on the task document: `free` (a counter), `holders` (who holds a slot) and
`waitlist` (who waits, in order). Every claim, release and promotion is one conditional
update of that document, carrying its events (the outbox), so N concurrent claims on k
free slots give exactly k winners on any number of replicas.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.common.errors import Conflict, NotFound, stale_version
from services.common.storage import (
    HIDDEN,
    BaseStore,
    Contention,
    Index,
    asc,
    epoch_ms,
    new_with_outbox,
    visible,
    with_outbox,
)

TASKS = "tasks"
ASSIGNMENTS = "assignments"
VOLUNTEERS = "volunteers"  # read model from registry events
ORGANISATIONS = "organisations"  # read model from registry events
CALENDAR_TOKENS = "calendar_tokens"  # sha256 of each volunteer's secret feed token
CREDENTIALS = "credentials"
TASK_INDEX = "task_index"  # search entries, from the service's own task events
COUNTERS = "counters"
STATUS_LIST_SIZE = 131072  # bits per W3C Bitstring Status List (the spec's minimum)
AFTER = ReturnDocument.AFTER
# what a claim reads and goes on with; not the growing holders and waitlist
CLAIMED = {"status": 1, "free": 1, "slots": 1, "starts_at": 1, "organisation_id": 1}
# what an accept reads of the task: its rules, not the long lists and texts
FOR_CLAIM = {**HIDDEN, "holders": 0, "waitlist": 0, "sessions": 0, "description": 0}
LINE = {"waitlist": 1, "free": 1, "status": 1}
# a task in search results: a summary, get_task has the rest
LISTED = {**FOR_CLAIM, "sort_id": 0}
ANY = "*"
SEARCH_ROUNDS = 6  # index ranges read for one page before returning it short


def stored_task(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A new task as stored. `sort_id` is a copy of `_id` to cut pages on: nx-27017 answers
    a range on `_id` with a full scan, but a range on an indexed field from the index."""
    return new_with_outbox({**doc, "sort_id": doc["_id"], "claims_audit_ms": 0}, [])


def index_key(status: str, skill_id: str | None, language: str | None) -> str:
    return f"{status}|{skill_id or ANY}|{language or ANY}"


def index_entries(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A task's search entries: one per skill and language it asks for together, and per
    skill and per language alone, so a search by either or both reads one index range.
    Each carries the task's revision (`version` and `slots_rev` only grow) so that a late
    sync never undoes a newer one. Drafts are not listed."""
    if task["status"] == "draft":
        return []
    rev = task["version"] + task.get("slots_rev", 0)
    pairs = {(skill, language) for skill in [*task["skill_ids"], ANY]
             for language in [*task["language_codes"], ANY]} - {(ANY, ANY)}
    return [{"_id": f"{task['_id']}|{skill}|{language}",
             "key": index_key(task["status"], skill, language),
             "task_id": task["_id"], "task_rev": rev} for skill, language in sorted(pairs)]


class TasksStore(BaseStore):
    OUTBOX_COLLECTIONS = (TASKS, ASSIGNMENTS, CREDENTIALS)
    INDEXES = (
        Index(TASKS, asc("status")),
        Index(TASKS, asc("organisation_id")),
        # pages of a listing: one index range each (skills and languages: TASK_INDEX)
        Index(TASKS, asc("status", "sort_id")),
        Index(TASKS, asc("status", "free")),  # reconcile: status out of step with free
        Index(TASKS, asc("claims_audit_ms")),  # reconcile: slots taken a while ago
        Index(TASKS, asc("organisation_id", "sort_id")),
        Index(TASK_INDEX, asc("key", "task_id")),
        Index(TASK_INDEX, asc("task_id")),
        Index(TASKS, asc("ends_at_ms")),
        Index(ASSIGNMENTS, asc("live_key"), unique=True, sparse=True),
        Index(ASSIGNMENTS, asc("task_id")),
        Index(ASSIGNMENTS, asc("volunteer_id")),
        Index(ASSIGNMENTS, asc("status")),
        Index(ASSIGNMENTS, asc("due_at")),
        Index(CALENDAR_TOKENS, asc("volunteer_id"), unique=True),
        Index(CREDENTIALS, asc("assignment_id")),
        Index(CREDENTIALS, asc("list_id")),
    )

    # -- tasks ------------------------------------------------------------------------
    def insert_task(self, doc: dict[str, Any]) -> dict[str, Any]:
        return visible(self.insert_new(TASKS, stored_task(doc)))

    def task(self, task_id: str, projection: Mapping[str, int] = HIDDEN) -> dict[str, Any]:
        doc = self.db[TASKS].find_one({"_id": task_id}, projection)
        if doc is None:
            raise NotFound("No such task.", {"task_id": [task_id]})
        return doc

    def update_task(self, task: Mapping[str, Any], version: int, set_: Mapping[str, Any],
                    envelopes: Iterable[Mapping[str, Any]], unset: Iterable[str] = ()
                    ) -> dict[str, Any] | None:
        """An edit of the task as read; None if a claim moved its slots meanwhile (decide
        again on a fresh read), Conflict if someone edited it since `version`."""
        after = self.compare_and_replace(TASKS, task["_id"], version, set_, envelopes, unset,
                                         match={"slots_rev": task.get("slots_rev", 0)})
        if after is None:
            current = self.task(task["_id"])
            if current["version"] != version:
                raise stale_version("task", version, current["version"])
        return after

    def _slots(self, query: dict[str, Any], update: dict[str, Any],
               envelopes: Iterable[Mapping[str, Any]],
               projection: Mapping[str, int] = HIDDEN,
               returned: ReturnDocument = AFTER, audit_at_ms: int | None = None
               ) -> dict[str, Any] | None:
        # slots_rev tells a concurrent whole-document edit (update_task) to read again
        update = {**update, "$inc": {**update.get("$inc", {}), "slots_rev": 1}}
        if audit_at_ms is not None:
            # a slot taken now has its assignment written next: `reconcile` looks at the
            # task's holders no earlier than this (`epoch_ms`)
            update["$max"] = {"claims_audit_ms": audit_at_ms}
        return self.db[TASKS].find_one_and_update(
            query, with_outbox(update, envelopes), projection=projection,
            return_document=returned)

    def claim_slot(self, task_id: str, volunteer_id: str, statuses: Iterable[str],
                   audit_at_ms: int, vetting_gaps: Iterable[str] = (),
                   waiting: Sequence[str] = ()) -> dict[str, Any] | None:
        """Take one free slot for a volunteer who holds none, on a task that requires none
        of `vetting_gaps`, while the waitlist is exactly `waiting` (empty: a freed slot is
        the line's); None when there is none. Returns only what the claim goes on with
        (CLAIMED): holders grow with the task."""
        query: dict[str, Any] = {"_id": task_id, "status": {"$in": list(statuses)},
                                 "free": {"$gt": 0}, "holders": {"$nin": [volunteer_id]},
                                 # no duplicates in line: same size and all of them = same line
                                 "waitlist": {"$size": len(waiting)}}
        if waiting:
            query["waitlist"]["$all"] = list(waiting)
        if gaps := list(vetting_gaps):
            query["vetting_required"] = {"$nin": gaps}
        before = self._slots(
            query, {"$inc": {"free": -1}, "$push": {"holders": volunteer_id},
                    "$pull": {"waitlist": volunteer_id}},
            [], CLAIMED, ReturnDocument.BEFORE, audit_at_ms)
        # the claim's own effect on what it read: asking for the document after the
        # update costs nx-27017 a second read of the whole task, the hottest write there is
        return None if before is None else {**before, "free": before["free"] - 1}

    def release_slot(self, task_id: str, volunteer_id: str,
                     envelopes: Iterable[Mapping[str, Any]],
                     audited_ms: int | None = None) -> dict[str, Any] | None:
        """Give a slot back; with `audited_ms`, only if no slot was taken since the
        holders were read with that `claims_audit_ms` (the slot is orphaned, not new)."""
        query: dict[str, Any] = {"_id": task_id, "holders": {"$in": [volunteer_id]}}
        if audited_ms is not None:
            query["claims_audit_ms"] = audited_ms
        return self._slots(query, {"$inc": {"free": 1}, "$pull": {"holders": volunteer_id}},
                           envelopes)

    def promote(self, task_id: str, volunteer_id: str, statuses: Iterable[str],
                audit_at_ms: int) -> dict[str, Any] | None:
        """Move one volunteer from the waitlist into a free slot; exactly once."""
        return self._slots(
            {"_id": task_id, "status": {"$in": list(statuses)}, "free": {"$gt": 0},
             "waitlist": {"$in": [volunteer_id]}, "holders": {"$nin": [volunteer_id]}},
            {"$inc": {"free": -1}, "$push": {"holders": volunteer_id},
             "$pull": {"waitlist": volunteer_id}}, [], audit_at_ms=audit_at_ms)

    def line(self, task_id: str) -> dict[str, Any]:
        """Who waits for the task, and how many slots are free."""
        return self.task(task_id, LINE)

    def join_waitlist(self, task_id: str, volunteer_id: str, statuses: Iterable[str]
                      ) -> dict[str, Any] | None:
        return self._slots(
            {"_id": task_id, "status": {"$in": list(statuses)},
             "holders": {"$nin": [volunteer_id]}, "waitlist": {"$nin": [volunteer_id]}},
            {"$push": {"waitlist": volunteer_id}}, [])

    def leave_waitlist(self, task_id: str, volunteer_id: str) -> None:
        self._slots({"_id": task_id, "waitlist": {"$in": [volunteer_id]}},
                    {"$pull": {"waitlist": volunteer_id}}, [])

    def flip_status(self, task_id: str, to: str, from_statuses: Iterable[str],
                    envelopes: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
        """filled, reopened, in progress: a status flip that only one replica can win,
        while the task is in one of `from_statuses` (and, for filled/open, while its free
        count still says so)."""
        query: dict[str, Any] = {"_id": task_id, "status": {"$in": list(from_statuses)}}
        if to == "filled":
            query["free"] = 0
        elif to == "open":
            query["free"] = {"$gt": 0}
        return self._slots(query, {"$set": {"status": to}}, envelopes)

    def tasks_to_expire(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        # ended tasks have ends_at_ms null, so the range holds live tasks only
        due = {"ends_at_ms": {"$lt": epoch_ms(now)}}
        return [task for task in self.db[TASKS].find(due, HIDDEN).limit(limit)
                if task["status"] in ("draft", "open", "filled")]

    def unbalanced_tasks(self, limit: int) -> list[dict[str, Any]]:
        """Tasks whose status disagrees with their free count (a crash between steps)."""
        # two plain queries: nx-27017 answers this `$or` with a full scan
        return [*self.db[TASKS].find({"status": "filled", "free": {"$gt": 0}},
                                     HIDDEN).limit(limit),
                *self.db[TASKS].find({"status": "open", "free": 0}, HIDDEN).limit(limit)]

    def tasks_to_audit(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Tasks whose slots were taken long enough ago that each holder's assignment
        must exist by now."""
        due = {"claims_audit_ms": {"$gt": 0, "$lt": epoch_ms(now)}}
        return list(self.db[TASKS].find(due, HIDDEN).limit(limit))

    def audited(self, task_id: str, audited_ms: int) -> None:
        """Off the audit's range, unless a slot was taken since (then looked at again)."""
        self.db[TASKS].update_one({"_id": task_id, "claims_audit_ms": audited_ms},
                                  {"$set": {"claims_audit_ms": 0}})

    def search_tasks(self, search: Mapping[str, Any], organisation_ids: list[str] | None,
                     keep: Callable[[Mapping[str, Any]], bool]
                     ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of tasks answering `search` (search_tasks' loaded filters), within
        `organisation_ids` when given. A search by skill or language reads the search
        index; any other leads with an indexed equality (status or organisation), so the
        page is one range of a (field, sort_id) index."""
        cursor, limit = search["cursor"], search["limit"]
        if search["status"] != "draft" and (search["skill_id"] or search["language"]):
            key = index_key(search["status"], search["skill_id"], search["language"])
            return self.search_indexed(key, keep, cursor, limit)
        return self._task_page(self.search_filter(search, organisation_ids), cursor, limit)

    @staticmethod
    def search_filter(search: Mapping[str, Any], organisation_ids: list[str] | None = None
                      ) -> dict[str, Any]:
        """The filter of a search answered from the tasks collection itself."""
        query: dict[str, Any] = {"status": search["status"]}
        if search["skill_id"]:
            query["skill_ids"] = {"$in": [search["skill_id"]]}
        if search["language"]:
            query["language_codes"] = {"$in": [search["language"]]}
        for name in ("urgency", "mode", "organisation_id"):
            if search[name]:
                query[name] = search[name]
        window = {}
        if search["starts_after"]:
            window["$gte"] = search["starts_after"]
        if search["starts_before"]:
            window["$lt"] = search["starts_before"]
        if window:
            query["starts_at"] = window
        if organisation_ids is not None:
            query["organisation_id"] = {"$in": organisation_ids}
        return query

    def _task_page(self, query: dict[str, Any], cursor: str | None, limit: int
                   ) -> tuple[list[dict[str, Any]], str | None]:
        return self.page(TASKS, query, LISTED, cursor, limit, key="sort_id")

    def search_indexed(self, key: str, keep: Callable[[Mapping[str, Any]], bool],
                       cursor: str | None, limit: int
                       ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of tasks whose search entry has `key`, in id order, that `keep` accepts as
        stored now: an entry may lag its task by an event, the task itself decides. A page
        can come back short with a cursor when many entries in a row were not kept."""
        found: list[dict[str, Any]] = []
        after, batch = cursor, limit + 1
        for _ in range(SEARCH_ROUNDS):
            span: dict[str, Any] = {"key": {"$eq": key}}  # $eq: nx-27017 then uses the index
            if after:
                span["task_id"] = {"$gt": after}
            ids = [entry["task_id"] for entry in self.db[TASK_INDEX].find(
                span, {"_id": 0, "task_id": 1}).sort("task_id", 1).limit(batch)]
            if ids:
                # by `_id` alone: with more conditions nx-27017 picks another index, and scans
                docs = {doc["_id"]: doc for doc in self.db[TASKS].find(
                    {"_id": {"$in": ids}}, LISTED) if keep(doc)}
                for task_id in ids:
                    if task_id in docs:
                        found.append(docs[task_id])
                        if len(found) > limit:
                            return found[:limit], found[limit - 1]["_id"]
                after = ids[-1]
            if len(ids) < batch:
                return found, None
            batch = min(batch * 4, 1000)
        return found, after

    def index_task(self, task_id: str) -> None:
        """Bring the task's search entries in line with the task as stored now; safe to
        repeat and in any order (an entry is only replaced or removed by a newer revision)."""
        task = self.db[TASKS].find_one({"_id": task_id}, {
            "status": 1, "skill_ids": 1, "language_codes": 1, "version": 1, "slots_rev": 1})
        if task is None:
            return
        entries = index_entries(task)
        rev = task["version"] + task.get("slots_rev", 0)
        self.db[TASK_INDEX].delete_many({"task_id": {"$eq": task_id},
                                         "_id": {"$nin": [e["_id"] for e in entries]},
                                         "task_rev": {"$lt": rev}})
        if not entries:
            return
        try:
            self.db[TASK_INDEX].bulk_write(
                [UpdateOne({"_id": entry.pop("_id"), "task_rev": {"$lt": rev}},
                           {"$set": entry}, upsert=True) for entry in entries], ordered=False)
        except BulkWriteError as exc:
            # a duplicate key: that entry is already at this revision or a newer one
            if any(error.get("code") != 11000 for error in exc.details["writeErrors"]):
                raise

    # -- assignments --------------------------------------------------------------------
    def insert_assignment(self, doc: dict[str, Any], envelopes: Iterable[Mapping[str, Any]]
                          ) -> dict[str, Any]:
        """Insert; returns the document exactly as stored (see compare_and_replace)."""
        stored = self.insert_assignment_if_none(doc, envelopes)
        if stored is None:
            raise Conflict("This volunteer already has a live assignment on this task.",
                           {"volunteer_id": ["Already applied, offered or assigned."]})
        return stored

    def insert_assignment_if_none(self, doc: dict[str, Any],
                                  envelopes: Iterable[Mapping[str, Any]]
                                  ) -> dict[str, Any] | None:
        """Insert unless the volunteer has a live assignment on the task (None then)."""
        try:
            return self.insert_new(ASSIGNMENTS, new_with_outbox(doc, envelopes))
        except DuplicateKeyError:
            return None

    def assignment(self, assignment_id: str) -> dict[str, Any]:
        doc = self.db[ASSIGNMENTS].find_one({"_id": assignment_id}, HIDDEN)
        if doc is None:
            raise NotFound("No such assignment.", {"assignment_id": [assignment_id]})
        return doc

    def live_assignment(self, key: str) -> dict[str, Any] | None:
        return self.db[ASSIGNMENTS].find_one({"live_key": key}, HIDDEN)

    def update_assignment(self, doc: Mapping[str, Any], set_: Mapping[str, Any],
                          envelopes: Iterable[Mapping[str, Any]], live: bool = True,
                          unset: Iterable[str] = (), stored: Mapping[str, Any] | None = None
                          ) -> dict[str, Any] | None:
        """CAS on the assignment's version; None when another worker moved it first."""
        gone = [*unset, *([] if live else ["live_key"])]
        return self.compare_and_replace(ASSIGNMENTS, doc["_id"], doc["version"], set_,
                                        envelopes, gone, stored=stored)

    def assignments_due(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Offers past their expiry, accepted volunteers past their start grace."""
        return list(self.db[ASSIGNMENTS].find(
            {"status": {"$in": ["offered", "accepted"]}, "due_at": {"$lt": now}},
            HIDDEN).limit(limit))

    def assignments_of(self, field: str, value: str, statuses: Iterable[str] | None = None
                       ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {field: value}
        if statuses is not None:
            query["status"] = {"$in": list(statuses)}
        return list(self.db[ASSIGNMENTS].find(query, HIDDEN).sort("_id", 1).limit(1000))

    # -- read models from registry events ----------------------------------------------------
    def snapshot(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        return self.db[collection].find_one({"_id": doc_id})

    def snapshots(self, collection: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {d["_id"]: d for d in self.db[collection].find({"_id": {"$in": list(ids)}})}

    def erase_volunteer(self, volunteer_id: str) -> None:
        """Keep a tombstone (so late events are ignored) and no personal data."""
        self.db[VOLUNTEERS].replace_one({"_id": volunteer_id},
                                        {"_id": volunteer_id, "status": "erased",
                                         "version": 1 << 62}, upsert=True)
        for assignment in self.db[ASSIGNMENTS].find({"volunteer_id": volunteer_id}):
            # the volunteer's notes and the coordinator's reasons are free text about them
            hours = [{**entry, "note": None, "reason": None}
                     for entry in assignment.get("hours", [])]
            if self.compare_and_replace(ASSIGNMENTS, assignment["_id"], assignment["version"],
                                        {"hours": hours}, [],
                                        unset=("note", "feedback.volunteer.comment",
                                               "feedback.organisation.comment")) is None:
                raise Contention(f"assignment {assignment['_id']} changed during erasure")
        for held in self.db[CREDENTIALS].find({"volunteer_id": volunteer_id}):
            if self.compare_and_replace(CREDENTIALS, held["_id"], held["version"], {}, [],
                                        unset=("token",)) is None:
                raise Contention(f"credential {held['_id']} changed during erasure")
        self.db[CALENDAR_TOKENS].delete_many({"volunteer_id": volunteer_id})

    # -- calendar feed tokens -------------------------------------------------------------
    def set_calendar_token(self, volunteer_id: str, token_hash: str, now: datetime) -> None:
        """One live token per volunteer: a new one replaces (revokes) the old."""
        for _ in range(3):  # two rotations at once: the last one wins
            self.db[CALENDAR_TOKENS].delete_many({"volunteer_id": volunteer_id})
            try:
                self.db[CALENDAR_TOKENS].insert_one(
                    {"_id": token_hash, "volunteer_id": volunteer_id, "created_at": now})
                return
            except DuplicateKeyError:
                continue
        raise Conflict("The calendar link is being changed; try again.", {})

    def calendar_owner(self, token_hash: str) -> str | None:
        doc = self.db[CALENDAR_TOKENS].find_one({"_id": token_hash})
        return doc["volunteer_id"] if doc else None

    def tasks_by_id(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {d["_id"]: d for d in self.db[TASKS].find({"_id": {"$in": list(ids)}}, HIDDEN)}

    # -- credentials ------------------------------------------------------------------------
    def next_status_slot(self) -> tuple[int, int]:
        """(status list id, index in it) for a new credential: a counter, so never reused."""
        try:
            self.db[COUNTERS].insert_one({"_id": "credential_status", "next": 0})
        except DuplicateKeyError:
            pass
        after = self.db[COUNTERS].find_one_and_update(
            {"_id": "credential_status"}, {"$inc": {"next": 1}}, return_document=AFTER)
        n = after["next"] - 1
        return n // STATUS_LIST_SIZE + 1, n % STATUS_LIST_SIZE

    def insert_credential(self, doc: dict[str, Any],
                          envelopes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        return visible(self.insert_new(CREDENTIALS, new_with_outbox(doc, envelopes)))

    def credential(self, credential_id: str) -> dict[str, Any]:
        doc = self.db[CREDENTIALS].find_one({"_id": credential_id}, HIDDEN)
        if doc is None:
            raise NotFound("No such credential.", {"credential_id": [credential_id]})
        return doc

    def credentials_of(self, assignment_id: str) -> list[dict[str, Any]]:
        return list(self.db[CREDENTIALS].find({"assignment_id": assignment_id}, HIDDEN))

    def status_lists_in_use(self) -> int:
        counter = self.db[COUNTERS].find_one({"_id": "credential_status"})
        return 0 if counter is None else (counter["next"] - 1) // STATUS_LIST_SIZE + 1

    def revoked_indices(self, list_id: int) -> list[int]:
        return [d["index"] for d in self.db[CREDENTIALS].find(
            {"list_id": list_id, "status": "revoked"}, {"index": 1})]

