"""An empty RPC for the benchmarks: the floor a nameko call costs on this broker.

Run in the same `nameko run` process as the registry (see bench/registry_bench.py), so
both go through the same broker, process and event loop, and through Sanad's RPC
entrypoint (each reply encoded once), like every service call.
"""
from __future__ import annotations

from services.common.service import rpc


class PingService:
    name = "bench_ping"

    @rpc
    def ping(self) -> None:
        return None
