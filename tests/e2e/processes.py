"""Real `nameko run` processes for end-to-end tests."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from nameko.standalone.rpc import ClusterRpcProxy

from services.common.caller import caller_context
from tests.support import ROOT, wait_for


class ServiceProcess:
    """One service run exactly as `make run` runs it, with test settings in the env."""

    def __init__(self, service: str, config: dict[str, Any], log_dir: Path,
                 **env: str) -> None:
        self.service = service
        self.env = {**os.environ,
                    "AMQP_URI": config["AMQP_URI"], "MONGO_URI": config["MONGO_URI"],
                    "MONGO_DB_PREFIX": config["MONGO_DB_PREFIX"],
                    f"{service.upper()}_METRICS_PORT": "0",
                    f"{service.upper()}_HTTP_ADDRESS": "127.0.0.1:0", "OUTBOX_RELAY_SECONDS": "0.3",
                    "OUTBOX_GRACE_SECONDS": "0.5", "LOG_LEVEL": "INFO",
                    "CREDENTIAL_KEYS_DIR": str(config["CREDENTIAL_KEYS_DIR"]), **env}
        self.log_path = log_dir / f"{service}-{os.getpid()}-{id(self)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "nameko"), "run", "--config",
             f"services/{self.service}/config.yml", f"services.{self.service}.service:Service"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def answers(config: dict[str, Any], service: str) -> bool:
    """Whether `service` answers a cheap RPC on the run's broker (it has started)."""
    try:
        with ClusterRpcProxy(config, timeout=2,
                             context_data=caller_context(None, ["system"])) as rpc:
            if service == "tasks":
                rpc.tasks.search_tasks({})
            else:
                rpc.registry.list_skills()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def started(config: dict[str, Any], log_dir: Path, service: str, **env: str) -> ServiceProcess:
    """A service process that answers RPCs."""
    proc = ServiceProcess(service, config, log_dir, **env).start()
    wait_for(lambda: answers(config, service), timeout=60)
    return proc
