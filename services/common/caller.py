"""Who is calling: identity carried in nameko context data, checked by every service.

The gateway (or any trusted client) sets `caller` in the RPC context data; nameko
passes it along to downstream calls. Services enforce ownership themselves.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nameko.extensions import DependencyProvider

from services.common.errors import Forbidden

CONTEXT_KEY = "caller"
PLATFORM_ADMIN = "platform_admin"
COORDINATOR = "coordinator"
VOLUNTEER = "volunteer"
SYSTEM = "system"  # another Sanad service or an operator's tool


@dataclass(frozen=True)
class Caller:
    user_id: str | None = None
    roles: frozenset[str] = frozenset()
    org_ids: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return PLATFORM_ADMIN in self.roles or SYSTEM in self.roles

    def has_any(self, *roles: str) -> bool:
        return self.is_admin or bool(self.roles.intersection(roles))

    def require(self, *roles: str) -> None:
        if not self.has_any(*roles):
            raise Forbidden("Not allowed.", {"roles": [f"Requires one of: {', '.join(roles)}."]})

    def require_user(self) -> str:
        if not self.user_id:
            raise Forbidden("Not allowed.", {"caller": ["An authenticated caller is required."]})
        return self.user_id


def caller_context(user_id: str | None = None, roles: Iterable[str] = (),
                   org_ids: Iterable[str] = ()) -> dict[str, str]:
    """Context data for a ClusterRpcProxy or ServiceRpcProxy acting as this caller."""
    payload = {"user_id": user_id, "roles": sorted(roles), "org_ids": sorted(org_ids)}
    return {CONTEXT_KEY: json.dumps(payload)}


def parse_caller(raw: Any) -> Caller:
    if not raw:
        return Caller()
    try:
        data = json.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
        if not isinstance(data, dict):
            return Caller()
        return Caller(
            user_id=str(data["user_id"]) if data.get("user_id") else None,
            roles=frozenset(map(str, data.get("roles") or ())),
            org_ids=frozenset(map(str, data.get("org_ids") or ())),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return Caller()  # malformed identity is no identity


class CallerProvider(DependencyProvider):
    def get_dependency(self, worker_ctx: Any) -> Caller:
        return parse_caller(worker_ctx.data.get(CONTEXT_KEY))
