"""Taking and giving back slots: the steps around the task document's atomic updates.

A claim touches two documents (the task's slot counter and the volunteer's assignment)
without a transaction, so each step is a conditional update that only one worker can
win, and the order leaves every crash in a state `reconcile` repairs:

    claim:    task: take slot (and mark the task for an audit of its holders later)
              → assignment: inserted accepted with its event (or the live one confirmed)
    release:  assignment: leaves live state + its event → task: give slot back
              → promote the first eligible waitlisted volunteer → filled/reopened flip

While volunteers wait, a freed slot is theirs: a claim needs an empty waitlist (or,
when no one in line may take the slot now, the very line it judged), so a sign-up never
overtakes the line between a release and its promotion.

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
from services.common.change import Change
from services.common.errors import Conflict, Forbidden
from services.common.ids import new_id
from services.common.storage import epoch_ms
from services.tasks import domain
from services.tasks.store import ASSIGNMENTS, FOR_CLAIM, TASKS, VOLUNTEERS, TasksStore

log = logging.getLogger(__name__)

# a slot held this long without its assignment was left by a crash; a claim that has
# taken half of it gives up rather than write an assignment the audit may not see
AUDIT_AFTER = timedelta(minutes=5)
WAITLIST_LIMIT = 200
Commit = Callable[..., Any]  # the worker's `outbox.commit`


def application_refused() -> Forbidden:
    return Forbidden("Not allowed.", {"organisation_id": [
        "An application is accepted by a coordinator of the organisation."]})


class SlotKeeper:
    def __init__(self, store: TasksStore, commit: Commit, policy: domain.Policy,
                 now: datetime) -> None:
        self.store, self.commit = store, commit
        self.policy, self.now = policy, now
        self.audit_at_ms = epoch_ms(now + AUDIT_AFTER)
        self.started = time.monotonic()  # the audit time runs from here

    # -- small helpers ----------------------------------------------------------------
    def write_assignment(self, doc: Mapping[str, Any], change: Change, live: bool = True,
                         stored: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Write a change of an assignment at its version with its events; None when
        another worker moved it first (then nothing is announced)."""
        return self.commit(ASSIGNMENTS, doc["_id"], change.events, lambda envelopes: (
            self.store.update_assignment(doc, change.set, envelopes, live, change.unset,
                                         stored)))

    def flip(self, task: Mapping[str, Any], to: str) -> dict[str, Any] | None:
        """filled, reopened or in progress, once, whichever worker gets there first."""
        change = domain.flip(task, to)
        return self.commit(TASKS, task["_id"], change.events, lambda envelopes: (
            self.store.flip_status(task["_id"], to, domain.FLIPS_FROM[to], envelopes)))

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

    def take(self, caller: Caller, task_id: str, volunteer_id: str) -> dict[str, Any]:
        """`accept` as the caller asks it: the volunteer takes a slot (an offer, or a
        sign-up while slots are free), or a coordinator of the task's organisation accepts
        an application. Authorisation and eligibility are decided here, once."""
        volunteer = self.store.snapshot(VOLUNTEERS, volunteer_id)
        existing = None
        oneself = caller.is_admin or caller.user_id == volunteer_id
        if oneself:
            # a free slot in two writes; anything else is decided on the full read below
            gaps = domain.vetting_gaps(volunteer)
            if gaps is not None and (done := self.sign_up(task_id, volunteer_id, gaps,
                                                          caller)):
                return done
        task = self.store.task(task_id, FOR_CLAIM)
        may_approve = domain.is_org_member(caller, task["organisation_id"])
        if not oneself:
            existing = self.store.live_assignment(domain.live_key(task["_id"], volunteer_id))
            if existing is None or existing["status"] != "applied":
                domain.require_self(caller, volunteer_id)
            domain.require_org_member(caller, task["organisation_id"])
        domain.check_eligible(task, volunteer)
        return self.accept(task, volunteer_id, existing, may_approve)

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
            line = self.store.line(task["_id"])
            if line["free"] > 0 and line.get("waitlist"):
                return self._behind_the_line(task, volunteer_id, line, existing, may_approve)
            # never taking over a slot the volunteer already holds: its owner (a claim
            # in flight, a promotion, a release) may be about to give it back
            raise Conflict("No free slot on this task.", {"task_id": [
                "All slots are taken; join the waitlist to be offered the next one."]})
        return self._record_holder(taken, volunteer_id, existing, lambda: may_approve)

    def _behind_the_line(self, task: Mapping[str, Any], volunteer_id: str,
                         line: Mapping[str, Any], existing: Mapping[str, Any] | None,
                         may_approve: bool) -> dict[str, Any]:
        """A slot is free while volunteers wait: it is owed to the first eligible of them
        (a release promotes them; here it is made sure of). Only when no one in line may
        take it now (paused, vetting lapsed) does anyone else, and only while the line
        is still the one judged."""
        waiting = list(line["waitlist"])
        volunteers = self.store.snapshots(VOLUNTEERS, waiting)
        if domain.eligible_first(waiting, volunteers, task) is None:
            taken = self.store.claim_slot(task["_id"], volunteer_id, domain.CLAIMABLE,
                                          self.audit_at_ms, waiting=waiting)
            if taken is not None:
                return self._record_holder(taken, volunteer_id, existing, lambda: may_approve)
        else:
            self.promote_waitlist({**task, **line})
            mine = self.store.live_assignment(domain.live_key(task["_id"], volunteer_id))
            if mine and mine["status"] == "offered" and mine.get("offer_kind") == "reserved":
                return self._confirm(mine, task)  # it was this volunteer's turn
        raise Conflict("No free slot on this task.", {"task_id": [
            "Volunteers are waiting for this task; join the waitlist to be offered the "
            "next slot in turn."]})

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
            stored = self.commit(ASSIGNMENTS, doc["_id"], [domain.created(doc)],
                                 lambda envelopes: self.store.insert_assignment_if_none(
                                     doc, envelopes))
            if stored is not None:
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
        change = domain.assignment_change(assignment, "accepted", self.now,
                                          unset=("offer_kind",), **self._accepted_fields(task))
        after = self.write_assignment(assignment, change)
        if after is None:
            raise Conflict("The assignment changed meanwhile; try again.", {})
        return after

    # -- release ------------------------------------------------------------------------
    def release(self, assignment: Mapping[str, Any], to: str, reason: str | None = None
                ) -> dict[str, Any] | None:
        """Move an assignment out of its live state; give back its slot if it held one."""
        change = domain.assignment_change(assignment, to, self.now, unset=("due_at",),
                                          event={"reason": reason}, reason=reason)
        after = self.write_assignment(assignment, change, live=False)
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
        rounds = WAITLIST_LIMIT + task.get("slots", 0)  # each lost round is another's win
        while task["free"] > 0 and task.get("waitlist") and task["status"] in (
                *domain.CLAIMABLE, "filled") and rounds > 0:
            rounds -= 1
            volunteers = self.store.snapshots(VOLUNTEERS, task["waitlist"])
            chosen = domain.eligible_first(task["waitlist"], volunteers, task)
            if chosen is None:
                return
            after = self.store.promote(task["_id"], chosen, (*domain.CLAIMABLE, "filled"),
                                       self.audit_at_ms)
            if after is None:
                # another worker promoted `chosen` first, or the line moved: read it again
                # rather than leave a freed slot for whoever comes next
                task = self.store.task(task["_id"])
                continue
            waiting = self.store.live_assignment(domain.live_key(task["_id"], chosen))
            if waiting is None or waiting["status"] != "waitlisted" \
                    or not self.offer_reserved(waiting, after):
                self.give_back(task["_id"], chosen)  # they left the line meanwhile
                return
            task = after

    def offer_reserved(self, waiting: Mapping[str, Any], task: Mapping[str, Any]) -> bool:
        expires = self.policy.offer_expiry(task, self.now)
        change = domain.assignment_change(
            waiting, "offered", self.now,
            event={"source": "waitlist", "offer_expires_at": expires.isoformat()},
            offer_kind="reserved", due_at=expires, offer_expires_at=expires)
        return self.write_assignment(waiting, change) is not None

    def settle(self, task: Mapping[str, Any]) -> None:
        """Flip open/filled to match the free count; each flip happens once."""
        if task["status"] == "open" and task["free"] == 0:
            self.flip(task, "filled")
        elif task["status"] == "filled" and task["free"] > 0:
            self.flip(task, "open")

    # -- waitlist -----------------------------------------------------------------------
    def join_waitlist(self, task: Mapping[str, Any], volunteer_id: str) -> dict[str, Any]:
        if len(task.get("waitlist", [])) >= WAITLIST_LIMIT:
            raise Conflict("This waitlist is full.", {"task_id": [
                f"{WAITLIST_LIMIT} volunteers are already waiting."]})
        doc = domain.new_assignment(new_id("asg"), task, volunteer_id, "waitlisted", self.now)
        # the live key: one place in line each
        stored = self.commit(ASSIGNMENTS, doc["_id"], [],
                             lambda envelopes: self.store.insert_assignment(doc, envelopes))
        if stored["_id"] != doc["_id"]:  # a redelivered request: it joined the line before
            return self.store.assignment(stored["_id"])
        if self.store.join_waitlist(task["_id"], volunteer_id, ("open", "filled",
                                                                 "in_progress")) is None:
            # never announced: it leaves without an event
            self.write_assignment(doc, Change(set=domain.move(doc, "withdrawn", self.now)),
                                  live=False)
            raise Conflict("Cannot join this waitlist.", {"task_id": [
                "The task is not open, or you already hold or wait for a slot."]})
        # announced only once the place in line is really taken
        self.write_assignment(doc, Change(events=[domain.created(doc)]))
        # a slot may have freed between reading the task and joining
        self.promote_waitlist(self.store.task(task["_id"]))
        return self.store.assignment(doc["_id"])

    # -- timers -------------------------------------------------------------------------
    def expire_due(self, assignment: Mapping[str, Any]) -> str | None:
        """An offer past its expiry, or an accepted volunteer who never started."""
        status = assignment["status"]
        if status == "offered":
            done = self.release(assignment, "expired", "offer expired")
            return "expired" if done else None
        if status == "accepted":
            done = self.release(assignment, "no_show", "did not start in time")
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
