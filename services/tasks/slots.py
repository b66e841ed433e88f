"""Taking and giving back slots: the steps around the task document's atomic updates.

A claim touches two documents (the task's slot counter and the volunteer's assignment)
without a transaction, so each step is a conditional update that only one worker can
win, and the order leaves every crash in a state `reconcile` repairs:

    claim:    task: take slot (and mark the task for an audit of its holders later)
              → assignment: inserted accepted with its event (or the live one confirmed)
    release:  assignment: leaves live state + its event → task: give slot back
              → promote the first eligible waitlisted volunteer → filled/reopened flip

A crash between a claim's two writes leaves a holder with no live assignment: once the
task's audit time has passed, `reconcile` gives the slot back (until then the volunteer's
retry is refused as a second claim would be).

Used by the service's RPCs and timers alike; knows nothing of nameko.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from services.common.caller import Caller
from services.common.envelope import DomainEvent
from services.common.errors import Conflict, Forbidden
from services.common.ids import new_id
from services.common.storage import epoch_ms
from services.tasks import domain, events
from services.tasks.store import ASSIGNMENTS, TASKS, VOLUNTEERS, TasksStore

log = logging.getLogger(__name__)

# a slot held this long without its assignment was left by a crash; a claim that has
# taken half of it gives up rather than write an assignment the audit may not see
AUDIT_AFTER = timedelta(minutes=5)
WAITLIST_LIMIT = 200
Wrap = Callable[[Iterable[DomainEvent], datetime], list[dict[str, Any]]]
Publish = Callable[[str, str, Iterable[Mapping[str, Any]]], None]


def application_refused() -> Forbidden:
    return Forbidden("Not allowed.", {"organisation_id": [
        "An application is accepted by a coordinator of the organisation."]})


class SlotKeeper:
    def __init__(self, store: TasksStore, wrap: Wrap, publish: Publish,
                 policy: domain.Policy, now: datetime) -> None:
        self.store, self.wrap, self.publish = store, wrap, publish
        self.policy, self.now = policy, now
        self.audit_at_ms = epoch_ms(now + AUDIT_AFTER)
        self.started = time.monotonic()  # the audit time runs from here

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
    def sign_up(self, task_id: str, volunteer_id: str, vetting_gaps: Iterable[str],
                caller: Caller) -> dict[str, Any] | None:
        """A volunteer's own accept, in two writes when a slot is free: the claim's
        condition carries the task's rules that the volunteer's snapshot can state
        (`domain.vetting_gaps`), then the accepted assignment is inserted. None when the
        claim matched nothing: `accept`, on a full read of the task, decides then."""
        taken = self.store.claim_slot(task_id, volunteer_id, domain.CLAIMABLE,
                                      self.audit_at_ms, vetting_gaps)
        if taken is None:
            return None
        return self._record_holder(taken, volunteer_id, None,
                                   lambda: domain.is_org_member(caller, taken["organisation_id"]))

    def accept(self, task: Mapping[str, Any], volunteer_id: str,
               existing: Mapping[str, Any] | None = None, may_approve: bool = False
               ) -> dict[str, Any]:
        """Give the volunteer a slot; Conflict when none is free.

        `existing`: the volunteer's live assignment, if the caller has read it.
        `may_approve`: the caller may turn an application into an accepted assignment.
        """
        if existing is None:
            existing = self.store.live_assignment(domain.live_key(task["_id"], volunteer_id))
        if existing and existing["status"] == "applied" and not may_approve:
            raise application_refused()
        if existing and existing["status"] in domain.HOLDS_SLOT:
            return dict(existing)  # accepting twice is not an error
        if existing and existing["status"] == "offered" \
                and existing.get("offer_kind") == "reserved":
            return self._confirm(existing, task)  # the slot was kept for this offer
        if task["status"] not in domain.CLAIMABLE:
            raise Conflict("No free slot on this task.", {"task_id": [
                f"Task is {task['status']}; join the waitlist instead."
                if task["status"] == "filled" else f"Task is {task['status']}."]})
        taken = self.store.claim_slot(task["_id"], volunteer_id, domain.CLAIMABLE,
                                      self.audit_at_ms)
        if taken is None:
            # never taking over a slot the volunteer already holds: its owner (a claim
            # in flight, a promotion, a release) may be about to give it back
            raise Conflict("No free slot on this task.", {"task_id": [
                "All slots are taken; join the waitlist to be offered the next one."]})
        return self._record_holder(taken, volunteer_id, existing, lambda: may_approve)

    def _record_holder(self, task: Mapping[str, Any], volunteer_id: str,
                       existing: Mapping[str, Any] | None,
                       may_approve: Callable[[], bool]) -> dict[str, Any]:
        """The volunteer holds a slot of `task` (as CLAIMED): record it in their live
        assignment, a new accepted one unless they have one, or give the slot back."""
        if time.monotonic() - self.started > AUDIT_AFTER.total_seconds() / 2:
            self.give_back(task["_id"], volunteer_id)
            raise Conflict("The store was too slow to take this slot; try again.", {})
        if existing is None:
            doc = domain.new_assignment(new_id("asg"), task, volunteer_id, "accepted",
                                        self.now, **self._accepted_fields(task))
            envelopes = self.wrap([domain.assignment_event(events.ASSIGNMENT_ACCEPTED, doc)],
                                  self.now)
            stored = self.store.insert_assignment_if_none(doc, envelopes)
            if stored is not None:
                self.publish(ASSIGNMENTS, doc["_id"], envelopes)
                self.settle(task)
                return doc
            existing = self.store.live_assignment(domain.live_key(task["_id"], volunteer_id))
        try:
            if existing is None:
                raise Conflict("The assignment changed meanwhile; try again.", {})
            if existing["status"] == "applied" and not may_approve():
                raise application_refused()
            confirmed = self._confirm(existing, task)
        except (Conflict, Forbidden):
            # the assignment moved meanwhile (offer expired, declined): unless it is
            # accepted after all, the slot just taken goes back
            current = self.store.live_assignment(domain.live_key(task["_id"], volunteer_id))
            if current is not None and current["status"] in domain.HOLDS_SLOT:
                return current
            self.give_back(task["_id"], volunteer_id)
            raise
        self.settle(task)
        return confirmed

    def _accepted_fields(self, task: Mapping[str, Any]) -> dict[str, Any]:
        start_by = max(task.get("starts_at") or self.now, self.now) + timedelta(
            hours=self.policy.start_grace_hours)
        return {"accepted_at": self.now, "due_at": start_by}

    def _confirm(self, assignment: Mapping[str, Any], task: Mapping[str, Any]
                 ) -> dict[str, Any]:
        set_ = {**self._accepted_fields(task), "status": "accepted", "history": [
            *assignment.get("history", []), {"status": "accepted", "at": self.now}][-50:]}
        evts = [domain.assignment_event(events.ASSIGNMENT_ACCEPTED, assignment)]
        after = self.write_assignment(assignment, set_, evts, unset=("offer_kind",))
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

    def give_back(self, task_id: str, volunteer_id: str, audited_ms: int | None = None
                  ) -> None:
        task = self.store.release_slot(task_id, volunteer_id, [], audited_ms)
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
            after = self.store.promote(task["_id"], chosen, (*domain.CLAIMABLE, "filled"),
                                       self.audit_at_ms)
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
        return None

    def reconcile(self, task: Mapping[str, Any]) -> None:
        """Repair a task left half-way by a crash: slots held with no live assignment,
        promotions without their offer, status out of step with the free count.

        Holders are judged only once every slot in `task` was taken more than AUDIT_AFTER
        ago (a younger one may have its assignment on the way), and a slot goes back only
        if none was taken since (`audited_ms`)."""
        audited_ms = task.get("claims_audit_ms", 0)
        if audited_ms < epoch_ms(self.now):
            for volunteer_id in list(task.get("holders", [])):
                live = self.store.live_assignment(domain.live_key(task["_id"], volunteer_id))
                if live is None:
                    log.warning("releasing orphan slot of %s on %s", volunteer_id,
                                task["_id"])
                    self.give_back(task["_id"], volunteer_id, audited_ms)
                elif live["status"] == "waitlisted":
                    self.offer_reserved(live, task)
        self.promote_waitlist(self.store.task(task["_id"]))
        self.settle(self.store.task(task["_id"]))
