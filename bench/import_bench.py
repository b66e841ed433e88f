"""CSV import of 10,000 volunteers through the real CLI against a real registry.

    .venv/bin/python bench/import_bench.py      (or `make bench`)

Generates a realistic spreadsheet (Arabic, English and French names, unique emails,
`ar:native; en:fluent` languages, skills mixing taxonomy labels and free text, weekly
availability, ~2% deliberately invalid rows) in a temporary directory, starts its own
store, vhost and `nameko run` registry (see bench/registry_bench.py), then times
`python -m services.registry.cli import FILE --terms-version bench --report REPORT` as a
subprocess and prints rows/s, outcomes from the report and memory. Nothing is asserted;
everything started here is stopped at the end, also on error or Ctrl-C.
"""
from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.registry_bench import (  # noqa: E402
    Stack,
    bench_stack,
    cpu_delta,
    cpu_text,
    interrupt_on_sigterm,
    mb,
    per_call,
    print_table,
    verdict,
    volunteer_count,
    volunteer_row,
)
from services.registry.domain import CSV_COLUMNS  # noqa: E402

TARGET_ROWS, TARGET_SECONDS = 10_000, 60.0  # 10,000 rows in a minute or less


# -- the spreadsheet ------------------------------------------------------------------------
# Mistakes people make in spreadsheets; each must come back as `rejected`.
def _bad_email(row: dict[str, str]) -> None:
    row["email"] = row["email"].replace("@", " at ")


def _bad_timezone(row: dict[str, str]) -> None:
    row["timezone"] = "Beirut"


def _bad_availability(row: dict[str, str]) -> None:
    row["availability"] = "tuesday evenings"


def _bad_window(row: dict[str, str]) -> None:
    row["availability"] = "sat 12:00-09:00"


def _bad_hours(row: dict[str, str]) -> None:
    row["hours_per_week"] = "four"


def _bad_language(row: dict[str, str]) -> None:
    row["languages"] = "arabic:native; english:fluent"


def _bad_phone(row: dict[str, str]) -> None:
    row["phone"] = "0096170123456"


def _bad_skill_level(row: dict[str, str]) -> None:
    row["skills"] = "Translation:guru; ترجمة"


def _bad_country(row: dict[str, str]) -> None:
    row["country"], row["region"] = "Lebanon", "Beirut"


def _no_name(row: dict[str, str]) -> None:
    row["name"] = ""


MISTAKES: list[Callable[[dict[str, str]], None]] = [
    _bad_email, _bad_timezone, _bad_availability, _bad_window, _bad_hours, _bad_language,
    _bad_phone, _bad_skill_level, _bad_country, _no_name]


def write_csv(path: Path, rows: int, invalid_share: float, rng: random.Random
              ) -> dict[int, str]:
    """Write the file; return {line number: mistake} for the rows made invalid."""
    invalid = set(rng.sample(range(rows), round(rows * invalid_share)))
    mistakes: dict[int, str] = {}
    # utf-8-sig: what spreadsheets save Arabic CSV as (the CLI strips the BOM).
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for n in range(rows):
            row = volunteer_row(rng, n)
            if n in invalid:
                mistake = rng.choice(MISTAKES)
                mistake(row)
                mistakes[n + 2] = mistake.__name__.lstrip("_")  # line 1 is the header
            writer.writerow(row)
    return mistakes


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


# -- running the CLI --------------------------------------------------------------------------
def run_cli(stack: Stack, csv_path: Path, report: Path, log: Path
            ) -> tuple[float, int, resource.struct_rusage]:
    """Time the real CLI as a subprocess; (seconds, exit status, its rusage)."""
    python = ROOT / ".venv" / "bin" / "python"
    command = [str(python if python.exists() else sys.executable), "-m",
               "services.registry.cli", "import", str(csv_path), "--terms-version", "bench",
               "--report", str(report)]
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, env=stack.env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # wait4, not wait(): it also hands back the child's peak RSS and CPU time.
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.terminate()
            proc.wait(10)
            raise
        elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, proc.returncode, usage


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="sanad-import-bench-"))
    try:
        csv_path, report = workdir / "volunteers.csv", workdir / "report.csv"
        started = time.perf_counter()
        mistakes = write_csv(csv_path, args.rows, args.invalid, rng)
        generated = time.perf_counter() - started
        print(f"generated {args.rows} rows ({len(mistakes)} invalid) in {generated:.1f} s: "
              f"{csv_path}", file=sys.stderr)
        with bench_stack() as stack:
            stack.snapshot_memory("before")
            print(f"registry pid {stack.registry.pid}, store pid {stack.store_pid}; "
                  "importing ...", file=sys.stderr, flush=True)
            server_before = stack.server_seconds("import_volunteers")
            cpu_before = stack.cpu()
            seconds, status, usage = run_cli(stack, csv_path, report, workdir / "cli.log")
            cpu = cpu_delta(cpu_before, stack.cpu())
            server_after = stack.server_seconds("import_volunteers")
            stack.snapshot_memory("after")
            stored, pending = volunteer_count(stack)
            if not report.exists():
                print((workdir / "cli.log").read_text(errors="replace")[-3000:],
                      file=sys.stderr)
                raise RuntimeError(f"the CLI wrote no report (exit status {status})")
            lines = read_report(report)
            print_results(args, csv_path, mistakes, seconds, status, usage, lines, stack,
                          cpu, server_before, server_after, stored, pending)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_results(args: argparse.Namespace, csv_path: Path, mistakes: dict[int, str],
                  seconds: float, status: int, usage: resource.struct_rusage,
                  lines: list[dict[str, str]], stack: Stack,
                  cpu: dict[str, float | None], server_before: tuple[float, int] | None,
                  server_after: tuple[float, int] | None, stored: int, pending: int) -> None:
    outcomes = Counter(line["outcome"] for line in lines)
    rejected = {int(line["row"]): line for line in lines if line["outcome"] == "rejected"}
    unexpected = sorted(set(rejected) - set(mistakes))
    missed = sorted(set(mistakes) - set(rejected))
    rate = args.rows / seconds
    target_seconds = args.rows * TARGET_SECONDS / TARGET_ROWS
    summary = [
        ["rows in file", f"{args.rows} ({csv_path.stat().st_size / 1e6:.1f} MB, "
                         f"{len(mistakes)} made invalid)", "", ""],
        ["total (CLI start to exit)", f"{seconds:.1f} s", f"<= {target_seconds:.0f} s",
         verdict(seconds <= target_seconds)],
        ["throughput", f"{rate:.0f} rows/s", f">= {TARGET_ROWS / TARGET_SECONDS:.0f} rows/s",
         verdict(seconds <= target_seconds)],
        ["CLI exit status", f"{status} (1 = some rows rejected)", "", ""],
        ["report lines", str(len(lines)), str(args.rows), verdict(len(lines) == args.rows)],
    ]
    for outcome in ("created", "updated", "unchanged", "rejected"):
        expected = {"created": args.rows - len(mistakes), "rejected": len(mistakes)}.get(
            outcome, 0)
        got = outcomes.get(outcome, 0)
        summary.append([f"  {outcome}", str(got), str(expected), verdict(got == expected)])
    summary += [
        ["  rejected but valid (unexpected)", str(len(unexpected)), "0",
         verdict(not unexpected)],
        ["  invalid but not rejected", str(len(missed)), "0", verdict(not missed)],
        ["volunteers stored", str(stored), str(outcomes.get("created", 0)),
         verdict(stored == outcomes.get("created", 0))],
        ["volunteers with events still in the outbox", str(pending), "0 (after relay)", ""],
    ]
    print_table("CSV import (python -m services.registry.cli import)",
                ["what", "value", "expected / target", ""], summary)

    by_mistake = Counter(mistakes[row] for row in rejected if row in mistakes)
    reasons = [[name, str(count), _first_reason(rejected, mistakes, name)]
               for name, count in sorted(by_mistake.items())]
    for row in unexpected[:5]:
        reasons.append([f"UNEXPECTED row {row}", "1", rejected[row]["errors"][:90]])
    print_table("Rejections by planted mistake (first reason from the report)",
                ["mistake", "rows", "reason"], reasons)

    facts = [
        ("CPU during import (share of wall)", cpu_text(cpu, seconds)),
        ("CLI process CPU", f"{usage.ru_utime + usage.ru_stime:.1f} s"),
        ("CPU per row", ", ".join(f"{k} {per_call(v, args.rows)}" for k, v in cpu.items()
                                  if v is not None and k != "bench client")
         + f", CLI {per_call(usage.ru_utime + usage.ru_stime, args.rows)}"),
    ]
    if server_before is not None and server_after is not None:
        busy = server_after[0] - server_before[0]
        batches = server_after[1] - server_before[1]
        facts.append(("import_volunteers worker time incl. reply (/metrics)",
                      f"{busy:.1f} s over {batches} batches ({busy / seconds:.0%} of wall, "
                      f"{per_call(busy, args.rows)} per row)"))
    print_table("Where the time goes", ["what", "value"], facts)

    memory = stack.memory_rows()
    memory.insert(len(memory) - 1, ("CLI peak (ru_maxrss)", mb(usage.ru_maxrss)))
    print_table("Memory", ["process", "value"], memory)


def _first_reason(rejected: dict[int, dict[str, str]], mistakes: dict[int, str],
                  name: str) -> str:
    for row, line in sorted(rejected.items()):
        if mistakes.get(row) == name:
            try:
                errors = json.loads(line["errors"])
            except ValueError:
                return line["errors"][:90]
            field, messages = next(iter(errors.items()))
            return f"{field}: {json.dumps(messages, ensure_ascii=False)}"[:90]
    return ""


def main() -> int:
    logging.getLogger("amqp").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--invalid", type=float, default=0.02, help="share of invalid rows")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    interrupt_on_sigterm()
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
