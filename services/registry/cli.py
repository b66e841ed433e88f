"""Command line for operators: bulk import of volunteers from a CSV file.

    python -m services.registry.cli import volunteers.csv --terms-version 2026-01 \
        --report report.csv

Rows go to the running registry over RPC in batches (the service validates and
writes; this tool never touches the database). Progress goes to stderr, and the report
has one line per row: created, updated, unchanged or rejected, with the reasons.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from services.common.caller import COORDINATOR, caller_context
from services.common.config import load_config, service_config_path

BATCH = 250


def read_rows(path: Path) -> Iterator[dict[str, str]]:
    # utf-8-sig: spreadsheets save Arabic CSV with a byte-order mark.
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            yield {(k or "").strip().lower(): (v or "") for k, v in row.items()
                   if k is not None}


def batches(rows: Iterator[dict[str, str]], size: int) -> Iterator[list[dict[str, str]]]:
    batch: list[dict[str, str]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def import_file(path: Path, terms_version: str, report_path: Path | None,
                config: dict[str, Any], user_id: str, out: Any = sys.stderr
                ) -> Counter[str]:
    """Send the file in batches; write the report; return the count of each outcome."""
    from nameko.standalone.rpc import ServiceRpcProxy  # keeps `--help` instant

    totals: Counter[str] = Counter()
    started = time.monotonic()
    report = report_path.open("w", encoding="utf-8", newline="") if report_path else None
    writer = csv.writer(report) if report else None
    if writer:
        writer.writerow(["row", "outcome", "volunteer_id", "errors"])
    context = caller_context(user_id, [COORDINATOR])
    try:
        with ServiceRpcProxy("registry", config, context_data=context, timeout=300) as rpc:
            first_row = 2  # line 1 is the header
            for batch in batches(read_rows(path), BATCH):
                result = rpc.import_volunteers({"rows": batch, "first_row": first_row,
                                                "terms_version": terms_version})
                for line in result["rows"]:
                    totals[line["outcome"]] += 1
                    if writer:
                        errors = json.dumps(line.get("errors"), ensure_ascii=False) \
                            if line.get("errors") else ""
                        writer.writerow([line["row"], line["outcome"],
                                         line.get("volunteer_id", ""), errors])
                first_row += len(batch)
                done = sum(totals.values())
                rate = done / max(time.monotonic() - started, 1e-9)
                print(f"\rimported {done} rows ({rate:.0f}/s): "
                      + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())),
                      end="", file=out, flush=True)
    finally:
        if report:
            report.close()
    print(file=out)
    return totals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.registry.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import volunteers from a CSV file")
    imp.add_argument("csv", type=Path)
    imp.add_argument("--terms-version", required=True,
                     help="the terms version the volunteers consented to with your NGO")
    imp.add_argument("--report", type=Path, help="write the per-row report here (CSV)")
    imp.add_argument("--as-user", default="cli", help="user id recorded as the importer")
    imp.add_argument("--config", type=Path, default=service_config_path("registry"))
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        parser.error(f"no such file: {args.csv}")
    totals = import_file(args.csv, args.terms_version, args.report, load_config(args.config),
                         args.as_user)
    return 1 if totals.get("rejected") else 0


if __name__ == "__main__":
    import eventlet

    eventlet.monkey_patch()
    raise SystemExit(main())
