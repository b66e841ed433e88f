"""Registry latency, throughput and memory on a real broker, store and `nameko run`.

    .venv/bin/python bench/registry_bench.py      (or `make bench`)

Starts its own nx-27017 (free port, memory data dir), its own RabbitMQ vhost and the
registry as a separate `nameko run` process (with the empty `bench_ping` service beside
it), then measures, in one run on the same broker:

1. raw AMQP request/reply round trips through a small kombu echo process (the floor);
2. an empty nameko RPC (`bench_ping.ping`);
3. `registry.get_volunteer` on ~100 realistic volunteers;
4. `registry.register_volunteer` throughput, sequential and with 16 concurrent callers.

Figures are printed as tables with their targets; nothing is asserted. Everything
started here is stopped at the end, also on error or Ctrl-C.
"""
from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import argparse  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import unicodedata  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/x.py` puts bench/ first, not the root

import greenlet  # noqa: E402
from eventlet import hubs  # noqa: E402
from kombu import Connection, Consumer, Producer, Queue  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from services.common.caller import caller_context  # noqa: E402
from services.registry.domain import CSV_COLUMNS, csv_row_to_registration  # noqa: E402
from services.registry.taxonomy import default_taxonomy  # noqa: E402
from tests.processes import ServiceProcess  # noqa: E402
from tests.support import STORE_BIN, nx_store, rabbit_vhost  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
DB_PREFIX = "bench_"
SYSTEM_CONTEXT = caller_context(None, ["system"])
READY_TIMEOUT = 90.0
PING = {"bench.ping_service": "bench_ping"}  # the empty RPC, beside a service
# The services' own defaults (relay interval, grace), quieter logs.
BENCH_SETTINGS = {"LOG_LEVEL": "WARNING"}


# -- process facts from /proc ------------------------------------------------------------
def proc_status_kb(pid: int | None, key: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in kB (None if gone or unknown)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def store_pid(mongo_uri: str) -> int | None:
    """The nx-27017 process serving `mongo_uri` (None for a store we did not start)."""
    match = re.search(r":(\d+)/?$", mongo_uri)
    if not match:
        return None
    port = match.group(1)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        args = _cmdline(pid)
        if any(a.endswith(STORE_BIN.name) for a in args[:2]) and port in args:
            return int(pid)
    return None


def broker_pid() -> int | None:
    """The local RabbitMQ (Erlang VM) process, to read its CPU time; None if not visible."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp":
                return int(pid)
        except OSError:
            continue
    return None


def own_peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


def mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MB"


# -- the stack under test -----------------------------------------------------------------
def bench_config(amqp_uri: str, mongo_uri: str) -> dict[str, str]:
    """Where the bench's processes find the broker and the store."""
    return {"AMQP_URI": amqp_uri, "MONGO_URI": mongo_uri, "MONGO_DB_PREFIX": DB_PREFIX}


def service_env(amqp_uri: str, mongo_uri: str) -> dict[str, str]:
    """Environment for a command that reads services/registry/config.yml (the CLI)."""
    return {**os.environ, **bench_config(amqp_uri, mongo_uri), **BENCH_SETTINGS}


def entrypoint_seconds(port: int | None, entrypoint: str, kind: str = "rpc"
                       ) -> tuple[float, int] | None:
    """(sum of seconds, calls) of one entrypoint from a service's /metrics histogram, for
    any kind (rpc, timer, event). For an RPC that is the handler plus the reply publish."""
    if port is None:
        return None
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own local process
                f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    found: dict[str, float] = {}
    for suffix in ("sum", "count"):
        match = re.search(rf'^sanad_request_duration_seconds_{suffix}\{{entrypoint='
                          rf'"{entrypoint}",kind="{kind}"\}} (\S+)$', text, re.M)
        if match:
            found[suffix] = float(match.group(1))
    if len(found) < 2:
        return 0.0, 0  # not called yet: the series appears with the first call
    return found["sum"], int(found["count"])


@dataclass


class Stack:
    amqp_uri: str
    mongo_uri: str
    registry: ServiceProcess
    store_pid: int | None
    workdir: Path
    metrics_port: int | None = None
    broker_pid: int | None = None
    memory: dict[str, int | None] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return {"AMQP_URI": self.amqp_uri, "serializer": "json"}

    def env(self) -> dict[str, str]:
        return service_env(self.amqp_uri, self.mongo_uri)

    def snapshot_memory(self, label: str) -> None:
        self.memory[f"registry {label}"] = proc_status_kb(self.registry.pid, "VmRSS")
        self.memory[f"store {label}"] = proc_status_kb(self.store_pid, "VmRSS")

    def memory_rows(self) -> list[tuple[str, str]]:
        rows = [(f"{name} (VmRSS)", mb(kb)) for name, kb in self.memory.items()]
        rows.append(("registry peak (VmHWM)", mb(proc_status_kb(self.registry.pid, "VmHWM"))))
        rows.append(("store peak (VmHWM)", mb(proc_status_kb(self.store_pid, "VmHWM"))))
        rows.append(("bench client peak (ru_maxrss)", mb(own_peak_rss_kb())))
        return rows

    def cpu(self) -> dict[str, float | None]:
        return {"registry": cpu_seconds(self.registry.pid), "store": cpu_seconds(self.store_pid),
                "broker": cpu_seconds(self.broker_pid), "bench client": cpu_seconds(os.getpid())}

    def server_seconds(self, entrypoint: str) -> tuple[float, int] | None:
        """(sum of worker seconds, calls) from the registry's own /metrics histogram.

        nameko calls the Metrics `worker_result` hook after the reply is published, so
        this is the handler plus the reply publish (with its broker confirm).
        """
        return entrypoint_seconds(self.metrics_port, entrypoint)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drop_bench_databases(mongo_uri: str) -> None:
    """For a real MongoDB given via MONGO_URI; the nx-27017 started here is in memory."""
    try:
        client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=2000)
        for name in client.list_database_names():
            if name.startswith(DB_PREFIX):
                client.drop_database(name)
        client.close()
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the real error
        print(f"warning: could not drop {DB_PREFIX}* databases: {exc!r}", file=sys.stderr)


@contextmanager
def bench_stack(beside: dict[str, str] | None = None) -> Iterator[Stack]:
    """Store, vhost and the registry's real `nameko run` (with `beside` services in the
    same process); all stopped on the way out."""
    with ExitStack() as cleanup:
        mongo_uri = cleanup.enter_context(nx_store())
        amqp_uri = cleanup.enter_context(rabbit_vhost())
        if os.environ.get("MONGO_URI"):  # a real store given by the caller outlives us
            _drop_bench_databases(mongo_uri)
            cleanup.callback(_drop_bench_databases, mongo_uri)
        workdir = Path(tempfile.mkdtemp(prefix="sanad-bench-"))
        cleanup.callback(shutil.rmtree, workdir, True)
        registry = ServiceProcess("registry", bench_config(amqp_uri, mongo_uri), workdir,
                                  beside=beside, settings=BENCH_SETTINGS)
        cleanup.callback(registry.stop, 20)
        stack = Stack(amqp_uri=amqp_uri, mongo_uri=mongo_uri, registry=registry.start(),
                      store_pid=store_pid(mongo_uri), workdir=workdir,
                      broker_pid=broker_pid())
        registry.wait_answering(stack.config, READY_TIMEOUT)
        stack.metrics_port = registry.metrics_port()
        yield stack
        if registry.proc is not None and registry.proc.poll() is not None:
            print(f"warning: nameko run exited early ({registry.proc.returncode}):\n"
                  f"{registry.log_tail()}", file=sys.stderr)


def interrupt_on_sigterm() -> None:
    """Ctrl-C and SIGTERM unwind the main greenthread, so its `finally` blocks stop what
    we started.

    Python runs a signal handler in whatever greenthread is current; a KeyboardInterrupt
    raised in a caller greenthread (or the hub) would kill only that one and leave the
    main one waiting. So the interrupt is thrown into the main greenthread instead.
    """
    main = greenlet.getcurrent()

    def handler(signum: int, frame: Any) -> None:
        if greenlet.getcurrent() is main:
            raise KeyboardInterrupt
        hubs.get_hub().schedule_call_global(0, main.throw, KeyboardInterrupt)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# -- realistic volunteers -----------------------------------------------------------------
ARABIC_FIRST = [("رنا", "rana"), ("محمد", "mohammad"), ("فاطمة", "fatima"), ("أحمد", "ahmad"),
                ("ليلى", "layla"), ("يوسف", "youssef"), ("مريم", "maryam"), ("عمر", "omar"),
                ("نور", "nour"), ("خالد", "khaled"), ("سارة", "sara"), ("حسن", "hassan"),
                ("زينب", "zeinab"), ("كريم", "karim"), ("هبة", "hiba"), ("طارق", "tarek"),
                ("دانة", "dana"), ("جود", "joud"), ("إيمان", "iman"), ("سامي", "sami")]
ARABIC_LAST = [("الخطيب", "khatib"), ("حداد", "haddad"), ("منصور", "mansour"),
               ("العلي", "alali"), ("سلامة", "salameh"), ("نصر الله", "nasrallah"),
               ("شهاب", "chehab"), ("عيسى", "issa"), ("بيطار", "bitar"),
               ("الزعبي", "zoubi"), ("بن علي", "benali"), ("التونسي", "tounsi")]
ENGLISH_FIRST = ["Emma", "Oliver", "Amelia", "Jack", "Sophie", "Liam", "Grace", "Noah",
                 "Chloe", "James", "Aisha", "Ravi", "Siobhan", "Connor"]
ENGLISH_LAST = ["Smith", "Taylor", "Brown", "Wilson", "Evans", "Walker", "Hughes",
                "O'Connor", "Patel", "Clarke", "Murphy", "Khan"]
FRENCH_FIRST = ["Camille", "Léa", "Théo", "Chloé", "Hugo", "Manon", "Élodie", "Mathis",
                "Inès", "Gaëlle", "Jérôme", "François", "Yasmine", "Noé"]
FRENCH_LAST = ["Dubois", "Lefèvre", "Moreau", "Girard", "Bonnet", "Fontaine", "Rousseau",
               "Mercier", "Benali", "Haddad-Mercier", "Lemaître", "Côté"]

PLACES = {  # country: (timezone, regions, phone prefix, local digits)
    "LB": ("Asia/Beirut", ["Beirut", "Tripoli", "Saida", "Zahle"], "+9613", 6),
    "JO": ("Asia/Amman", ["Amman", "Irbid", "Zarqa"], "+9627", 8),
    "EG": ("Africa/Cairo", ["Cairo", "Alexandria"], "+2010", 8),
    "MA": ("Africa/Casablanca", ["Casablanca", "Rabat", "Fès"], "+2126", 8),
    "TN": ("Africa/Tunis", ["Tunis", "Sfax"], "+2162", 7),
    "GB": ("Europe/London", ["London", "Manchester", "Leeds"], "+447", 9),
    "IE": ("Europe/Dublin", ["Dublin", "Cork"], "+3538", 8),
    "CA": ("America/Toronto", ["Toronto", "Montréal", "Ottawa"], "+1416", 7),
    "FR": ("Europe/Paris", ["Paris", "Lyon", "Marseille", "Lille"], "+336", 8),
    "BE": ("Europe/Brussels", ["Bruxelles", "Liège"], "+324", 8),
}
COUNTRIES = {"ar": ["LB", "LB", "JO", "EG", "MA", "TN", "FR", "CA"],
             "en": ["GB", "GB", "IE", "CA", "LB", "JO"],
             "fr": ["FR", "FR", "BE", "CA", "MA", "TN", "LB"]}
LANGUAGE_LEVELS = ("basic", "conversational", "fluent")
SKILL_LEVELS = ("beginner", "intermediate", "advanced", "expert")
FREE_SKILLS = ["Underwater basket weaving", "Grant writing", "Event planning", "Cooking",
               "طبخ", "كتابة المقترحات", "تنظيم الفعاليات", "خياطة",
               "Organisation d'événements", "Photographie", "Recherche de financements",
               "Jardinage"]
ABOUT = ["أدرّس الرياضيات عن بعد — I tutor maths online.",
         "Retired nurse, happy to help by phone in the evenings.",
         "طالبة هندسة، أحب مساعدة كبار السن في استخدام الهاتف.",
         "Développeuse web, disponible le week-end pour des associations.",
         "I translate between Arabic, French and English.", "", ""]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DOMAINS = ("example.org", "example.com", "example.net", "mail.example.lb")


def _ascii(text: str) -> str:
    flat = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", flat.lower())


def _skill_pool() -> dict[str, list[str]]:
    """Taxonomy labels and synonyms by language (as people type them), plus free text."""
    pool: dict[str, list[str]] = {"ar": [], "en": [], "fr": []}
    for skill in default_taxonomy():
        for lang, text in skill.terms():
            if lang in pool and ":" not in text and ";" not in text:
                pool[lang].append(text)
    return pool


_POOL: dict[str, list[str]] | None = None


def volunteer_row(rng: random.Random, n: int, tag: str = "") -> dict[str, str]:
    """One volunteer as an NGO's spreadsheet row (the CSV import columns)."""
    global _POOL
    if _POOL is None:
        _POOL = _skill_pool()
    culture = rng.choices(("ar", "en", "fr"), weights=(5, 3, 3))[0]
    if culture == "ar":
        (first, first_l), (last, last_l) = rng.choice(ARABIC_FIRST), rng.choice(ARABIC_LAST)
        name = f"{first} {last}" if rng.random() < 0.65 else \
            f"{first_l.title()} {last_l.title()}"
        langs = [("ar", "native")] + [(c, rng.choice(LANGUAGE_LEVELS))
                                      for c in rng.sample(["en", "fr"], rng.randint(0, 2))]
    elif culture == "en":
        first, last = rng.choice(ENGLISH_FIRST), rng.choice(ENGLISH_LAST)
        name, first_l, last_l = f"{first} {last}", _ascii(first), _ascii(last)
        langs = [("en", "native")] + [(c, rng.choice(LANGUAGE_LEVELS))
                                      for c in rng.sample(["ar", "fr"], rng.randint(0, 1))]
    else:
        first, last = rng.choice(FRENCH_FIRST), rng.choice(FRENCH_LAST)
        name, first_l, last_l = f"{first} {last}", _ascii(first), _ascii(last)
        langs = [("fr", "native")] + [(c, rng.choice(LANGUAGE_LEVELS))
                                      for c in rng.sample(["en", "ar"], rng.randint(0, 2))]
    local = f"{first_l}.{last_l}.{tag}{n}"
    if rng.random() < 0.1:
        local = local.title()  # mixed case: uniqueness is case-insensitive
    country = rng.choice(COUNTRIES[culture])
    timezone, regions, prefix, digits = PLACES[country]
    skills = []
    for _ in range(rng.randint(1, 4)):
        lang = rng.choice([c for c, _ in langs if c in ("ar", "en", "fr")])
        text = rng.choice(FREE_SKILLS) if rng.random() < 0.15 else rng.choice(_POOL[lang])
        skills.append(f"{text}:{rng.choice(SKILL_LEVELS)}" if rng.random() < 0.6 else text)
    windows = []
    for day in sorted(rng.sample(DAYS, rng.randint(1, 3)), key=DAYS.index):
        start = rng.randint(8, 19)
        windows.append(f"{day} {start:02d}:00-{min(start + rng.randint(1, 4), 23):02d}:"
                       f"{rng.choice(('00', '30'))}")
    mode = rng.choices(("remote", "onsite", "both"), weights=(6, 2, 2))[0]
    row = {
        "email": f"{local}@{rng.choice(DOMAINS)}",
        "name": name,
        "phone": prefix + "".join(str(rng.randint(0, 9)) for _ in range(digits))
        if rng.random() < 0.7 else "",
        "preferred_language": langs[0][0],
        "languages": "; ".join(f"{c}:{lvl}" for c, lvl in langs),
        "skills": "; ".join(skills),
        "skills_to_learn": "; ".join(rng.sample(_POOL[langs[0][0]], rng.randint(0, 2))),
        "timezone": timezone,
        "availability": "; ".join(windows),
        "hours_per_week": str(rng.randint(1, 20)) if rng.random() < 0.8 else "",
        "mode": mode,
        "country": country if mode != "remote" or rng.random() < 0.7 else "",
        "region": rng.choice(regions),
        "about": rng.choice(ABOUT),
    }
    if not row["country"]:
        row["region"] = ""
    assert set(row) == set(CSV_COLUMNS)
    return row


def registration(row: dict[str, str]) -> dict[str, Any]:
    """The register_volunteer payload for a (valid) row, as the registry's own import makes."""
    payload, errors = csv_row_to_registration(row, "bench")
    assert not errors, errors
    return payload


# -- measuring ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of seconds, in seconds."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def timed(fn: Callable[[], Any], count: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"\n{title}")
    print(f"+{line}+")
    def cells(row: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) \
            + " |"
    print(cells(header))
    print(f"+{line}+")
    for row in rows:
        print(cells(row))
    print(f"+{line}+", flush=True)


# -- 1. raw AMQP floor ----------------------------------------------------------------------
def echo_main(uri: str, queue_name: str, nameko_like: bool) -> None:
    """Echo process: reply to every request on `reply_to`, like an RPC server would."""
    options = {"confirm_publish": True} if nameko_like else {}
    with Connection(uri, transport_options=options) as conn:
        channel = conn.channel()
        producer = Producer(channel)
        queue = Queue(queue_name, durable=nameko_like, auto_delete=not nameko_like)

        def on_message(body: Any, message: Any) -> None:
            producer.publish(body, routing_key=message.properties["reply_to"],
                             correlation_id=message.properties["correlation_id"],
                             serializer="json", delivery_mode=2 if nameko_like else 1)
            message.ack()

        channel.basic_qos(0, 10, False)
        with Consumer(channel, [queue], callbacks=[on_message], accept=["json"]):
            while True:
                conn.drain_events()


def raw_round_trips(amqp_uri: str, count: int, nameko_like: bool) -> list[float]:
    """Request/reply through a separate kombu echo process; seconds per round trip.

    nameko_like: durable request queue, persistent messages and publisher confirms on
    both sides, as nameko's RPC does; otherwise transient and unconfirmed (the floor).
    """
    queue_name = f"bench-echo-{secrets.token_hex(4)}"
    options = {"confirm_publish": True} if nameko_like else {}
    echo: subprocess.Popen[bytes] | None = None
    with Connection(amqp_uri, transport_options=options) as conn:
        channel = conn.channel()
        Queue(queue_name, durable=nameko_like, auto_delete=not nameko_like)(channel).declare()
        reply = Queue(f"bench-reply-{secrets.token_hex(4)}", exclusive=True, auto_delete=True)
        replies: set[str] = set()
        consumer = Consumer(channel, [reply], no_ack=True, accept=["json"],
                            callbacks=[lambda body, msg: replies.add(
                                msg.properties["correlation_id"])])
        consumer.consume()
        producer = Producer(channel)
        ids = itertools.count()
        try:
            echo = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--echo", amqp_uri, queue_name,
                 *(["--nameko-like"] if nameko_like else [])],
                cwd=ROOT, start_new_session=True)

            def round_trip(timeout: float = 10.0) -> None:
                cid = str(next(ids))
                producer.publish({"n": cid}, routing_key=queue_name, reply_to=reply.name,
                                 correlation_id=cid, serializer="json",
                                 delivery_mode=2 if nameko_like else 1)
                deadline = time.monotonic() + timeout
                while cid not in replies:
                    if echo is not None and echo.poll() is not None:
                        raise RuntimeError(f"echo process exited with {echo.returncode}")
                    conn.drain_events(timeout=max(deadline - time.monotonic(), 0.01))
                replies.discard(cid)

            round_trip(timeout=30.0)  # the echo process is up once this returns
            return timed(round_trip, count)
        finally:
            if echo is not None:
                stop_process(echo)
            consumer.cancel()
            if nameko_like:
                Queue(queue_name)(channel).delete()


# -- 2-4. nameko RPC --------------------------------------------------------------------------
def run_concurrently(config: dict[str, Any], items: Sequence[Any],
                     call: Callable[[Any, Any], Any], callers: int
                     ) -> tuple[float, list[float], list[BaseException]]:
    """`callers` greenthreads, each with its own ClusterRpcProxy (own connection and reply
    queue), share the items; returns (wall seconds, per-call seconds, failures)."""
    todo = iter(items)
    latencies: list[float] = []
    failures: list[BaseException] = []
    go = eventlet.event.Event()
    ready = eventlet.semaphore.Semaphore(0)

    def caller() -> None:
        with ClusterRpcProxy(config, context_data=SYSTEM_CONTEXT, timeout=60) as rpc:
            rpc.bench_ping.ping()  # connection and reply queue up before the clock starts
            ready.release()
            go.wait()
            for item in todo:
                started = time.perf_counter()
                try:
                    call(rpc, item)
                except Exception as exc:  # noqa: BLE001 - counted and shown
                    failures.append(exc)
                latencies.append(time.perf_counter() - started)

    threads = [eventlet.spawn(caller) for _ in range(callers)]
    try:
        for _ in range(callers):
            ready.acquire()
        started = time.perf_counter()
        go.send()
        for thread in threads:
            thread.wait()
        wall = time.perf_counter() - started
    finally:
        for thread in threads:
            thread.kill()  # no-op for finished ones; stops the rest on Ctrl-C
    return wall, latencies, failures


def register_concurrently(stack: Stack, rows: list[dict[str, str]], callers: int
                          ) -> tuple[float, list[float], int]:
    wall, latencies, failures = run_concurrently(
        stack.config, rows, lambda rpc, row: rpc.registry.register_volunteer(registration(row)),
        callers)
    if failures:
        print(f"warning: {len(failures)} registrations failed, e.g. {failures[0]!r}",
              file=sys.stderr)
    return wall, latencies, len(failures)


def volunteer_count(stack: Stack) -> tuple[int, int]:
    """(volunteers stored, documents whose events are still pending in the outbox)."""
    client: MongoClient = MongoClient(stack.mongo_uri)
    try:
        coll = client[DB_PREFIX + "registry"]["volunteers"]
        return coll.count_documents({}), coll.count_documents({"outbox_n": {"$gt": 0}})
    finally:
        client.close()


def cpu_delta(before: dict[str, float | None], after: dict[str, float | None]
              ) -> dict[str, float | None]:
    return {k: (after[k] - before[k]) if after[k] is not None and before[k] is not None
            else None for k in before}


def cpu_text(delta: dict[str, float | None], wall: float) -> str:
    return ", ".join(f"{k} {v:.1f}s ({v / wall:.0%})" for k, v in delta.items()
                     if v is not None)


def per_call(seconds: float | None, calls: int) -> str:
    return "-" if seconds is None or not calls else f"{seconds / calls * 1000:.2f} ms"


def store_reads(stack: Stack, ids: list[str], rng: random.Random, count: int) -> list[float]:
    """The store's own floor: find_one by _id from this process, as the registry reads."""
    client: MongoClient = MongoClient(stack.mongo_uri, tz_aware=True)
    try:
        coll = client[DB_PREFIX + "registry"]["volunteers"]
        hidden = {"outbox": 0, "outbox_n": 0, "outbox_lease": 0}
        return timed(lambda: coll.find_one({"_id": rng.choice(ids)}, hidden), count)
    finally:
        client.close()


def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    with bench_stack(PING) as stack:
        stack.snapshot_memory("idle")
        print(f"registry pid {stack.registry.pid}, store pid {stack.store_pid}, "
              f"metrics port {stack.metrics_port}, vhost {stack.amqp_uri.rsplit('/', 1)[1]}",
              file=sys.stderr)
        latency_rows: list[list[str]] = []

        def measure(name: str, fn: Callable[[], list[float]], target: str = "",
                    check: Callable[[list[float]], bool] | None = None,
                    registry_involved: bool = True, store_involved: bool = True
                    ) -> list[float]:
            before = stack.cpu()
            times = fn()
            cpu = cpu_delta(before, stack.cpu())
            latency_rows.append([
                name, str(len(times)), ms(percentile(times, 50)), ms(percentile(times, 99)),
                ms(max(times)),
                per_call(cpu["registry"], len(times)) if registry_involved else "-",
                per_call(cpu["store"], len(times)) if store_involved else "-", target,
                "" if check is None else verdict(check(times))])
            return times

        print("1/4 raw AMQP round trips ...", file=sys.stderr, flush=True)
        measure("raw AMQP (kombu echo, transient)",
                lambda: raw_round_trips(stack.amqp_uri, args.calls, nameko_like=False),
                registry_involved=False, store_involved=False)
        measure("raw AMQP (durable+persistent+confirms)",
                lambda: raw_round_trips(stack.amqp_uri, args.calls, nameko_like=True),
                registry_involved=False, store_involved=False)

        print("2/4 empty nameko RPC ...", file=sys.stderr, flush=True)
        with ClusterRpcProxy(stack.config, context_data=SYSTEM_CONTEXT, timeout=30) as rpc:
            empty = measure("empty nameko RPC (bench_ping.ping)",
                            lambda: timed(rpc.bench_ping.ping, args.calls))

            print("3/4 get_volunteer ...", file=sys.stderr, flush=True)
            ids = [rpc.registry.register_volunteer(registration(volunteer_row(rng, n, "g")))
                   ["id"] for n in range(args.volunteers)]
            server_before = stack.server_seconds("get_volunteer")
            gets = measure(f"get_volunteer (random of {len(ids)})",
                           lambda: timed(lambda: rpc.registry.get_volunteer(rng.choice(ids)),
                                         args.calls),
                           "p50 <= 3 ms", lambda t: percentile(t, 50) <= 0.003)
            server_after = stack.server_seconds("get_volunteer")
            overhead = percentile(gets, 50) - percentile(empty, 50)
            latency_rows.append(["get_volunteer p50 - empty p50", "", ms(overhead), "", "",
                                 "", "", "<= 1 ms", verdict(overhead <= 0.001)])
            if server_before and server_after:
                calls = server_after[1] - server_before[1]
                server_mean = (server_after[0] - server_before[0]) / max(calls, 1)
                latency_rows.append(["  get_volunteer worker incl. reply (mean, /metrics)",
                                     str(calls), ms(server_mean), "", "", "", "", "", ""])
            measure("  store find_one by _id (pymongo, bench client)",
                    lambda: store_reads(stack, ids, rng, args.calls), registry_involved=False)

            print("4/4 registration throughput ...", file=sys.stderr, flush=True)
            seq_rows = [volunteer_row(rng, n, "s") for n in range(args.sequential)]
            seq_payloads = iter([registration(row) for row in seq_rows])
            cpu_before = stack.cpu()
            started = time.perf_counter()
            measure("register_volunteer (sequential)",
                    lambda: timed(lambda: rpc.registry.register_volunteer(next(seq_payloads)),
                                  len(seq_rows), warmup=0))
            seq_wall = time.perf_counter() - started
            seq_cpu = cpu_delta(cpu_before, stack.cpu())

        conc_rows = [volunteer_row(rng, n, "c") for n in range(args.concurrent_total)]
        server_before = stack.server_seconds("register_volunteer")
        cpu_before = stack.cpu()
        result: dict[str, Any] = {}

        def concurrent() -> list[float]:
            result["wall"], latencies, result["failures"] = register_concurrently(
                stack, conc_rows, args.callers)
            return latencies

        measure(f"register_volunteer ({args.callers} concurrent callers)", concurrent)
        conc_wall, failures = result["wall"], result["failures"]
        conc_cpu = cpu_delta(cpu_before, stack.cpu())
        server_after = stack.server_seconds("register_volunteer")
        stored, pending = volunteer_count(stack)
        stack.snapshot_memory("after")

        print_table("Latency (sequential calls unless stated; one broker, one registry "
                    "process; CPU = process CPU time per call)",
                    ["call", "n", "p50", "p99", "max", "registry CPU", "store CPU", "target",
                     ""], latency_rows)
        conc_rate = (len(conc_rows) - failures) / conc_wall
        seq_n, conc_n = len(seq_rows), len(conc_rows)
        throughput = [
            ["sequential, 1 caller", str(seq_n), f"{seq_wall:.2f} s",
             f"{seq_n / seq_wall:.0f}/s", "", ""],
            [f"{args.callers} concurrent callers (GreenPool, own proxy each)",
             str(conc_n), f"{conc_wall:.2f} s", f"{conc_rate:.0f}/s", ">= 300/s",
             verdict(conc_rate >= 300)],
        ]
        print_table("Registration throughput (register_volunteer)",
                    ["mode", "volunteers", "wall", "rate", "target", ""], throughput)
        total_cpu = sum(v for v in conc_cpu.values() if v is not None)
        facts = [
            ("failed registrations", str(failures)),
            ("volunteers stored", str(stored)),
            ("volunteers with events still in the outbox", str(pending)),
            ("CPU during sequential (share of wall)", cpu_text(seq_cpu, seq_wall)),
            (f"CPU during {args.callers} concurrent (share of wall)",
             cpu_text(conc_cpu, conc_wall)),
            (f"CPU per registration, {args.callers} concurrent",
             ", ".join(f"{k} {per_call(v, conc_n)}" for k, v in conc_cpu.items()
                       if v is not None) + f"; total {per_call(total_cpu, conc_n)}"),
            ("CPUs on this machine", f"{os.cpu_count()} (ceiling if CPU-bound: "
                                     f"{(os.cpu_count() or 1) * conc_n / total_cpu:.0f}/s)"),
        ]
        if server_before and server_after:
            calls = server_after[1] - server_before[1]
            busy = server_after[0] - server_before[0]
            facts.append((f"register_volunteer worker incl. reply, {args.callers} concurrent "
                          "(mean, /metrics)", f"{ms(busy / max(calls, 1))} over {calls} calls"))
        print_table("Where the time goes", ["what", "value"], facts)
        print_table("Memory", ["process", "value"], stack.memory_rows())


def main() -> int:
    # py-amqp logs a confirm that arrives while a proxy closes its channel; harmless.
    logging.getLogger("amqp").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per latency")
    parser.add_argument("--volunteers", type=int, default=100)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--concurrent-total", type=int, default=3000)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--echo", nargs=2, metavar=("AMQP_URI", "QUEUE"), help=argparse.SUPPRESS)
    parser.add_argument("--nameko-like", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        try:
            echo_main(args.echo[0], args.echo[1], args.nameko_like)
        except KeyboardInterrupt:
            pass
        return 0
    interrupt_on_sigterm()
    try:
        run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
