"""Taking and giving back slots: the steps around the task document's atomic updates.

A claim touches two documents (the task's slot counter and the volunteer's assignment)
without a transaction, so each step is a conditional update that only one worker can
win, and the order leaves every crash in a state `reconcile` repairs:

    claim:    live assignment ("claiming", due soon) → task: take slot
              → assignment: accepted + accepted event
    release:  assignment: leaves live state + its event → task: give slot back
              → promote the first eligible waitlisted volunteer → filled/reopened flip

Used by the service's RPCs and timers alike; knows nothing of nameko.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from services.common.envelope import DomainEvent
from services.common.errors import Conflict, Forbidden
from services.common.ids import new_id
from services.tasks import domain, events
from services.tasks.store import ASSIGNMENTS, TASKS, VOLUNTEERS, TasksStore

log = logging.getLogger(__name__)

CLAIM_WINDOW = timedelta(minutes=1)  # a "claiming" assignment older than this is stale
WAITLIST_LIMIT = 200
Wrap = Callable[[Iterable[DomainEvent], datetime], list[dict[str, Any]]]
Publish = Callable[[str, str, Iterable[Mapping[str, Any]]], None]


class SlotKeeper:
    def __init__(self, store: TasksStore, wrap: Wrap, publish: Publish,
                 policy: domain.Policy, now: datetime) -> None:
        self.store, self.wrap, self.publish = store, wrap, publish
        self.policy, self.now = policy, now

    # -- small helpers ----------------------------------------------------------------
    def write_assignment(self, doc: Mapping[str, Any], set_: Mapping[str, Any],
                          evts: Iterable[DomainEvent], live: bool = True,
                          unset: Iterable[str] = (), stored: Mapping[str, Any] | None = None
                          ) -> dict[str, Any] | None:
        """Change an assignment at its version with its events, then publish them; None
        when another worker moved it first."""
        envelopes = self.wrap(evts, self.now)
        after = self.store.update_assignment(doc, set_, envelopes, live, unset, stored)
        if after is not None:
            self.publish(ASSIGNMENTS, doc["_id"], envelopes)
        return after

    def _task_step(self, step: Callable[[list[dict[str, Any]]], dict[str, Any] | None],
                   task_id: str, evts: Iterable[DomainEvent]) -> dict[str, Any] | None:
        envelopes = self.wrap(evts, self.now)
        after = step(envelopes)
        if after is not None:
            self.publish(TASKS, task_id, envelopes)
        return after

    # -- claim ------------------------------------------------------------------------
    def accept(self, task: Mapping[str, Any], volunteer_id: str,
               existing: Mapping[str, Any] | None = None, may_approve: bool = False
               ) -> dict[str, Any]:
        """Give the volunteer a slot; Conflict when none is free.

        Without `existing`, a sign-up starts by inserting its live assignment: the common
        case (no earlier assignment) then costs no read to learn that there was none.
        `may_approve`: the caller may turn an application into an accepted assignment.
        """
        if existing is None:
            if task["status"] in domain.CLAIMABLE:
                fresh = self._new_claiming(task, volunteer_id)
                stored = self.store.insert_assignment_if_none(fresh, [])
                if stored is not None:
                    return self._claim(task, volunteer_id, fresh, stored)
            # an offer, an application, or a slot kept from the waitlist
            existing = self.store.live_assignment(domain.live_key(task["_id"], volunteer_id))
        if existing and existing["status"] == "applied" and not may_approve:
            raise Forbidden("Not allowed.", {"organisation_id": [
                "An application is accepted by a coordinator of the organisation."]})
        if existing and existing["status"] in domain.HOLDS_SLOT:
            return dict(existing)  # accepting twice is not an error
        if existing and existing["status"] == "offered" \
                and existing.get("offer_kind") == "reserved":
            return self._confirm(existing, task)  # the slot was kept for this offer
        if task["status"] not in domain.CLAIMABLE:
            raise Conflict("No free slot on this task.", {"task_id": [
                f"Task is {task['status']}; join the waitlist instead."
                if task["status"] == "filled" else f"Task is {task['status']}."]})
        if existing and existing["status"] in ("applied", "offered", "claiming", "waitlisted"):
            return self._claim(task, volunteer_id, existing, None)
        fresh = self._new_claiming(task, volunteer_id)
        return self._claim(task, volunteer_id, fresh, self.store.insert_assignment(fresh, []))

    def _new_claiming(self, task: Mapping[str, Any], volunteer_id: str) -> dict[str, Any]:
        return domain.new_assignment(new_id("asg"), task, volunteer_id, "claiming", self.now,
                                     due_at=self.now + CLAIM_WINDOW)

    def _claim(self, task: Mapping[str, Any], volunteer_id: str,
               assignment: Mapping[str, Any], stored: Mapping[str, Any] | None
               ) -> dict[str, Any]:
        """Take the slot, then confirm the live assignment (`stored`: as just inserted)."""
        after = self._task_step(
            lambda env: self.store.claim_slot(task["_id"], volunteer_id, domain.CLAIMABLE, env),
            task["_id"], [])
        if after is None:
            after = self.store.holds_slot(task["_id"], volunteer_id)
            if after is None:
                if assignment["status"] == "claiming":
                    self.store.update_assignment(assignment, {"status": "expired"}, [],
                                                 live=False, stored=stored)
                raise Conflict("No free slot on this task.", {"task_id": [
                    "All slots are taken; join the waitlist to be offered the next one."]})
            # else: a retry after a crash between the two writes
        try:
            confirmed = self._confirm(assignment, after, stored)
        except Conflict:
            # the assignment moved meanwhile (offer expired, declined): unless it is
            # accepted after all, the slot just taken goes back
            current = self.store.live_assignment(domain.live_key(task["_id"], volunteer_id))
            if current is not None and current["status"] in domain.HOLDS_SLOT:
                return current
            self.give_back(task["_id"], volunteer_id)
            raise
        self.settle(after)
        return confirmed

    def _confirm(self, assignment: Mapping[str, Any], task: Mapping[str, Any],
                 stored: Mapping[str, Any] | None = None) -> dict[str, Any]:
        start_by = max(task.get("starts_at") or self.now, self.now) + timedelta(
            hours=self.policy.start_grace_hours)
        set_ = {"status": "accepted", "accepted_at": self.now, "due_at": start_by,
                "history": [*assignment.get("history", []),
                            {"status": "accepted", "at": self.now}][-50:]}
        evts = [domain.assignment_event(events.ASSIGNMENT_ACCEPTED, assignment)]
        after = self.write_assignment(assignment, set_, evts, unset=("offer_kind",),
                                       stored=stored)
        if after is None:
            raise Conflict("The assignment changed meanwhile; try again.", {})
        return after

    # -- release ------------------------------------------------------------------------
    def release(self, assignment: Mapping[str, Any], to: str, event_type: str,
                reason: str | None = None) -> dict[str, Any] | None:
        """Move an assignment out of its live state; give back its slot if it held one."""
        set_ = domain.move(assignment, to, self.now, reason=reason)
        event = domain.assignment_event(event_type, assignment, reason=reason)
        after = self.write_assignment(assignment, set_, [event], live=False,
                                       unset=("due_at",))
        if after is None:
            return None  # another worker (or replica's timer) moved it first
        if assignment["status"] == "waitlisted":
            self.store.leave_waitlist(assignment["task_id"], assignment["volunteer_id"])
        # also for a waitlisted one: a promotion may have given it a slot meanwhile
        self.give_back(assignment["task_id"], assignment["volunteer_id"])
        return after

    def give_back(self, task_id: str, volunteer_id: str) -> None:
        task = self.store.release_slot(task_id, volunteer_id, [])
        if task is not None:
            self.promote_waitlist(task)
            self.settle(self.store.task(task_id))

    def promote_waitlist(self, task: Mapping[str, Any]) -> None:
        """Offer freed slots to the first eligible volunteers waiting, each exactly once."""
        while task["free"] > 0 and task.get("waitlist") and task["status"] in (
                *domain.CLAIMABLE, "filled"):
            volunteers = self.store.snapshots(VOLUNTEERS, task["waitlist"])
            chosen = domain.eligible_first(task["waitlist"], volunteers, task)
            if chosen is None:
                return
            after = self.store.promote(task["_id"], chosen, (*domain.CLAIMABLE, "filled"), [])
            if after is None:
                return  # another replica promoted someone: it carries on from there
            waiting = self.store.live_assignment(domain.live_key(task["_id"], chosen))
            if waiting is None or waiting["status"] != "waitlisted" \
                    or not self.offer_reserved(waiting, after):
                self.give_back(task["_id"], chosen)  # they left the line meanwhile
                return
            task = after

    def offer_reserved(self, waiting: Mapping[str, Any], task: Mapping[str, Any]) -> bool:
        expires = self.policy.offer_expiry(task, self.now)
        set_ = domain.move(waiting, "offered", self.now, offer_kind="reserved", due_at=expires,
                           offer_expires_at=expires)
        return self.write_assignment(waiting, set_, [domain.assignment_event(
            events.ASSIGNMENT_OFFERED, waiting, source="waitlist",
            offer_expires_at=expires.isoformat())]) is not None

    def settle(self, task: Mapping[str, Any]) -> None:
        """Flip open/filled to match the free count; each flip happens once."""
        if task["status"] == "open" and task["free"] == 0:
            self._task_step(lambda env: self.store.set_status_if(
                task["_id"], {"status": "open", "free": 0}, "filled", env),
                task["_id"], [domain.fill_event(task)])
        elif task["status"] == "filled" and task["free"] > 0:
            self._task_step(lambda env: self.store.set_status_if(
                task["_id"], {"status": "filled", "free": {"$gt": 0}}, "open", env),
                task["_id"], [domain.reopen_event(task)])

    # -- waitlist -----------------------------------------------------------------------
    def join_waitlist(self, task: Mapping[str, Any], volunteer_id: str) -> dict[str, Any]:
        if len(task.get("waitlist", [])) >= WAITLIST_LIMIT:
            raise Conflict("This waitlist is full.", {"task_id": [
                f"{WAITLIST_LIMIT} volunteers are already waiting."]})
        doc = domain.new_assignment(new_id("asg"), task, volunteer_id, "waitlisted", self.now)
        self.store.insert_assignment(doc, [])  # the live key: one place in line each
        if self.store.join_waitlist(task["_id"], volunteer_id, ("open", "filled",
                                                                 "in_progress")) is None:
            self.store.update_assignment(doc, {"status": "withdrawn"}, [], live=False)
            raise Conflict("Cannot join this waitlist.", {"task_id": [
                "The task is not open, or you already hold or wait for a slot."]})
        # announced only once the place in line is really taken
        self.write_assignment(doc, {}, [domain.assignment_event(
            events.ASSIGNMENT_WAITLISTED, doc)])
        # a slot may have freed between reading the task and joining
        self.promote_waitlist(self.store.task(task["_id"]))
        return self.store.assignment(doc["_id"])

    # -- timers -------------------------------------------------------------------------
    def expire_due(self, assignment: Mapping[str, Any]) -> str | None:
        """An offer past its expiry, or an accepted volunteer who never started."""
        status = assignment["status"]
        if status == "offered":
            done = self.release(assignment, "expired", events.ASSIGNMENT_EXPIRED,
                                "offer expired")
            return "expired" if done else None
        if status == "accepted":
            done = self.release(assignment, "no_show", events.ASSIGNMENT_NO_SHOW,
                                "did not start in time")
            return "no_show" if done else None
        if status == "claiming":
            task = self.store.task(assignment["task_id"])
            if assignment["volunteer_id"] in task["holders"]:
                self._confirm(assignment, task)
                return "accepted"
            done = self.store.update_assignment(assignment, {"status": "expired"}, [],
                                                live=False, unset=("due_at",))
            return "expired" if done else None
        return None

    def reconcile(self, task: Mapping[str, Any]) -> None:
        """Repair a task left half-way by a crash: slots held with no live assignment,
        promotions without their offer, status out of step with the free count."""
        for volunteer_id in list(task.get("holders", [])):
            live = self.store.live_assignment(domain.live_key(task["_id"], volunteer_id))
            if live is None:
                log.warning("releasing orphan slot of %s on %s", volunteer_id, task["_id"])
                self.give_back(task["_id"], volunteer_id)
            elif live["status"] == "waitlisted":
                self.offer_reserved(live, task)
        self.promote_waitlist(self.store.task(task["_id"]))
        self.settle(self.store.task(task["_id"]))
