"""Hostile values sent over the real broker: a field-level ValidationError, nothing stored,
and the service still answering. Anonymous callers send them too."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from services.common.errors import ValidationError
from services.registry.store import VOLUNTEERS
from services.tasks.service import TasksService
from tests.factories import volunteer

NOBODY = {"roles": (), "user_id": None}
COORDINATOR = {"roles": ("coordinator",), "user_id": "u_coord"}


def refused_field(call: Any, *args: Any) -> str:
    with pytest.raises(ValidationError) as refused:
        call(*args)
    return str(refused.value)


@pytest.mark.parametrize("version", [Decimal("1e999999"), 2**63, 10**4000],
                         ids=["decimal-1e999999", "2**63", "4001-digits"])
def test_giant_versions_are_refused_by_field_even_from_an_anonymous_caller(
        system: Any, rpc: Any, version: Any) -> None:
    vol = system.register_volunteer(volunteer())
    anonymous = rpc("registry", **NOBODY)
    assert "version" in refused_field(anonymous.pause_volunteer, vol["id"],
                                      {"version": version})
    assert system.get_volunteer(vol["id"])["status"] == vol["status"]  # unchanged, still up


def test_an_import_with_a_giant_first_row_writes_nothing(system: Any, rpc: Any, db: Any
                                                         ) -> None:
    row = {"email": "rana.h@example.org", "name": "Rana Haddad", "preferred_language": "ar",
           "languages": "ar:native", "timezone": "Asia/Beirut"}
    importer = rpc("registry", **COORDINATOR)
    # the same row is importable: it is the batch's first_row alone that is refused
    assert importer.import_volunteers({"rows": [row], "terms_version": "2026-01"})[
        "rows"][0]["outcome"] == "created"
    db("registry")[VOLUNTEERS].delete_many({})
    assert "first_row" in refused_field(importer.import_volunteers, {
        "rows": [row], "first_row": Decimal("1e5000"), "terms_version": "2026-01"})
    assert db("registry")[VOLUNTEERS].count_documents({}) == 0
    assert system.list_skills()


def test_a_name_with_a_bidi_override_or_trailing_newline_id_is_refused(system: Any) -> None:
    assert "name" in refused_field(system.register_volunteer,
                                   volunteer(name="\u202eadmin\u202c"))
    refused_field(system.get_organisation, "org_" + "a" * 28 + "\n")


def test_a_lone_surrogate_credential_id_is_refused_by_field(
        container_factory: Any, config: dict[str, Any], rpc: Any) -> None:
    container_factory(TasksService, config).start()
    tasks = rpc("tasks", roles=("coordinator",), user_id="u_coord")
    assert "credential_id" in refused_field(tasks.revoke_credential, "urn:uuid:\ud800",
                                            {"version": 1})
    assert tasks.search_tasks({"limit": 1}) is not None
