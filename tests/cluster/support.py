"""Starting a cluster of real `wallet serve --role ...` processes on loopback (tests and bench)."""

from __future__ import annotations

from pathlib import Path

import requests

from core.ports import free_port
from tests.helpers import wait_until
from tests.process.support import START_TIMEOUT_S, WALLET, ServeProcess, wallet_env

SINGLETONS = "accountsrv,signsrv,blockwatch"


class RoleProcess(ServeProcess):
    """`wallet serve --role ROLES [--shards ...]`; healthy once its ops listener answers (a process without
    the gate role has no API listener)."""

    def __init__(self, config, log_path: Path, roles: str, shards: str = "") -> None:
        args = ("--role", roles) + (("--shards", shards) if shards else ())
        super().__init__(wallet_env(config, free_port()), log_path, args)
        self.roles = roles

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"wallet serve {self.args} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return requests.get(self.ops_url + "/healthz", timeout=1).status_code == 200

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> dict:
        """/readyz answers 200 (for a gate: every shard and the allocator answered a ping through Redis)."""
        def ready():
            answer = requests.get(self.ops_url + "/readyz", timeout=5)
            return answer.json() if answer.status_code == 200 else None
        return wait_until(ready, timeout_s=timeout_s, interval_s=0.1, what=f"{self.args} ready",
                          ignore=(requests.RequestException,), detail=self.log_tail)

    def start_waiting(self) -> RoleProcess:
        """Start without waiting for health (a host that waits for another's shards is not up yet)."""
        import subprocess

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([WALLET, "serve", *self.args], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self
