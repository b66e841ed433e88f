"""Real service processes: the one launcher of end-to-end tests and benches.

A process runs exactly as `make run` runs it (`python -m services.common.run <name>`),
with the run's broker vhost and store in its environment.
Tests add their quick relay settings; benches keep the service's own defaults.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nameko.standalone.rpc import ClusterRpcProxy

from services.common.caller import caller_context
from tests.support import ROOT, wait_for

# Short relay intervals so a test sees published events within a fraction of a second.
TEST_SETTINGS = {"OUTBOX_RELAY_SECONDS": "0.3", "OUTBOX_GRACE_SECONDS": "0.5",
                 "LOG_LEVEL": "INFO"}
SYSTEM_CONTEXT = caller_context(None, ["system"])

# The cheapest call each process answers once it has started.
CHEAP_CALLS: dict[str, Callable[[Any], Any]] = {
    "registry": lambda rpc: rpc.registry.list_skills(),
    "tasks": lambda rpc: rpc.tasks.search_tasks({"limit": 1}),
    "bench_ping": lambda rpc: rpc.bench_ping.ping(),
}


class ServiceProcess:
    """One service, and `beside` it in the same process any {module: service name}."""

    def __init__(self, service: str, config: Mapping[str, Any], log_dir: Path,
                 beside: Mapping[str, str] | None = None,
                 settings: Mapping[str, str] = TEST_SETTINGS, **env: str) -> None:
        self.service = service
        self.beside = dict(beside or {})
        self.env = {**os.environ,
                    "AMQP_URI": config["AMQP_URI"], "MONGO_URI": config["MONGO_URI"],
                    "MONGO_DB_PREFIX": config["MONGO_DB_PREFIX"],
                    f"{service.upper()}_METRICS_PORT": "0",
                    f"{service.upper()}_HTTP_ADDRESS": "127.0.0.1:0",
                    **({"CREDENTIAL_KEYS_DIR": str(config["CREDENTIAL_KEYS_DIR"])}
                       if "CREDENTIAL_KEYS_DIR" in config else {}),
                    **settings, **env}
        self.log_path = log_dir / f"{service}-{os.getpid()}-{id(self)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        # Own session: a terminal's Ctrl-C reaches only the test or bench, which stops
        # its processes in order.
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "python"), "-m", "services.common.run",
             self.service, *self.beside],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        return self

    def wait_answering(self, config: Mapping[str, Any], timeout: float = 60) -> ServiceProcess:
        """Until every service of this process answers; fail with the log if it exits."""
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.service} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            return all(answers(config, name) for name in (self.service, *self.beside.values()))
        wait_for(up, timeout=timeout, interval=0.25)
        return self

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15) -> None:
        self.terminate()
        self._reap(time.monotonic() + timeout)

    def _reap(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or "(no log)"

    def metrics_port(self) -> int | None:
        """The port serving this process's /metrics (it picked a free one)."""
        for port in listening_ports(self.pid):
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own local process
                        f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    if b"sanad_workers" in resp.read():
                        return port
            except OSError:
                continue
        return None


def stop_all(processes: Sequence[ServiceProcess], timeout: float = 20) -> None:
    """SIGTERM all, then wait: `nameko run` takes seconds to stop, so in parallel."""
    for proc in processes:
        proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in processes:
        proc._reap(deadline)


def answers(config: Mapping[str, Any], service: str) -> bool:
    """Whether `service` answers its cheap RPC on the run's broker (it has started)."""
    try:
        with ClusterRpcProxy(dict(config), timeout=2, context_data=SYSTEM_CONTEXT) as rpc:
            CHEAP_CALLS[service](rpc)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def started(config: Mapping[str, Any], log_dir: Path, service: str, **env: str
            ) -> ServiceProcess:
    """A service process that answers RPCs."""
    return ServiceProcess(service, config, log_dir, **env).start().wait_answering(config)


def listening_ports(pid: int | None) -> list[int]:
    """TCP ports a process listens on, from /proc (the ports it picked itself)."""
    if pid is None:
        return []
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    ports = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(set(ports))
