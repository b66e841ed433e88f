"""Tasks RPC, event and timer entrypoints: validate → domain → store/slots → reply."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nameko.dependency_providers import Config
from nameko.extensions import DependencyProvider
from nameko.rpc import RpcProxy
from werkzeug.wrappers import Request, Response

from services.common import requests
from services.common.caller import COORDINATOR, Caller
from services.common.change import Change
from services.common.consumer import consumes
from services.common.envelope import DomainEvent
from services.common.errors import Conflict, Forbidden, ValidationError, stale_version
from services.common.ids import check_id, new_id
from services.common.outbox import Outbox, OutboxRelay
from services.common.schemas import load, to_wire
from services.common.service import ServiceBase, rpc
from services.common.storage import Store
from services.common.timers import every
from services.common.web import http
from services.contracts import tasks as events
from services.tasks import credentials, domain, schemas
from services.tasks.calendar import volunteer_feed
from services.tasks.slots import SlotKeeper
from services.tasks.store import (
    ASSIGNMENTS,
    CREDENTIALS,
    ORGANISATIONS,
    TASKS,
    VOLUNTEERS,
    TasksStore,
)

CREATE = schemas.CreateTaskSchema()
UPDATE = schemas.UpdateTaskSchema()
VERSION = schemas.VersionSchema()
SEARCH = schemas.TaskSearchSchema()
OFFER = schemas.OfferSchema()
HOURS = schemas.HoursSchema()
DECISION = schemas.HoursDecisionSchema()
FEEDBACK = schemas.FeedbackSchema()
TIMER_BATCH = 200
REGISTRY = "registry"
SERVICE_NAME = "tasks"
JWKS_PATH = "/credentials/jwks.json"
log = logging.getLogger(__name__)


def public_url(config: dict[str, Any], path: str) -> str:
    """`path` at the address the outside world uses (credentials embed it)."""
    return str(config.get("PUBLIC_URL", "http://127.0.0.1:8102")).rstrip("/") + path
# what issue_credential hands out: `urn:uuid:` and a lowercase UUID
CREDENTIAL_ID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class SigningKeys(DependencyProvider):
    """The credential signing keys (PEM files in CREDENTIAL_KEYS_DIR), loaded once.

    With CREDENTIAL_KEYS_AUTOGEN (local runs and tests) a first key is made when the
    folder is empty; production mounts its keys (a Kubernetes secret) and turns it off.
    """

    def setup(self) -> None:
        config = self.container.config
        directory = Path(config.get("CREDENTIAL_KEYS_DIR", ".data/keys"))
        if not any(directory.glob("*.pem")):
            if not config.get("CREDENTIAL_KEYS_AUTOGEN", False):
                raise RuntimeError(f"no credential signing keys in {directory}")
            # replicas started together share the folder: one makes the key
            made = credentials.ensure_key(directory, datetime.now(UTC).strftime("%Y-%m-%d"))
            if made is not None:
                log.warning("generated credential signing key %s", made)
        active = config.get("CREDENTIAL_ACTIVE_KID")
        # YAML reads a date-named kid (2026-06-01) as a date: kids are names
        self.keyring = credentials.KeyRing.load(directory, str(active) if active else None,
                                                public_url(config, JWKS_PATH))

    def get_dependency(self, worker_ctx: Any) -> credentials.KeyRing:
        return self.keyring


class TasksService(ServiceBase, OutboxRelay):
    name = SERVICE_NAME

    store: TasksStore = Store(TasksStore)
    outbox = Outbox()
    config = Config()
    keys = SigningKeys()
    registry = RpcProxy("registry")
    caller: Caller

    # -- plumbing ----------------------------------------------------------------------
    def _policy(self) -> domain.Policy:
        return domain.Policy(
            offer_hours=float(self.config.get("OFFER_HOURS", 48)),
            urgent_offer_hours=float(self.config.get("URGENT_OFFER_HOURS", 6)),
            start_grace_hours=float(self.config.get("START_GRACE_HOURS", 24)))

    def _slots(self) -> SlotKeeper:
        return SlotKeeper(self.store, self.outbox.commit, self._policy(), self.now())

    def _task(self, task_id: Any) -> dict[str, Any]:
        return self.store.task(check_id(task_id, "tsk", "task_id"))

    def _assignment(self, assignment_id: Any) -> dict[str, Any]:
        return self.store.assignment(check_id(assignment_id, "asg", "assignment_id"))

    def _change_task(self, task_id: str, version: int,
                     decide: Callable[[dict[str, Any]], Change]
                     ) -> tuple[dict[str, Any], Change]:
        """Edit a task at `version`, deciding again if a slot claim lands meanwhile."""
        for _ in range(10):
            task = self.store.task(task_id)
            if version != task["version"]:
                if requests.replays(task):
                    return task, Change()  # a redelivered request: its first delivery wrote
                raise stale_version("task", version, task["version"])
            change = decide(task)
            if not change.writes:
                return task, change
            after = self.outbox.commit(TASKS, task_id, change.events, lambda envelopes, task=task,
                                       change=change: self.store.update_task(
                                           task, version, change.set, envelopes, change.unset))
            if after is not None:
                return after, change
        raise Conflict("The task is busy with claims; try again.", {"task_id": [task_id]})

    def _reply(self, doc: dict[str, Any]) -> dict[str, Any]:
        hidden = ("holders", "waitlist", "live_key", "due_at", "sort_id")
        return to_wire({k: v for k, v in doc.items() if k not in hidden})

    # -- tasks ---------------------------------------------------------------------------
    @rpc
    def create_task(self, data: Any) -> dict[str, Any]:
        payload = load(CREATE, data)
        doc = domain.new_task(new_id("tsk"), payload, self.caller, self.now())
        # a draft announces nothing; commit still makes a redelivered request create once
        return self._reply(self.outbox.commit(TASKS, doc["_id"], [], lambda _: (
            self.store.insert_task(doc))))

    @rpc
    def get_task(self, task_id: Any) -> dict[str, Any]:
        task = self._task(task_id)
        if task["status"] == "draft":  # unpublished: only its organisation sees it
            domain.require_org_member(self.caller, task["organisation_id"])
        return self._reply(task)

    @rpc
    def update_task(self, task_id: Any, data: Any) -> dict[str, Any]:
        payload = load(UPDATE, data, partial=True)
        task = self._task(task_id)
        domain.require_org_member(self.caller, task["organisation_id"])
        version = payload.pop("version")
        after, change = self._change_task(
            task["_id"], version, lambda now_task: domain.update_task(now_task, payload,
                                                                      self.now()))
        if "free" in change.set:
            slots = self._slots()
            slots.promote_waitlist(after)
            slots.settle(self.store.task(task["_id"]))
            after = self.store.task(task["_id"])
        return self._reply(after)

    @rpc
    def publish_task(self, task_id: Any, data: Any) -> dict[str, Any]:
        payload = load(VERSION, data)
        task = self._task(task_id)
        domain.require_org_member(self.caller, task["organisation_id"])
        org = self.store.snapshot(ORGANISATIONS, task["organisation_id"])
        after, _ = self._change_task(
            task["_id"], payload["version"],
            lambda now_task: domain.publish(now_task, org["status"] if org else None,
                                            self.now()))
        return self._reply(after)

    @rpc
    def cancel_task(self, task_id: Any, data: Any) -> dict[str, Any]:
        return self._end(task_id, data, "cancelled")

    @rpc
    def complete_task(self, task_id: Any, data: Any) -> dict[str, Any]:
        return self._end(task_id, data, "completed")

    def _end(self, task_id: Any, data: Any, to: str) -> dict[str, Any]:
        payload = load(VERSION, data)
        task = self._task(task_id)
        domain.require_org_member(self.caller, task["organisation_id"])
        after, _ = self._change_task(
            task["_id"], payload["version"],
            lambda now_task: domain.end_task(now_task, to, payload["reason"], self.now()))
        self._close_assignments(after)
        return self._reply(after)

    def _close_assignments(self, task: dict[str, Any]) -> None:
        """When a task ends, live assignments end with it (completed or withdrawn)."""
        slots = self._slots()
        for assignment in self.store.assignments_of("task_id", task["_id"], domain.LIVE):
            if task["status"] == "completed" and assignment["status"] in domain.HOLDS_SLOT:
                slots.write_assignment(assignment, domain.assignment_change(
                    assignment, "completed", self.now(), unset=("due_at",)), live=False)
            else:
                slots.release(assignment, "withdrawn", f"task {task['status']}")

    @rpc
    def search_tasks(self, filters: Any = None) -> dict[str, Any]:
        query = load(SEARCH, filters or {})
        organisation_ids = None
        if query["status"] == "draft" and not self.caller.is_admin:
            self.caller.require(COORDINATOR)  # drafts: only their organisations see them
            mine = sorted(self.caller.org_ids)
            if query["organisation_id"] and query["organisation_id"] not in mine:
                raise Forbidden("Not allowed.", {"organisation_id": ["Not your organisation."]})
            organisation_ids = [query["organisation_id"]] if query["organisation_id"] else mine
        items, cursor = self.store.search_tasks(query, organisation_ids,
                                                lambda task: domain.answers(task, query))
        return {"items": [self._reply(t) for t in items], "next_cursor": cursor}

    # -- assignments ----------------------------------------------------------------------
    def _volunteer_action(self, task: dict[str, Any], volunteer_id: Any) -> str:
        volunteer_id = check_id(volunteer_id, "vol", "volunteer_id")
        domain.require_self(self.caller, volunteer_id)
        domain.check_eligible(task, self.store.snapshot(VOLUNTEERS, volunteer_id))
        return volunteer_id

    @rpc
    def accept(self, task_id: Any, volunteer_id: Any) -> dict[str, Any]:
        """Take a slot: accept an offer or sign up while slots are free (the volunteer),
        or accept an application (a coordinator of the task's organisation)."""
        return self._reply(self._slots().take(self.caller, check_id(task_id, "tsk", "task_id"),
                                              check_id(volunteer_id, "vol", "volunteer_id")))

    @rpc
    def apply(self, task_id: Any, volunteer_id: Any) -> dict[str, Any]:
        check_id(volunteer_id, "vol", "volunteer_id")
        task = self._task(task_id)
        volunteer_id = self._volunteer_action(task, volunteer_id)
        if task["status"] not in domain.CLAIMABLE:
            raise Conflict(f"Task is {task['status']}.", {"task_id": [task["status"]]})
        return self._new_assignment(task, volunteer_id, "applied")

    @rpc
    def offer(self, task_id: Any, data: Any) -> dict[str, Any]:
        """A coordinator (or matching, as `system`) invites a volunteer."""
        payload = load(OFFER, data)
        task = self._task(task_id)
        domain.require_org_member(self.caller, task["organisation_id"])
        if task["status"] not in domain.CLAIMABLE:
            raise Conflict(f"Task is {task['status']}.", {"task_id": [task["status"]]})
        check_id(payload["volunteer_id"], "vol", "volunteer_id")
        domain.check_eligible(task, self.store.snapshot(VOLUNTEERS, payload["volunteer_id"]))
        expires = self._policy().offer_expiry(task, self.now())
        return self._new_assignment(task, payload["volunteer_id"], "offered", due_at=expires,
                                    offer_expires_at=expires, note=payload["note"])

    def _new_assignment(self, task: dict[str, Any], volunteer_id: str, status: str,
                        **extra: Any) -> dict[str, Any]:
        doc = domain.new_assignment(new_id("asg"), task, volunteer_id, status, self.now(),
                                    **extra)
        data = {"offer_expires_at": extra["offer_expires_at"].isoformat()} \
            if "offer_expires_at" in extra else {}
        return self._reply(self.outbox.commit(
            ASSIGNMENTS, doc["_id"], [domain.created(doc, **data)],
            lambda envelopes: self.store.insert_assignment(doc, envelopes)))

    @rpc
    def join_waitlist(self, task_id: Any, volunteer_id: Any) -> dict[str, Any]:
        check_id(volunteer_id, "vol", "volunteer_id")
        task = self._task(task_id)
        volunteer_id = self._volunteer_action(task, volunteer_id)
        return self._reply(self._slots().join_waitlist(task, volunteer_id))

    def _own_or_coordinator(self, assignment: dict[str, Any]) -> None:
        if self.caller.is_admin or self.caller.user_id == assignment["volunteer_id"]:
            return
        domain.require_org_member(self.caller, assignment["organisation_id"])

    @rpc
    def decline(self, assignment_id: Any) -> dict[str, Any]:
        assignment = self._assignment(assignment_id)
        self._own_or_coordinator(assignment)
        return self._release(assignment, "declined")

    @rpc
    def withdraw(self, assignment_id: Any) -> dict[str, Any]:
        assignment = self._assignment(assignment_id)
        domain.require_self(self.caller, assignment["volunteer_id"])
        return self._release(assignment, "withdrawn")

    @rpc
    def mark_no_show(self, assignment_id: Any) -> dict[str, Any]:
        assignment = self._assignment(assignment_id)
        domain.require_org_member(self.caller, assignment["organisation_id"])
        return self._release(assignment, "no_show")

    def _release(self, assignment: dict[str, Any], to: str) -> dict[str, Any]:
        after = self._slots().release(assignment, to)
        if after is None:
            raise Conflict("The assignment changed meanwhile; try again.", {})
        return self._reply(after)

    @rpc
    def start(self, assignment_id: Any) -> dict[str, Any]:
        assignment = self._assignment(assignment_id)
        self._own_or_coordinator(assignment)
        slots = self._slots()
        reply = self._write(assignment, domain.assignment_change(
            assignment, "active", self.now(), unset=("due_at",), started_at=self.now()))
        # the first volunteer starting puts the task in progress (once, whoever wins)
        slots.flip({"_id": assignment["task_id"]}, "in_progress")
        return reply

    def _write(self, assignment: dict[str, Any], change: Change) -> dict[str, Any]:
        after = self._slots().write_assignment(assignment, change)
        if after is None:
            raise Conflict("The assignment changed meanwhile; try again.", {})
        return self._reply(after)

    @rpc
    def submit_hours(self, assignment_id: Any, data: Any) -> dict[str, Any]:
        payload = load(HOURS, data)
        assignment = self._assignment(assignment_id)
        domain.require_self(self.caller, assignment["volunteer_id"])
        task = self.store.task(assignment["task_id"])
        return self._write(assignment, domain.submit_hours(
            assignment, task, payload["hours"], payload["session_id"], payload["note"],
            self.now()))

    @rpc
    def verify_hours(self, assignment_id: Any, data: Any) -> dict[str, Any]:
        return self._decide_hours(assignment_id, data, verified=True)

    @rpc
    def reject_hours(self, assignment_id: Any, data: Any) -> dict[str, Any]:
        return self._decide_hours(assignment_id, data, verified=False)

    def _decide_hours(self, assignment_id: Any, data: Any, verified: bool) -> dict[str, Any]:
        payload = load(DECISION, data)
        assignment = self._assignment(assignment_id)
        domain.require_org_member(self.caller, assignment["organisation_id"])
        task = self.store.task(assignment["task_id"])
        return self._write(assignment, domain.decide_hours(
            assignment, task, payload["entry_id"], verified, payload["reason"], self.caller,
            self.now()))

    @rpc
    def leave_feedback(self, assignment_id: Any, data: Any) -> dict[str, Any]:
        payload = load(FEEDBACK, data)
        assignment = self._assignment(assignment_id)
        if self.caller.user_id == assignment["volunteer_id"]:
            by = "volunteer"
        else:
            domain.require_org_member(self.caller, assignment["organisation_id"])
            by = "organisation"
        return self._write(assignment, domain.leave_feedback(assignment, by, payload,
                                                             self.now()))

    @rpc
    def list_assignments(self, task_id: Any = None, volunteer_id: Any = None
                         ) -> list[dict[str, Any]]:
        if volunteer_id is not None:
            volunteer_id = check_id(volunteer_id, "vol", "volunteer_id")
            if not self.caller.has_any(COORDINATOR):
                domain.require_self(self.caller, volunteer_id)
            found = self.store.assignments_of("volunteer_id", volunteer_id)
            if not self.caller.is_admin and self.caller.user_id != volunteer_id:
                found = [a for a in found if a["organisation_id"] in self.caller.org_ids]
        elif task_id is not None:
            task = self._task(task_id)
            domain.require_org_member(self.caller, task["organisation_id"])
            found = self.store.assignments_of("task_id", task["_id"])
        else:
            raise Forbidden("Not allowed.", {"task_id": ["Give a task or a volunteer."]})
        return [self._reply(a) for a in found]

    # -- Open Badges 3.0 credentials -------------------------------------------------------
    def _public_url(self, path: str) -> str:
        return public_url(self.config, path)

    def _issuer(self) -> dict[str, Any]:
        return {"id": self._public_url("/"), "name": self.config.get("ISSUER_NAME", "Sanad")}

    @rpc
    def issue_credential(self, assignment_id: Any) -> dict[str, Any]:
        """A signed OpenBadgeCredential (VC-JWT) for the volunteer's verified hours."""
        assignment = self._assignment(assignment_id)
        domain.require_self(self.caller, assignment["volunteer_id"])
        hours = domain.verified_hours(assignment)
        if hours <= 0:
            raise Conflict("Credentials are issued for verified hours only.",
                           {"hours": ["No verified hours on this assignment yet."]})
        for held in self.store.credentials_of(assignment["_id"]):
            if held["status"] == "active" and held["hours"] == hours:
                return self._credential_reply(held)  # nothing new to attest
        task = self.store.task(assignment["task_id"])
        org = self.store.snapshot(ORGANISATIONS, task["organisation_id"]) or {}
        list_id, index = self.store.next_status_slot()
        credential_id = f"urn:uuid:{uuid.uuid4()}"
        credential = credentials.build_credential(
            credential_id=credential_id, issuer=self._issuer(),
            organisation={"id": task["organisation_id"],
                          "name": org.get("name") or task["organisation_id"]},
            volunteer_id=assignment["volunteer_id"],
            achievement={"task_id": task["_id"], "title": task["title"],
                         "description": task.get("description") or "",
                         "skills": self._skill_labels(task.get("skills_practised", [])),
                         "hours": hours},
            status={"list_url": self._public_url(f"/credentials/status/{list_id}"),
                    "index": index},
            now=self.now())
        token = credentials.sign(credential, self.keys)
        doc = {"_id": credential_id, "assignment_id": assignment["_id"],
               "task_id": task["_id"], "volunteer_id": assignment["volunteer_id"],
               "organisation_id": task["organisation_id"], "hours": hours,
               "list_id": list_id, "index": index, "status": "active", "version": 1,
               "issued_at": self.now(), "kid": self.keys.active_kid, "token": token}
        event = DomainEvent(events.CREDENTIAL_ISSUED, credential_id, _credential_data(doc))
        return self._credential_reply(self.outbox.commit(
            CREDENTIALS, credential_id, [event],
            lambda envelopes: self.store.insert_credential(doc, envelopes)))

    def _credential_reply(self, doc: dict[str, Any]) -> dict[str, Any]:
        return to_wire({"credential_id": doc["_id"], "status": doc["status"],
                        "version": doc["version"],
                        "hours": doc["hours"], "token": doc.get("token"),
                        "jwks_url": self._public_url(JWKS_PATH)})

    def _skill_labels(self, skill_ids: list[str]) -> list[dict[str, Any]]:
        """Skill names in the three languages, from the registry's taxonomy."""
        labels: dict[str, dict[str, str]] = {skill: {} for skill in skill_ids}
        for lang in ("ar", "en", "fr"):
            for skill in self.registry.list_skills(lang):
                if skill["id"] in labels:
                    labels[skill["id"]][lang] = skill["label"]
        return [{"id": skill, "labels": names or {"en": skill}}
                for skill, names in labels.items()]

    @rpc
    def revoke_credential(self, credential_id: Any, data: Any) -> dict[str, Any]:
        """Withdraw a credential (hours later found false): the status list shows it."""
        payload = load(VERSION, data)
        if not isinstance(credential_id, str) or not CREDENTIAL_ID.fullmatch(credential_id):
            raise ValidationError("Invalid input.", {"credential_id": ["Not a credential id."]})
        held = self.store.credential(credential_id)
        domain.require_org_member(self.caller, held["organisation_id"])
        if held["status"] == "revoked":
            return self._credential_reply(held)
        event = DomainEvent(events.CREDENTIAL_REVOKED, credential_id,
                            {**_credential_data(held), "reason": payload["reason"]})
        after = self.outbox.commit(CREDENTIALS, credential_id, [event], lambda envelopes: (
            self.store.compare_and_replace(
                CREDENTIALS, credential_id, payload["version"],
                {"status": "revoked", "revoked_at": self.now(), "reason": payload["reason"]},
                envelopes)))
        if after is None:
            raise Conflict("The credential changed meanwhile.", {"version": []})
        return self._credential_reply(after)

    @http("GET", JWKS_PATH)
    def jwks(self, request: Request) -> Response:
        """Every key that ever signed, so credentials outlive key rotation."""
        return Response(json.dumps(self.keys.jwks()), mimetype="application/jwk-set+json",
                        headers={"Cache-Control": "public, max-age=300"})

    @http("GET", "/credentials/status/<int:list_id>")
    def status_list(self, request: Request, list_id: int) -> Response:
        """The W3C Bitstring Status List, signed like the credentials it covers."""
        if not 1 <= list_id <= self.store.status_lists_in_use():
            return Response("no such status list\n", status=404, mimetype="text/plain")
        encoded = credentials.encode_bits(self.store.revoked_indices(list_id))
        document = credentials.status_list_credential(
            self._public_url(f"/credentials/status/{list_id}"), self._issuer(), encoded,
            self.now(), valid_until=self.now() + timedelta(days=1))
        return Response(credentials.sign(document, self.keys), mimetype="application/vc+jwt",
                        headers={"Cache-Control": "public, max-age=60"})

    # -- calendar feed ----------------------------------------------------------------------
    @rpc
    def rotate_calendar_link(self, volunteer_id: Any) -> dict[str, Any]:
        """A new secret feed URL for the volunteer's calendar app; the old one stops working.

        Only a hash of the token is stored, so the link is shown once, here.
        """
        volunteer_id = check_id(volunteer_id, "vol", "volunteer_id")
        domain.require_self(self.caller, volunteer_id)
        token = secrets.token_urlsafe(24)
        self.store.set_calendar_token(volunteer_id, _token_hash(token), self.now())
        return {"path": f"/calendar/{token}.ics"}

    @http("GET", "/calendar/<secret:token>.ics")
    def calendar_feed(self, request: Request, token: str) -> Response:
        volunteer_id = self.store.calendar_owner(_token_hash(token))
        if volunteer_id is None:
            return Response("unknown or revoked calendar link\n", status=404,
                            mimetype="text/plain")
        assignments = self.store.assignments_of("volunteer_id", volunteer_id)
        tasks = self.store.tasks_by_id({a["task_id"] for a in assignments})
        entries = [{"assignment_id": a["_id"], "assignment_status": a["status"],
                    "task": tasks[a["task_id"]]} for a in assignments if a["task_id"] in tasks]
        body = volunteer_feed(entries, now=self.now(), calendar_name="Sanad")
        return Response(body, mimetype="text/calendar",
                        headers={"Cache-Control": "private, max-age=300"})

    # -- timers: each step is a conditional write, so replicas never do a job twice ---------
    @every("ASSIGNMENT_TIMER_SECONDS", 5.0)
    def expire_assignments(self) -> None:
        slots = self._slots()
        for assignment in self.store.assignments_due(self.now(), TIMER_BATCH):
            slots.expire_due(assignment)

    @every("TASK_TIMER_SECONDS", 30.0)
    def expire_tasks(self) -> None:
        for task in self.store.tasks_to_expire(self.now(), TIMER_BATCH):
            to = "cancelled" if task["status"] == "draft" else "expired"
            try:
                after, _ = self._change_task(
                    task["_id"], task["version"],
                    lambda now_task, to=to: domain.end_task(now_task, to, "schedule over",
                                                            self.now()))
            except Conflict:
                continue  # another replica (or a coordinator) got there first
            self._close_assignments(after)

    @every("RECONCILE_SECONDS", 60.0)
    def reconcile_slots(self) -> None:
        slots = self._slots()
        for task in self.store.unbalanced_tasks(TIMER_BATCH):
            slots.reconcile(task)
        for task in self.store.tasks_to_audit(self.now(), TIMER_BATCH):
            if task["status"] in domain.ENDED:
                # a sign-up in flight when the task ended wrote its assignment after the
                # end had closed the others
                self._close_assignments(task)
            slots.reconcile(task)
            self.store.audited(task["_id"], task["claims_audit_ms"])

    # -- the search index, from our own task events (the outbox delivers every one) ---------
    @consumes(SERVICE_NAME, events.TASK_PUBLISHED)
    def index_published(self, event: dict[str, Any]) -> None:
        self._index(event)

    @consumes(SERVICE_NAME, events.TASK_UPDATED)
    def index_updated(self, event: dict[str, Any]) -> None:
        self._index(event)

    @consumes(SERVICE_NAME, events.TASK_FILLED)
    def index_filled(self, event: dict[str, Any]) -> None:
        self._index(event)

    @consumes(SERVICE_NAME, events.TASK_REOPENED)
    def index_reopened(self, event: dict[str, Any]) -> None:
        self._index(event)

    @consumes(SERVICE_NAME, events.TASK_STARTED)
    def index_started(self, event: dict[str, Any]) -> None:
        self._index(event)

    @consumes(SERVICE_NAME, events.TASK_CANCELLED)
    def index_cancelled(self, event: dict[str, Any]) -> None:
        self._ended(event)

    @consumes(SERVICE_NAME, events.TASK_COMPLETED)
    def index_completed(self, event: dict[str, Any]) -> None:
        self._ended(event)

    @consumes(SERVICE_NAME, events.TASK_EXPIRED)
    def index_expired(self, event: dict[str, Any]) -> None:
        self._ended(event)

    def _index(self, event: dict[str, Any]) -> None:
        data = event["data"]
        self.store.index_task(data["task"]["task_id"] if "task" in data else data["task_id"])

    def _ended(self, event: dict[str, Any]) -> None:
        """Also end the task's live assignments: done by the call that ended the task,
        again here (then usually nothing is left) for when that process died half-way."""
        self._index(event)
        self._close_assignments(self.store.task(event["data"]["task"]["task_id"]))

    # -- what the registry tells us -----------------------------------------------------
    @consumes(REGISTRY, "sanad.organisation.registered.v1")
    def on_organisation_registered(self, event: dict[str, Any]) -> None:
        self._organisation(event)

    @consumes(REGISTRY, "sanad.organisation.verified.v1")
    def on_organisation_verified(self, event: dict[str, Any]) -> None:
        self._organisation(event)

    @consumes(REGISTRY, "sanad.organisation.suspended.v1")
    def on_organisation_suspended(self, event: dict[str, Any]) -> None:
        self._organisation(event)

    def _organisation(self, event: dict[str, Any]) -> None:
        org = event["data"]["organisation"]  # checked against the registry contract
        self.store.upsert_snapshot(ORGANISATIONS, org["organisation_id"], org["version"],
                                   {"status": org["status"], "name": org["name"]})

    @consumes(REGISTRY, "sanad.volunteer.registered.v1")
    def on_volunteer_registered(self, event: dict[str, Any]) -> None:
        self._volunteer(event)

    @consumes(REGISTRY, "sanad.volunteer.updated.v1")
    def on_volunteer_updated(self, event: dict[str, Any]) -> None:
        self._volunteer(event)

    @consumes(REGISTRY, "sanad.volunteer.paused.v1")
    def on_volunteer_paused(self, event: dict[str, Any]) -> None:
        self._volunteer(event)

    @consumes(REGISTRY, "sanad.volunteer.resumed.v1")
    def on_volunteer_resumed(self, event: dict[str, Any]) -> None:
        self._volunteer(event)

    def _volunteer(self, event: dict[str, Any]) -> None:
        snapshot = event["data"]["volunteer"]  # checked against the registry contract
        self.store.upsert_snapshot(VOLUNTEERS, snapshot["volunteer_id"], snapshot["version"],
                                   {"status": snapshot["status"], "vetting": snapshot["vetting"]})

    @consumes(REGISTRY, "sanad.volunteer.erased.v1")
    def on_volunteer_erased(self, event: dict[str, Any]) -> None:
        volunteer_id = event["data"]["volunteer_id"]
        slots = self._slots()
        for assignment in self.store.assignments_of("volunteer_id", volunteer_id, domain.LIVE):
            slots.release(assignment, "withdrawn", "volunteer erased")
        self.store.erase_volunteer(volunteer_id)


def _credential_data(doc: dict[str, Any]) -> dict[str, Any]:
    return {"credential_id": doc["_id"], **{k: doc[k] for k in (
        "assignment_id", "task_id", "volunteer_id", "organisation_id", "hours")}}


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


Service = TasksService  # what scripts/run-service.sh starts

