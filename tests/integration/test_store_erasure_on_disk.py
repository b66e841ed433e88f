"""What a deleted document leaves in nx-27017's data folder (docs/operations.md).

A store started with a real data dir, as `scripts/run-store.sh` does; the folder is
scanned byte by byte for the erased person's name after the delete.
"""
from __future__ import annotations

from pathlib import Path

from pymongo import MongoClient

from tests.support import nx_store

NAME = "Rana Erased-0xC0FFEE"


def files_holding(folder: Path, needle: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.suffix != ".log" and needle.encode() in p.read_bytes())


def delete_and_scan(folder: Path, journal_mode: str) -> list[str]:
    with nx_store(folder, journal_mode) as uri:
        client: MongoClient = MongoClient(uri)
        people = client["sanad_erasure_probe"]["people"]
        people.insert_many([{"_id": "vol_1", "name": NAME}, {"_id": "vol_2", "name": "Kept"}])
        people.delete_one({"_id": "vol_1"})
        assert people.find_one({"name": NAME}) is None
        found = files_holding(folder, NAME)
        client.close()
    return found


def test_delete_journal_mode_leaves_no_erased_data_in_the_folder(tmp_path: Path) -> None:
    assert delete_and_scan(tmp_path, "DELETE") == []


def test_wal_journal_mode_keeps_erased_data_in_the_wal(tmp_path: Path) -> None:
    """The deviation recorded in store-compatibility.md: fix the docs if this fails."""
    assert delete_and_scan(tmp_path, "WAL") == ["sanad_erasure_probe.db-wal"]
