"""Tasks: claim latency and throughput, open-task search at 100,000 tasks, credentials.

    .venv/bin/python bench/tasks_bench.py      (or `make bench`)

Starts its own nx-27017 (free port, memory data dir: loading and querying 100,000 tasks
measured no slower there than in a temporary on-disk data dir, and faster to load), its
own RabbitMQ vhost, and the registry and the tasks service (with the empty `bench_ping`
beside it) as separate `nameko run` processes, then measures, in one run (issue #9):

1. `tasks.accept` latency, sequential, each claim on a task with a free slot and by a
   different volunteer, beside the empty RPC of the same run; and the same claims' store
   work alone (the service's own store and slot code, in this process: no nameko, no
   broker);
2. claims/s with 16 concurrent callers on one tasks process;
3. `search_tasks` by skill and language over 100,000 open tasks (written straight into
   the tasks database, shaped by `domain.new_task`), taking turns with the same query
   through pymongo (and without `status`), with the store's explain plans, and the
   service's own timer queries over the same collection;
4. credential issue (build + sign) and verify, in this process, if
   services/tasks/credentials.py offers `KeyRing`, `build_credential`, `sign`, `verify`.

Volunteers are registered through the registry and reach the tasks read model by events;
the organisation is registered by a coordinator and verified by a platform admin. Figures
are printed as tables with their targets; nothing is asserted. Everything started here is
stopped at the end, also on error or Ctrl-C.
"""
from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import argparse  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/x.py` puts bench/ first, not the root

import bson  # noqa: E402
from kombu import Connection  # noqa: E402
from nameko.standalone.events import event_dispatcher, get_event_exchange  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402
from pymongo import MongoClient, monitoring  # noqa: E402

from bench.registry_bench import (  # noqa: E402
    BENCH_SETTINGS,
    DB_PREFIX,
    PING,
    PLACES,
    READY_TIMEOUT,
    SYSTEM_CONTEXT,
    _drop_bench_databases,
    bench_config,
    broker_pid,
    cpu_delta,
    cpu_seconds,
    cpu_text,
    entrypoint_seconds,
    interrupt_on_sigterm,
    mb,
    ms,
    own_peak_rss_kb,
    per_call,
    percentile,
    print_table,
    proc_status_kb,
    registration,
    run_concurrently,
    store_pid,
    timed,
    verdict,
    volunteer_row,
)
from services.common.caller import Caller, caller_context  # noqa: E402
from services.common.envelope import make_envelope  # noqa: E402
from services.common.ids import new_id  # noqa: E402
from services.common.outbox import commit_unpublished  # noqa: E402
from services.common.schemas import load  # noqa: E402
from services.common.service import ServiceBase  # noqa: E402
from services.common.storage import HIDDEN, new_with_outbox  # noqa: E402
from services.registry.taxonomy import default_taxonomy  # noqa: E402
from services.tasks import domain, schemas  # noqa: E402
from services.tasks.slots import SlotKeeper  # noqa: E402
from services.tasks.store import (  # noqa: E402
    TASK_INDEX,
    TASKS,
    VOLUNTEERS,
    TasksStore,
    index_entries,
    index_key,
    stored_task,
)
from tests.processes import ServiceProcess, stop_all  # noqa: E402
from tests.support import nx_store, rabbit_vhost, wait_for  # noqa: E402

TASKS_DB = DB_PREFIX + "tasks"
SCRATCH_DB = DB_PREFIX + "scratch_tasks"  # the store-only claims: apart from the service's
OWNER = "u_bench_owner"
ADMIN_CONTEXT = caller_context("u_bench_admin", ["platform_admin"])
LOADER = Caller(user_id="u_bench_loader", roles=frozenset({"system"}))
CREATE = schemas.CreateTaskSchema()
SLOTS = 200  # per claim task: "plenty" (schema max 500); claims spread to ~100 per task
WARMUP = 20
STEPS = 4

# issue #9 targets
ACCEPT_P50 = 0.005
CLAIMS_PER_SECOND = 200
SEARCH_P50 = 0.020
CREDENTIAL_P50 = 0.005


# -- the stack: store, vhost, registry and tasks as two `nameko run` processes -------------
def seconds_between(before: tuple[float, int] | None, after: tuple[float, int] | None
                    ) -> tuple[float, int] | None:
    """(seconds, calls) between two /metrics readings."""
    if before is None or after is None:
        return None
    return after[0] - before[0], after[1] - before[1]


@dataclass
class TasksStack:
    amqp_uri: str
    mongo_uri: str
    procs: dict[str, ServiceProcess]  # "registry", "tasks"
    store_pid: int | None
    workdir: Path
    broker_pid: int | None = None
    metrics_ports: dict[str, int | None] = field(default_factory=dict)
    memory: list[tuple[str, dict[str, int | None]]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return {"AMQP_URI": self.amqp_uri, "serializer": "json"}

    def pids(self) -> dict[str, int | None]:
        return {"registry": self.procs["registry"].pid, "tasks": self.procs["tasks"].pid,
                "store": self.store_pid}

    def snapshot_memory(self, label: str) -> None:
        self.memory.append((label, {name: proc_status_kb(pid, "VmRSS")
                                    for name, pid in self.pids().items()}))

    def memory_rows(self) -> list[list[str]]:
        rows = [[label, *(mb(kb) for kb in rss.values())] for label, rss in self.memory]
        rows.append(["peak (VmHWM)", *(mb(proc_status_kb(pid, "VmHWM"))
                                       for pid in self.pids().values())])
        return rows

    def cpu(self) -> dict[str, float | None]:
        return {"tasks": cpu_seconds(self.procs["tasks"].pid), "store": cpu_seconds(
            self.store_pid), "broker": cpu_seconds(self.broker_pid),
                "registry": cpu_seconds(self.procs["registry"].pid),
                "bench client": cpu_seconds(os.getpid())}

    def worker_seconds(self, entrypoint: str, kind: str = "rpc") -> tuple[float, int] | None:
        return entrypoint_seconds(self.metrics_ports.get("tasks"), entrypoint, kind)


@contextmanager
def tasks_stack() -> Iterator[TasksStack]:
    """Store, vhost, registry and tasks (+ bench_ping); all stopped on the way out."""
    with ExitStack() as cleanup:
        mongo_uri = cleanup.enter_context(nx_store())
        amqp_uri = cleanup.enter_context(rabbit_vhost())
        if os.environ.get("MONGO_URI"):  # a real store given by the caller outlives us
            _drop_bench_databases(mongo_uri)
            cleanup.callback(_drop_bench_databases, mongo_uri)
        workdir = Path(tempfile.mkdtemp(prefix="sanad-tasks-bench-"))
        cleanup.callback(shutil.rmtree, workdir, True)
        config = bench_config(amqp_uri, mongo_uri)
        procs = {"registry": ServiceProcess("registry", config, workdir,
                                            settings=BENCH_SETTINGS),
                 "tasks": ServiceProcess("tasks", config, workdir, beside=PING,
                                         settings=BENCH_SETTINGS)}
        cleanup.callback(stop_all, list(procs.values()))
        stack = TasksStack(amqp_uri=amqp_uri, mongo_uri=mongo_uri,
                           procs={name: proc.start() for name, proc in procs.items()},
                           store_pid=store_pid(mongo_uri), workdir=workdir,
                           broker_pid=broker_pid())
        for proc in procs.values():
            proc.wait_answering(stack.config, READY_TIMEOUT)
        stack.metrics_ports = {name: proc.metrics_port() for name, proc in procs.items()}
        yield stack
        for name, proc in procs.items():
            if proc.proc is not None and proc.proc.poll() is not None:
                print(f"warning: {name} `nameko run` exited early ({proc.proc.returncode}):"
                      f"\n{proc.log_tail()}", file=sys.stderr)


# -- setting the scene: volunteers, a verified organisation, tasks with free slots ----------
def register_volunteers(stack: TasksStack, count: int, rng: random.Random) -> list[str]:
    ids: list[str] = []
    with ClusterRpcProxy(stack.config, context_data=SYSTEM_CONTEXT, timeout=60) as rpc:
        for start in range(0, count, 50):
            pending = [rpc.registry.register_volunteer.call_async(
                registration(volunteer_row(rng, n, "t")))
                for n in range(start, min(start + 50, count))]
            ids += [reply.result()["id"] for reply in pending]
    return ids


def verified_organisation(stack: TasksStack) -> str:
    owner = caller_context(OWNER, ["coordinator"])
    with ClusterRpcProxy(stack.config, context_data=owner, timeout=30) as rpc:
        org_id = rpc.registry.register_organisation(
            {"name": "جمعية سند للإغاثة — Bench Relief", "country": "LB",
             "contact_email": "bench@relief.example.org"})["id"]
    with ClusterRpcProxy(stack.config, context_data=ADMIN_CONTEXT, timeout=30) as rpc:
        rpc.registry.verify_organisation(org_id, {"version": 1})
    return org_id


def wait_read_model(stack: TasksStack, volunteer_ids: list[str], org_id: str) -> float:
    """Until the tasks database has every volunteer (active) and the verified organisation."""
    started = time.perf_counter()
    client: MongoClient = MongoClient(stack.mongo_uri, tz_aware=True)
    try:
        db = client[TASKS_DB]
        wait_for(lambda: db[VOLUNTEERS].count_documents(
            {"_id": {"$in": volunteer_ids}, "status": "active"}) == len(volunteer_ids),
            timeout=180, interval=0.2)
        wait_for(lambda: (db["organisations"].find_one({"_id": org_id}) or {})
                 .get("status") == "verified", timeout=60, interval=0.2)
    finally:
        client.close()
    return time.perf_counter() - started


def open_tasks(stack: TasksStack, org_id: str, count: int, tag: str) -> list[str]:
    """Published tasks of SLOTS slots each, created and published by the coordinator."""
    coordinator = caller_context(OWNER, ["coordinator"], [org_id])
    start = (datetime.now(UTC) + timedelta(days=10)).replace(
        tzinfo=None, minute=0, second=0, microsecond=0)
    ids = []
    with ClusterRpcProxy(stack.config, context_data=coordinator, timeout=30) as rpc:
        for n in range(count):
            task = rpc.tasks.create_task({
                "organisation_id": org_id, "title": f"خط الدعم الهاتفي — phone line {tag}{n}",
                "category": "psychosocial_support", "timezone": "Asia/Beirut",
                "slots": SLOTS, "languages": ["ar", "en"],
                "required_skills": [{"skill_id": "sk_active_listening"}]
                if n % 2 else [],
                "schedule": {"kind": "one_off", "start": start.isoformat(),
                             "end": (start + timedelta(hours=3)).isoformat()}})
            rpc.tasks.publish_task(task["id"], {"version": task["version"]})
            ids.append(task["id"])
    return ids


def claim_plan(task_ids: Sequence[str], volunteer_ids: Sequence[str], count: int,
               rng: random.Random) -> list[tuple[str, str]]:
    """`count` (task, volunteer) claims spread evenly over the tasks, no pair twice; with
    tasks x volunteers-per-task <= volunteers, every claim is by a different volunteer."""
    tasks, vols = len(task_ids), len(volunteer_ids)
    if math.ceil(count / tasks) > min(vols, SLOTS):
        raise ValueError(f"{count} claims do not fit {tasks} tasks, {vols} volunteers")
    stride = max(vols // tasks, 1)
    pairs = [(task_ids[k % tasks], volunteer_ids[(k // tasks + (k % tasks) * stride) % vols])
             for k in range(count)]
    rng.shuffle(pairs)
    return pairs


# -- 1-2. claims ------------------------------------------------------------------------------


class CommandTimes(monitoring.CommandListener):
    """Round trips by command and collection, with the driver's own durations."""

    def __init__(self) -> None:
        self.recording = False
        self.labels: dict[int, str] = {}
        self.times: dict[str, list[float]] = {}
        self.filters: list[Any] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording:
            if "filter" in event.command:  # the query a store method really sends
                self.filters.append(event.command["filter"])
            target = event.command.get(event.command_name)
            self.labels[event.request_id] = f"{event.command_name} {target}" \
                if isinstance(target, str) else event.command_name

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        label = self.labels.pop(event.request_id, None)
        if label is not None:
            self.times.setdefault(label, []).append(event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.labels.pop(event.request_id, None)


def store_only_claims(mongo_uri: str, template_id: str, volunteer_ids: list[str],
                      tasks: int, count: int, rng: random.Random
                      ) -> tuple[list[float], dict[str, list[float]]]:
    """The store work of `tasks.accept` without nameko or the broker: the service's own
    steps (volunteer snapshot, SlotKeeper.sign_up on TasksStore), as the volunteer,
    from this process, in a database of its own (copies of a claim task, no holders, and
    of the volunteer snapshots). Nothing is published; each claim's events are acknowledged
    after it, untimed and uncounted, as the service acks them in batches off the request
    path (else they would pile up in the task document and slow every later claim).
    Returns (seconds per claim, round-trip seconds by command over all claims)."""
    commands = CommandTimes()
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    try:
        client.drop_database(SCRATCH_DB)
        db = client[SCRATCH_DB]
        store = TasksStore(db)
        store.ensure_indexes()
        template = client[TASKS_DB][TASKS].find_one({"_id": template_id}, HIDDEN)
        assert template is not None
        copies = [new_id("tsk") for _ in range(tasks)]
        db[TASKS].insert_many([new_with_outbox(
            {**template, "_id": tid, "holders": [], "waitlist": [], "free": SLOTS,
             "status": "open"}, []) for tid in copies])
        db[VOLUNTEERS].insert_many(list(client[TASKS_DB][VOLUNTEERS].find(
            {"_id": {"$in": volunteer_ids}})))
        plan = iter(claim_plan(copies, volunteer_ids, count + WARMUP, rng))
        policy = domain.Policy()

        acks: list[tuple[str, str, str]] = []
        written = commit_unpublished("tasks")

        def commit(collection: str, doc_id: str, events: Any, write: Any) -> Any:
            """The service's commit, with the events acknowledged instead of published."""
            def write_and_note(envelopes: list[dict[str, Any]]) -> Any:
                done = write(envelopes)
                if done is not None:
                    acks.extend((collection, doc_id, e["id"]) for e in envelopes)
                return done
            return written(collection, doc_id, events, write_and_note)

        def claim() -> float:
            task_id, volunteer_id = next(plan)
            commands.recording = True  # the warm-up claims too: stats are per claim
            started = time.perf_counter()
            keeper = SlotKeeper(store, commit, policy, ServiceBase.now())
            keeper.take(Caller(volunteer_id), task_id, volunteer_id)  # what accept runs
            elapsed = time.perf_counter() - started
            commands.recording = False
            if acks:
                store.outbox_ack_many(acks)
                acks.clear()
            return elapsed

        for _ in range(WARMUP):
            claim()
        return [claim() for _ in range(count)], commands.times
    finally:
        client.drop_database(SCRATCH_DB)
        client.close()


def event_publishes(stack: TasksStack, count: int) -> list[float]:
    """What an accept adds on the broker side: one persistent event published with
    publisher confirms, as the service's Outbox (a nameko EventDispatcher) sends it, to an
    exchange nobody listens to."""
    with Connection(stack.amqp_uri) as conn:
        get_event_exchange("bench_probe", stack.config)(conn.default_channel).declare()
    dispatch = event_dispatcher(stack.config)
    assignment = {"_id": new_id("asg"), "task_id": new_id("tsk"), "volunteer_id": new_id("vol"),
                  "organisation_id": new_id("org")}
    envelope = make_envelope(domain.created({**assignment, "status": "accepted"}),
                             source="/sanad/tasks", now=ServiceBase.now())
    return timed(lambda: dispatch("bench_probe", envelope["type"], envelope), count)


def slot_ledger(mongo_uri: str, task_ids: list[str]) -> dict[str, int]:
    """Consistency after the claims: holders, accepted assignments, overbooked tasks."""
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True)
    try:
        db = client[TASKS_DB]
        tasks = list(db[TASKS].find({"_id": {"$in": task_ids}},
                                    {"holders": 1, "free": 1, "slots": 1}))
        return {
            "holders": sum(len(t["holders"]) for t in tasks),
            "accepted": db["assignments"].count_documents(
                {"task_id": {"$in": task_ids}, "status": "accepted"}),
            "bad counters": sum(t["free"] + len(t["holders"]) != t["slots"] for t in tasks),
            "pending outbox": db[TASKS].count_documents(
                {"_id": {"$in": task_ids}, "outbox_n": {"$gt": 0}}),
        }
    finally:
        client.close()


# -- 3. 100,000 open tasks, written straight into the tasks database -------------------------
TITLES = {
    "en": ["Homework help for {who}", "Phone check-ins with {who}", "Translate {what}",
           "Data entry for {what}", "Design a poster about {what}", "Teach {who} to use "
           "WhatsApp", "Sort donations for {who}", "Set up a spreadsheet for {what}"],
    "ar": ["مساعدة {who_ar} في الواجبات المدرسية", "اتصالات هاتفية أسبوعية مع {who_ar}",
           "ترجمة {what_ar}", "إدخال بيانات {what_ar}", "تصميم ملصق عن {what_ar}",
           "فرز التبرعات لـ{who_ar}", "تعليم {who_ar} استخدام الهاتف"],
    "fr": ["Aide aux devoirs pour {who_fr}", "Appels hebdomadaires avec {who_fr}",
           "Traduire {what_fr}", "Saisie de données pour {what_fr}",
           "Affiche sur {what_fr}", "Tri des dons pour {who_fr}"],
}
WHO = [("displaced families", "العائلات النازحة", "des familles déplacées"),
       ("older people", "كبار السن", "des personnes âgées"),
       ("refugee students", "الطلاب اللاجئين", "des élèves réfugiés"),
       ("single mothers", "الأمهات العازبات", "des mères isolées")]
WHAT = [("the food bank leaflet", "نشرة بنك الطعام", "la brochure de la banque alimentaire"),
        ("our volunteer survey", "استبيان المتطوعين", "notre enquête bénévoles"),
        ("the winter appeal", "حملة الشتاء", "l'appel d'hiver"),
        ("the clinic's records", "سجلات العيادة", "les dossiers du dispensaire")]
DESCRIPTIONS = ["", "Two hours a week, from home. We provide training and a buddy.",
                "نحتاج إلى متطوعين صبورين. التدريب متوفر.",
                "Mission ponctuelle ; une formation courte est prévue. "
                "Merci de confirmer vos disponibilités.",
                "Please read the safeguarding policy before your first session. " * 3]
LANGUAGES = {"ar": 0.6, "en": 0.45, "fr": 0.3,  # common
             "apc": 0.03, "ku": 0.015, "tr": 0.01, "hy": 0.008, "fa": 0.005}  # rare
COMMON_LANGUAGES, RARE_LANGUAGES = ("ar", "en", "fr"), ("apc", "ku", "tr", "hy", "fa")


@dataclass
class TaskLoad:
    count: int = 0
    generate_seconds: float = 0.0
    insert_seconds: float = 0.0
    index_seconds: float = 0.0
    index_entries: int = 0
    skills: Counter[str] = field(default_factory=Counter)
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes_sample: int = 0


class TaskGenerator:
    """Create-task payloads as coordinators fill them in: skills Zipf-distributed over
    the taxonomy (a few common, a long tail of rare), one or two languages (Arabic,
    English, French common; Levantine, Kurdish, Turkish, Armenian, Persian rare)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.skills = [s.id for s in default_taxonomy()]
        rng.shuffle(self.skills)
        self.skill_weights = [1 / (rank + 1) ** 1.2 for rank in range(len(self.skills))]
        self.orgs = [new_id("org") for _ in range(300)]

    def payload(self, n: int, now: datetime) -> dict[str, Any]:
        rng = self.rng
        lang = rng.choices(COMMON_LANGUAGES, weights=(5, 4, 3))[0]
        who, what = rng.choice(WHO), rng.choice(WHAT)
        title = rng.choice(TITLES[lang]).format(
            who=who[0], what=what[0], who_ar=who[1], what_ar=what[1], who_fr=who[2],
            what_fr=what[2])
        languages = [code for code, share in LANGUAGES.items() if rng.random() < share][:2] \
            or [lang]
        picked = dict.fromkeys(rng.choices(self.skills, self.skill_weights,
                                           k=rng.choices((1, 2, 3), (5, 3, 1))[0]))
        country = rng.choice(list(PLACES))
        timezone, regions = PLACES[country][0], PLACES[country][1]
        start = (now + timedelta(days=rng.randint(1, 180), hours=rng.randint(0, 23))).astimezone(
            UTC).replace(tzinfo=None, minute=rng.choice((0, 30)), second=0, microsecond=0)
        kind = rng.choices(("one_off", "deadline", "recurring"), (6, 2, 2))[0]
        if kind == "one_off":
            schedule = {"kind": kind, "start": start.isoformat(),
                        "end": (start + timedelta(hours=rng.randint(1, 4))).isoformat()}
        elif kind == "deadline":
            schedule = {"kind": kind, "due": start.isoformat()}
        else:
            schedule = {"kind": kind, "start": start.isoformat(),
                        "rrule": rng.choice(("FREQ=WEEKLY;COUNT=8", "FREQ=WEEKLY;BYDAY=TU,TH;"
                                             "COUNT=12", "FREQ=MONTHLY;COUNT=6")),
                        "duration_minutes": rng.choice((60, 90, 120))}
        mode = rng.choices(schemas.MODES, (6, 2, 2))[0]
        data: dict[str, Any] = {
            "organisation_id": rng.choice(self.orgs), "title": title,
            "description": rng.choice(DESCRIPTIONS),
            "category": rng.choice(schemas.CATEGORIES),
            "urgency": rng.choices(schemas.URGENCIES, (1, 4, 12, 3))[0], "mode": mode,
            "timezone": timezone, "schedule": schedule,
            "required_skills": [{"skill_id": s, "min_level": rng.choice(schemas.SKILL_LEVELS)}
                                for s in picked],
            "languages": languages, "skills_practised": list(picked)[:1],
            "estimated_hours": rng.choice((1, 2, 3, 4, 8, 20)),
            "vetting_required": ["identity"] if rng.random() < 0.1 else [],
            "slots": rng.randint(1, 10)}
        if mode != "remote":
            data["location"] = {"country": country, "region": rng.choice(regions)}
            data["radius_km"] = rng.choice((5, 10, 25))
        return data

    def open_task(self, n: int, now: datetime) -> dict[str, Any]:
        """Exactly what create_task then publish_task store (after the relay acked)."""
        doc = domain.new_task(new_id("tsk"), load(CREATE, self.payload(n, now)), LOADER, now)
        change = domain.publish(doc, "verified", now)
        return stored_task({**doc, **change.set, "version": doc["version"] + 1})


def load_tasks(mongo_uri: str, count: int, rng: random.Random, batch: int = 2000
               ) -> TaskLoad:
    generator, result = TaskGenerator(rng), TaskLoad()
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True)
    try:
        coll, index = client[TASKS_DB][TASKS], client[TASKS_DB][TASK_INDEX]
        while result.count < count:
            started = time.perf_counter()
            now = ServiceBase.now()
            docs = [generator.open_task(result.count + n, now)
                    for n in range(min(batch, count - result.count))]
            result.generate_seconds += time.perf_counter() - started
            for doc in docs:
                result.skills.update(doc["skill_ids"])
                result.pairs.update((s, lang) for s in doc["skill_ids"]
                                    for lang in doc["language_codes"])
            if not result.bytes_sample:
                result.bytes_sample = sum(len(bson.encode(d)) for d in docs) // len(docs)
            started = time.perf_counter()
            coll.insert_many(docs, ordered=False)
            result.insert_seconds += time.perf_counter() - started
            # what the service's index_* handlers write from each task's published event
            started = time.perf_counter()
            entries = [entry for doc in docs for entry in index_entries(doc)]
            index.insert_many(entries, ordered=False)
            result.index_seconds += time.perf_counter() - started
            result.index_entries += len(entries)
            result.count += len(docs)
            if result.count % 20000 < batch:
                print(f"  {result.count} tasks loaded", file=sys.stderr, flush=True)
    finally:
        client.close()
    return result


def search_mix(load_result: TaskLoad, count: int, rng: random.Random
               ) -> list[tuple[str, dict[str, str]]]:
    """(class, filters): half common skill + common language, the rest the long tails."""
    ranked = [s for s, _ in load_result.skills.most_common()]
    common, rare = ranked[:5], ranked[-10:]
    classes = [("common skill, common language", common, COMMON_LANGUAGES, 0.5),
               ("common skill, rare language", common, RARE_LANGUAGES, 0.2),
               ("rare skill, common language", rare, COMMON_LANGUAGES, 0.2),
               ("rare skill, rare language", rare, RARE_LANGUAGES, 0.1)]
    mix = []
    for name, skills, languages, share in classes:
        for _ in range(max(1, round(count * share))):
            mix.append((name, {"skill_id": rng.choice(skills),
                               "language": rng.choice(languages)}))
    rng.shuffle(mix)
    return mix


def mongo_filter(filters: dict[str, str]) -> dict[str, Any]:
    """The filter the tasks store builds for {skill_id, language} without its index."""
    return TasksStore.search_filter({"status": "open", "urgency": None, "mode": None,
                                     "organisation_id": None, "starts_after": None,
                                     "starts_before": None, **filters})


def search_key(filters: dict[str, str]) -> str:
    return index_key("open", filters["skill_id"], filters["language"])


def plan_steps(plan: Any) -> list[str]:
    """nx-27017 answers SQLite's plan (a list of steps); MongoDB a tree of stages."""
    if isinstance(plan, list):
        return [str(step.get("detail", step)) if isinstance(step, dict) else str(step)
                for step in plan]
    if isinstance(plan, dict):
        node: Any = plan.get("queryPlan", plan)
        steps = []
        while isinstance(node, dict):
            steps.append(node.get("stage", "?") + (f" {node['indexName']}"
                                                   if "indexName" in node else ""))
            node = node.get("inputStage") or (node.get("inputStages") or [None])[0]
        return steps
    return [repr(plan)]


def indexes_in(steps: list[str]) -> list[str]:
    found = []
    for step in steps:
        found += re.findall(r"USING (?:COVERING )?INDEX (\S+)", step)
        found += re.findall(r"^IXSCAN (\S+)", step)
    return found


# -- 4. credentials ---------------------------------------------------------------------------
ISSUER = {"id": "https://sanad.example/issuer", "url": "https://sanad.example",
          "name": {"ar": "سند", "en": "Sanad", "fr": "Sanad"}}
STATUS_LIST_URL = "https://sanad.example/credentials/status/1"


def credential_timings(iterations: int, org_id: str, task_id: str, volunteer_id: str
                       ) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Rows for the table, or raises RuntimeError(reason) when the API is not usable."""
    try:
        from services.tasks import credentials
    except Exception as exc:  # noqa: BLE001 - being written by someone else
        raise RuntimeError(f"cannot import services.tasks.credentials: {exc!r}") from None
    missing = [name for name in ("KeyRing", "build_credential", "sign", "verify")
               if not hasattr(credentials, name)]
    if missing:
        raise RuntimeError(f"services.tasks.credentials has no {', '.join(missing)}")
    skills = list(default_taxonomy())[:2]
    now = datetime.now(UTC)
    index = itertools.count()
    try:
        with tempfile.TemporaryDirectory(prefix="sanad-bench-keys-") as keys:
            credentials.generate_key(Path(keys), "2026-01")
            keyring = credentials.KeyRing.load(Path(keys))
        jwks = keyring.jwks()

        def issue() -> str:
            credential = credentials.build_credential(
                credential_id=str(uuid.uuid4()), issuer=ISSUER,
                organisation={"id": org_id, "name": {"ar": "جمعية سند للإغاثة",
                                                     "en": "Sanad Relief",
                                                     "fr": "Secours Sanad"}},
                volunteer_id=volunteer_id,
                achievement={"task_id": task_id, "hours": 3.5,
                             "title": {"ar": "خط الدعم الهاتفي", "en": "Phone support line",
                                       "fr": "Ligne d'écoute"},
                             "description": "Evening calls with isolated older people.",
                             "skills": [{"id": s.id, "labels": dict(s.labels)}
                                        for s in skills]},
                status={"index": next(index), "list_url": STATUS_LIST_URL}, now=now)
            return credentials.sign(credential, keyring)

        token = issue()
        report = credentials.verify(token, jwks, now=now)
        if not report.get("valid"):
            raise RuntimeError(f"verify refused a fresh credential: {report.get('errors')}")
        issued = timed(issue, iterations, warmup=10)
        verified = timed(lambda: credentials.verify(token, jwks, now=now), iterations,
                         warmup=10)
        rows = [["issue (build_credential + sign, RS256)", issued],
                ["verify (signature + checks, no status list)", verified]]
        facts = [("token size", f"{len(token)} bytes"),
                 ("key", "RSA 2048, generate_key + KeyRing.load")]
        if hasattr(credentials, "status_list_credential") and hasattr(credentials,
                                                                      "encode_bits"):
            listed = credentials.sign(credentials.status_list_credential(
                STATUS_LIST_URL, ISSUER, credentials.encode_bits([5, 99]), now), keyring)
            check = credentials.verify(token, jwks, lambda _url: listed, now=now)
            if check.get("valid") and check.get("revoked") is False:
                rows.append(["verify incl. signed status list (131,072 bits)", timed(
                    lambda: credentials.verify(token, jwks, lambda _url: listed, now=now),
                    iterations, warmup=10)])
            else:
                facts.append(("status list check", f"not measured: {check.get('errors')}"))
    except RuntimeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the API is being written: report, don't fail
        raise RuntimeError(f"API not usable: {exc!r}") from None
    table = [[name, str(len(times)), ms(percentile(times, 50)), ms(percentile(times, 99)),
              ms(max(times)), f"p50 <= {CREDENTIAL_P50 * 1000:.0f} ms",
              verdict(percentile(times, 50) <= CREDENTIAL_P50)] for name, times in rows]
    return table, facts


# -- the run ------------------------------------------------------------------------------------
def latency_row(name: str, times: list[float], cpu: dict[str, float | None] | None = None,
                target: str = "", ok: bool | None = None,
                involved: Sequence[str] = ("tasks", "store", "broker")) -> list[str]:
    return [name, str(len(times)), ms(percentile(times, 50)), ms(percentile(times, 99)),
            ms(max(times)), *(per_call(cpu[k], len(times)) if cpu and k in involved else "-"
                              for k in ("tasks", "store", "broker")),
            target, "" if ok is None else verdict(ok)]


def info_row(name: str, n: str, value: str, width: int = 10) -> list[str]:
    return [name, n, value, *[""] * (width - 3)]


def claims_phase(stack: TasksStack, args: argparse.Namespace, rng: random.Random,
                 vols: list[str], seq_ids: list[str], conc_ids: list[str],
                 setup_facts: list[tuple[str, str]]) -> None:
    print(f"1/{STEPS} sequential accepts ...", file=sys.stderr, flush=True)
    rows: list[list[str]] = []
    seq_plan = iter(claim_plan(seq_ids, vols, args.accepts + WARMUP, rng))
    with ClusterRpcProxy(stack.config, context_data=SYSTEM_CONTEXT, timeout=60) as rpc:
        before = stack.cpu()
        empty = timed(rpc.bench_ping.ping, args.accepts)
        rows.append(latency_row("empty nameko RPC (bench_ping.ping, tasks process)", empty,
                                cpu_delta(before, stack.cpu())))
        server_before = stack.worker_seconds("accept")
        before = stack.cpu()
        started = time.perf_counter()
        accepts = timed(lambda: rpc.tasks.accept(*next(seq_plan)), args.accepts,
                        warmup=WARMUP)
        seq_wall = time.perf_counter() - started
        seq_cpu = cpu_delta(before, stack.cpu())
        server = seconds_between(server_before, stack.worker_seconds("accept"))
    rows.append(latency_row("tasks.accept (free slot, new volunteer each)", accepts, seq_cpu,
                            f"p50 <= {ACCEPT_P50 * 1000:.0f} ms",
                            percentile(accepts, 50) <= ACCEPT_P50))
    rows.append(info_row("  accept p50 - empty p50", "",
                         ms(percentile(accepts, 50) - percentile(empty, 50))))
    if server:
        rows.append(info_row("  accept worker incl. reply (mean, /metrics)", str(server[1]),
                             ms(server[0] / max(server[1], 1))))
    before = stack.cpu()
    alone, round_trips = store_only_claims(stack.mongo_uri, seq_ids[0], vols, len(seq_ids),
                                           args.accepts, rng)
    alone_cpu = cpu_delta(before, stack.cpu())
    rows.append(latency_row("  same claims' store work alone (TasksStore + SlotKeeper, "
                            "in-process)", alone, alone_cpu, involved=("store",)))
    before = stack.cpu()
    published = event_publishes(stack, args.accepts)
    rows.append(latency_row("  one accepted event, confirmed publish (nameko Publisher, "
                            "bench client)", published, cpu_delta(before, stack.cpu()),
                            involved=("broker",)))
    seq_ledger = slot_ledger(stack.mongo_uri, seq_ids)

    print(f"2/{STEPS} {args.concurrent_total} accepts, {args.callers} concurrent callers ...",
          file=sys.stderr, flush=True)
    conc_plan = claim_plan(conc_ids, vols, args.concurrent_total, rng)
    server_before = stack.worker_seconds("accept")
    before = stack.cpu()
    conc_wall, conc_times, failures = run_concurrently(
        stack.config, conc_plan, lambda rpc, pair: rpc.tasks.accept(*pair), args.callers)
    conc_cpu = cpu_delta(before, stack.cpu())
    server = seconds_between(server_before, stack.worker_seconds("accept"))
    rows.append(latency_row(f"tasks.accept ({args.callers} concurrent callers)", conc_times,
                            conc_cpu))
    if failures:
        print(f"warning: {len(failures)} accepts failed, e.g. {failures[0]!r}",
              file=sys.stderr)
    eventlet.sleep(0.5)  # let the deferred outbox acks land before counting
    conc_ledger = slot_ledger(stack.mongo_uri, conc_ids)
    stack.snapshot_memory("after claims")

    print_table("Claim latency (sequential unless stated; one broker, one tasks process; "
                "CPU = process CPU time per call)",
                ["call", "n", "p50", "p99", "max", "tasks CPU", "store CPU", "broker CPU",
                 "target", ""], rows)
    claims = args.accepts + WARMUP
    trips = [[label, f"{len(times) / claims:.2f}", ms(percentile(times, 50)),
              ms(sum(times) / len(times)), ms(sum(times) / claims)]
             for label, times in sorted(round_trips.items(), key=lambda item: -sum(item[1]))]
    every = [t for times in round_trips.values() for t in times]
    trips.append(["all store round trips of a claim", f"{len(every) / claims:.2f}",
                  ms(percentile(every, 50)), ms(sum(every) / len(every)),
                  ms(sum(every) / claims)])
    print_table("Store round trips per claim (the store-only run above; pymongo command "
                "monitoring, driver-measured)",
                ["command collection", "per claim", "p50", "mean", "time per claim"], trips)
    rate = (len(conc_plan) - len(failures)) / conc_wall
    print_table("Claim throughput (tasks.accept)", ["mode", "claims", "wall", "rate", "target",
                                                    ""],
                [["sequential, 1 caller", str(claims), f"{seq_wall:.2f} s",
                  f"{claims / seq_wall:.0f}/s", "", ""],
                 [f"{args.callers} concurrent callers (own proxy each)", str(len(conc_plan)),
                  f"{conc_wall:.2f} s", f"{rate:.0f}/s", f">= {CLAIMS_PER_SECOND}/s",
                  verdict(rate >= CLAIMS_PER_SECOND)]])
    total = sum(v for k, v in conc_cpu.items() if v is not None and k != "registry")
    facts = [
        *setup_facts,
        ("claim tasks", f"{len(seq_ids)} sequential + {len(conc_ids)} concurrent, {SLOTS} "
                        "slots each, claims spread evenly"),
        ("CPU during sequential (share of wall)", cpu_text(seq_cpu, seq_wall)),
        ("store-only claims: bench client CPU per claim (the service's claim code + pymongo, "
         "no nameko)", per_call(alone_cpu["bench client"], args.accepts + WARMUP)),
        (f"CPU during {args.callers} concurrent (share of wall)", cpu_text(conc_cpu, conc_wall)),
        (f"CPU per claim, {args.callers} concurrent",
         ", ".join(f"{k} {per_call(v, len(conc_plan))}" for k, v in conc_cpu.items()
                   if v is not None) + f"; total excl. registry {per_call(total, len(conc_plan))}"),
        ("CPUs on this machine", f"{os.cpu_count()} (ceiling if CPU-bound: "
                                 f"{(os.cpu_count() or 1) * len(conc_plan) / total:.0f}/s)"),
    ]
    if server:
        facts.append((f"accept worker incl. reply, {args.callers} concurrent (mean, /metrics)",
                      f"{ms(server[0] / max(server[1], 1))} over {server[1]} calls"))
    for name, ledger, expected in (("sequential", seq_ledger, claims),
                                   ("concurrent", conc_ledger, len(conc_plan) - len(failures))):
        facts.append((f"{name}: slots held / accepted assignments / expected",
                      f"{ledger['holders']} / {ledger['accepted']} / {expected}; tasks with "
                      f"free+holders != slots: {ledger['bad counters']}; with events still "
                      f"in the outbox: {ledger['pending outbox']}"))
    facts.append(("failed concurrent accepts", str(len(failures))))
    print_table("Where the time goes (claims)", ["what", "value"], facts)


def interleaved(mix: list[tuple[str, dict[str, str]]],
                ways: dict[str, Callable[[dict[str, str]], Any]]
                ) -> dict[str, dict[str, list[float]]]:
    """Seconds per query for each way of asking, by class of the mix. The ways take turns
    on each query, so whatever else loads the store meanwhile (the service's own timers)
    falls on all of them alike, and their differences can be paired query by query."""
    times: dict[str, dict[str, list[float]]] = {way: {} for way in ways}
    for name, filters in mix:
        for way, query in ways.items():
            started = time.perf_counter()
            query(filters)
            times[way].setdefault(name, []).append(time.perf_counter() - started)
    return times


def flat(times: dict[str, list[float]]) -> list[float]:
    return [t for group in times.values() for t in group]


TIMER_QUERIES: dict[str, tuple[str, Callable[[TasksStore, datetime], Any]]] = {
    "expire_tasks": ("TASK_TIMER_SECONDS, default 30 s",
                     lambda store, now: store.tasks_to_expire(now, 200)),
    "reconcile_slots": ("RECONCILE_SECONDS, default 60 s",
                        lambda store, now: store.unbalanced_tasks(200)),
}


def timer_readings(stack: TasksStack) -> dict[str, tuple[float, int] | None]:
    return {name: stack.worker_seconds(name, "timer") for name in TIMER_QUERIES}


def timer_text(before: dict[str, tuple[float, int] | None],
               after: dict[str, tuple[float, int] | None], wall: float) -> str:
    parts = []
    for name in TIMER_QUERIES:
        spent = seconds_between(before[name], after[name])
        if spent is not None:
            parts.append(f"{name} {spent[1]} run{'' if spent[1] == 1 else 's'}, "
                         f"{spent[0]:.1f} s ({spent[0] / wall:.0%})")
    return "; ".join(parts) + f" of {wall:.0f} s" if parts else "n/a"


def search_phase(stack: TasksStack, args: argparse.Namespace, rng: random.Random) -> None:
    print(f"3/{STEPS} loading {args.tasks_total} open tasks into {TASKS_DB}.{TASKS} ...",
          file=sys.stderr, flush=True)
    timers_start, started = timer_readings(stack), time.perf_counter()
    before = stack.cpu()
    loaded = load_tasks(stack.mongo_uri, args.tasks_total, rng)
    load_cpu = cpu_delta(before, stack.cpu())
    load_wall, timers_loaded = time.perf_counter() - started, timer_readings(stack)
    stack.snapshot_memory(f"after {loaded.count} tasks")

    mix = search_mix(loaded, args.queries, rng)
    print(f"  {len(mix)} queries, each as search_tasks RPC (first and next page), through "
          "pymongo, and as a scan without the index ...", file=sys.stderr, flush=True)
    returned: list[int] = []
    commands = CommandTimes()
    client: MongoClient = MongoClient(stack.mongo_uri, tz_aware=True,
                                      event_listeners=[commands])
    try:
        db = client[TASKS_DB]
        store = TasksStore(db)
        with ClusterRpcProxy(stack.config, context_data=SYSTEM_CONTEXT, timeout=120) as rpc:
            cursors: dict[str, str | None] = {}
            next_times: list[float] = []  # only queries with a next page

            def first_page(f: dict[str, str]) -> None:
                page = rpc.tasks.search_tasks(f)
                returned.append(len(page["items"]))
                cursors[search_key(f)] = page["next_cursor"]

            def next_page(f: dict[str, str]) -> None:
                if cursors[search_key(f)]:
                    started = time.perf_counter()
                    rpc.tasks.search_tasks({**f, "cursor": cursors[search_key(f)]})
                    next_times.append(time.perf_counter() - started)

            ways: dict[str, Callable[[dict[str, str]], Any]] = {
                "rpc": first_page,
                "rpc, next page": next_page,
                "pymongo": lambda f: store.search_indexed(
                    search_key(f), lambda t: domain.answers(t, {"status": "open", **f}),
                    None, 50),
                "scan": lambda f: store._task_page(mongo_filter(f), None, 50)}
            interleaved(mix[:2], ways)  # warm up: not counted
            returned.clear()
            next_times.clear()
            server_before, timers_before = stack.worker_seconds("search_tasks"), \
                timer_readings(stack)
            before, started = stack.cpu(), time.perf_counter()
            times = interleaved(mix, ways)
            search_cpu, search_wall = cpu_delta(before, stack.cpu()), \
                time.perf_counter() - started
            server = seconds_between(server_before, stack.worker_seconds("search_tasks"))
            timers_after = timer_readings(stack)

        print("  timer queries, explain ...", file=sys.stderr, flush=True)
        now = ServiceBase.now()
        timer_times, explained = {}, []
        for name, (_, query) in TIMER_QUERIES.items():
            commands.filters.clear()
            commands.recording = True
            timer_times[name] = timed(lambda q=query: q(store, now), 3, warmup=0)
            commands.recording = False
            explained.append((f"timer {name}", "filter only", TASKS, commands.filters[0]))
        for name, filters in (mix_of(mix, "common skill, common language"),
                              mix_of(mix, "rare skill, rare language")):
            label = f"{name}: {filters['skill_id']} / {filters['language']}"
            span = {"key": {"$eq": search_key(filters)}}
            ids = [e["task_id"] for e in db[TASK_INDEX].find(span).sort("task_id", 1).limit(51)]
            explained += [
                (label, f"{TASK_INDEX}: first page", TASK_INDEX, span),
                (label, f"{TASK_INDEX}: next page", TASK_INDEX,
                 {**span, "task_id": {"$gt": ids[-1] if ids else ""}}),
                *([(label, f"{TASKS}: the page's tasks", TASKS, {"_id": {"$in": ids}})]
                  if ids else []),  # no entries: the service reads no tasks
                (label, f"{TASKS}: scan without the index", TASKS, mongo_filter(filters))]
        plans = []
        for label, variant, collection, query in explained:
            command: dict[str, Any] = {"find": collection, "filter": query}
            plans.append((label, variant, plan_steps(
                db.command("explain", command)["queryPlanner"]["winningPlan"])))
    finally:
        client.close()
    stack.snapshot_memory("after search")

    via_rpc = times["rpc"]
    rows = [search_row("search_tasks RPC, all queries", flat(via_rpc),
                       f"{sum(returned) / len(returned):.0f} returned (avg)",
                       per_call(search_cpu["tasks"], len(flat(via_rpc))),
                       f"p50 <= {SEARCH_P50 * 1000:.0f} ms",
                       percentile(flat(via_rpc), 50) <= SEARCH_P50)]
    for name, group in via_rpc.items():
        found = sorted(loaded.pairs[(f["skill_id"], f["language"])] for n, f in mix
                       if n == name)
        rows.append(search_row(f"  {name}", group, f"{found[len(found) // 2]} match (median)"))
    if server:
        rows.append(info_row("  search_tasks worker incl. reply (mean, /metrics)",
                             str(server[1]), ms(server[0] / max(server[1], 1)), width=9))
    if next_times:
        rows.append(search_row("search_tasks RPC, the next page (cursor of the first)",
                               next_times, "queries with more than one page"))
    for way, title in (("pymongo", "store.search_indexed via pymongo (same query, limit)"),
                       ("scan", "diagnostic: the tasks alone, skill/language `$in` (no "
                                "index entries)")):
        rows.append(search_row(title, flat(times[way])))
        rows += [search_row(f"  {name}", group) for name, group in times[way].items()]
    for name, group in timer_times.items():
        rows.append(search_row(f"timer query: {name} ({TIMER_QUERIES[name][0]})", group))
    print_table(f"Open-task search over {loaded.count} open tasks (skill_id + language, "
                "default limit 50; sequential, the ways take turns on each query)",
                ["query", "n", "p50", "p99", "max", "tasks CPU", "matching", "target", ""],
                rows)

    plan_rows = []
    for n, (label, variant, steps) in enumerate(plans):
        used = indexes_in(steps)
        if label.startswith("timer"):
            note = f"indexes: {', '.join(used) or 'none'}"
        else:
            note = f"indexes: {', '.join(used) or 'none (scan)'}"
        first_of_label = n == 0 or plans[n - 1][0] != label
        for k, step in enumerate(steps):
            plan_rows.append([label if first_of_label and not k else "",
                              variant if not k else "", step, note if not k else ""])
    print_table("Store explain plans (winningPlan)", ["query", "explain", "plan step",
                                                       "verdict"], plan_rows)

    paired = [r - p for r, p in zip(flat(via_rpc), flat(times["pymongo"]), strict=True)]
    print_table("Where the time goes (search)", ["what", "value"], [
        ("tasks loaded (insert_many, 2,000 a batch)",
         f"{loaded.count}: generated (schema load + new_task + publish) in "
         f"{loaded.generate_seconds:.1f} s, inserted in {loaded.insert_seconds:.1f} s "
         f"({loaded.count / loaded.insert_seconds:.0f}/s), ~{loaded.bytes_sample} B BSON each"),
        (f"search index entries ({TASK_INDEX})",
         f"{loaded.index_entries} ({loaded.index_entries / loaded.count:.1f} per task), "
         f"inserted in {loaded.index_seconds:.1f} s"),
        ("store CPU during the load", "n/a" if load_cpu["store"] is None
         else f"{load_cpu['store']:.1f} s"),
        ("skills: most / least common in the load",
         f"{loaded.skills.most_common(1)[0]} / {loaded.skills.most_common()[-1]}"),
        ("search RPC - pymongo, paired per query (median): service, reply of up to 50 "
         "tasks, broker", ms(percentile(paired, 50))),
        ("CPU during the query loop (share of its wall)", cpu_text(search_cpu, search_wall)),
        ("tasks' own timers during the load (/metrics: runs, time, share of wall)",
         timer_text(timers_start, timers_loaded, load_wall)),
        ("tasks' own timers during the query loop",
         timer_text(timers_before, timers_after, search_wall)),
    ])


def search_row(name: str, times: list[float], matching: str = "", tasks_cpu: str = "-",
               target: str = "", ok: bool | None = None) -> list[str]:
    return [name, str(len(times)), ms(percentile(times, 50)), ms(percentile(times, 99)),
            ms(max(times)), tasks_cpu, matching, target, "" if ok is None else verdict(ok)]


def mix_of(mix: list[tuple[str, dict[str, str]]], name: str) -> tuple[str, dict[str, str]]:
    return next((n, f) for n, f in mix if n == name)


def credentials_phase(args: argparse.Namespace, org_id: str, task_id: str,
                      volunteer_id: str) -> None:
    print(f"4/{STEPS} credentials ...", file=sys.stderr, flush=True)
    try:
        table, facts = credential_timings(args.credential_iterations, org_id, task_id,
                                          volunteer_id)
    except RuntimeError as exc:
        print(f"\ncredentials: not measured ({exc})", flush=True)
        return
    print_table("Credentials (in-process, services/tasks/credentials.py)",
                ["operation", "n", "p50", "p99", "max", "target", ""], table)
    print_table("Credentials: facts", ["what", "value"], facts)


def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    volunteers = args.accepts + WARMUP  # every sequential claim by a different volunteer
    with tasks_stack() as stack:
        stack.snapshot_memory("idle")
        print(f"registry pid {stack.procs['registry'].pid}, tasks pid "
              f"{stack.procs['tasks'].pid}, store pid {stack.store_pid}, metrics ports "
              f"{stack.metrics_ports}, vhost {stack.amqp_uri.rsplit('/', 1)[1]}",
              file=sys.stderr)
        print(f"0/{STEPS} {volunteers} volunteers and a verified organisation ...",
              file=sys.stderr, flush=True)
        started = time.perf_counter()
        vols = register_volunteers(stack, volunteers, rng)
        org_id = verified_organisation(stack)
        registered = time.perf_counter() - started
        propagated = wait_read_model(stack, vols, org_id)
        per_task = min(SLOTS // 2, len(vols))  # claims per task: half its slots at most
        seq_ids = open_tasks(stack, org_id, math.ceil(volunteers / per_task), "s")
        conc_ids = open_tasks(stack, org_id, math.ceil(args.concurrent_total / per_task), "c")
        stack.snapshot_memory("after volunteers")
        setup = [("volunteers (registry RPC) / then all in the tasks read model",
                  f"{len(vols)} + verified organisation in {registered:.1f} s / "
                  f"{propagated:.1f} s later")]

        claims_phase(stack, args, rng, vols, seq_ids, conc_ids, setup)
        search_phase(stack, args, rng)
        credentials_phase(args, org_id, seq_ids[0], vols[0])

        memory = [[*line, ""] for line in stack.memory_rows()]
        memory.append(["bench client peak (ru_maxrss)", "", "", "", mb(own_peak_rss_kb())])
        print_table("Memory (VmRSS unless stated)",
                    ["moment", "registry", "tasks", "store", "bench client"], memory)


def main() -> int:
    # py-amqp logs a confirm that arrives while a proxy closes its channel; harmless.
    logging.getLogger("amqp").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--accepts", type=int, default=500, help="sequential claims")
    parser.add_argument("--concurrent-total", type=int, default=2000)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--tasks-total", type=int, default=100_000, help="tasks to search")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--credential-iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    interrupt_on_sigterm()
    try:
        run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
