"""The `World` builder integration tests share (the `world` fixture in conftest)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.factories import volunteer
from tests.support import wait_for


class World:
    """An organisation, its coordinator and volunteers, as the tasks service learns them."""

    def __init__(self, rpc: Any, db: Any) -> None:
        self.rpc, self.db = rpc, db
        self.registry = rpc("registry")
        owner = rpc("registry", roles=("coordinator",), user_id="u_coord")
        org = owner.register_organisation({"name": "Tutors Without Borders", "country": "LB",
                                           "contact_email": "team@twb.example"})
        rpc("registry", roles=("platform_admin",), user_id="u_admin").verify_organisation(
            org["id"], {"version": 1})
        self.org_id = org["id"]
        self.coordinator = rpc("tasks", roles=("coordinator",), user_id="u_coord",
                               org_ids=(org["id"],))
        self.system = rpc("tasks")
        wait_for(lambda: (self.db("tasks").organisations.find_one({"_id": self.org_id})
                          or {}).get("status") == "verified")

    def volunteer(self, n: int, **overrides: Any) -> str:
        vol = self.registry.register_volunteer(volunteer(f"v{n}@example.org", **overrides))
        wait_for(lambda: self.db("tasks").volunteers.find_one({"_id": vol["id"]}))
        return vol["id"]

    def as_volunteer(self, volunteer_id: str) -> Any:
        return self.rpc("tasks", roles=("volunteer",), user_id=volunteer_id)

    def task(self, slots: int = 2, publish: bool = True, **overrides: Any) -> dict[str, Any]:
        start = (datetime.now(UTC) + timedelta(days=7)).replace(tzinfo=None, microsecond=0)
        data = {"organisation_id": self.org_id, "title": "دعم دراسي في الرياضيات",
                "category": "tutoring", "timezone": "Asia/Beirut", "slots": slots,
                "required_skills": [{"skill_id": "sk_math_tutoring"}], "languages": ["ar"],
                "skills_practised": ["sk_math_tutoring", "sk_online_collaboration"],
                "schedule": {"kind": "one_off", "start": start.isoformat(),
                             "end": (start + timedelta(hours=2)).isoformat()}}
        data.update(overrides)
        task = self.coordinator.create_task(data)
        if publish:
            task = self.coordinator.publish_task(task["id"], {"version": task["version"]})
        return task
