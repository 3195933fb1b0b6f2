"""Starting a cluster of real `wallet serve --role ...` processes on loopback (tests and bench)."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path

import pyotp
import requests

from app.membership import spread
from core.keys import KeyRing
from core.ports import free_port
from storage import admins
from storage.db import connect_database
from tests.conftest import MASTER_KEY
from tests.console.support import STAFF_PASSWORD, csrf_of
from web.security import hash_secret
from tests.helpers import wait_until
from tests.process.support import START_TIMEOUT_S, WALLET, ServeProcess, wallet_env

SINGLETONS = "accountsrv,signsrv,blockwatch"


class RoleProcess(ServeProcess):
    """`wallet serve --role ROLES [--shards ...]`; healthy once its ops listener answers, and a gate once its API
    listener does too (it may bind after the ops listener; a process without the gate role has none)."""

    def __init__(self, config, log_path: Path, roles: str, shards: str = "") -> None:
        args = ("--role", roles) + (("--shards", shards) if shards else ())
        env = wallet_env(config, free_port())
        if config.etcd_url:  # membership in etcd: transrv hosts without --shards share the shards
            env.update(WALLET_ETCD_URL=config.etcd_url, WALLET_ETCD_PREFIX=config.etcd_prefix,
                       WALLET_ETCD_LEASE_S=str(config.etcd_lease_s))
        super().__init__(env, log_path, args)
        self.roles = roles

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"wallet serve {self.args} exited with {self.proc.returncode}:\n{self.log_tail()}")
        if requests.get(self.ops_url + "/healthz", timeout=1).status_code != 200:
            return False
        return not self.has_api or requests.get(self.url + "/healthz", timeout=1).status_code == 200

    @property
    def has_api(self) -> bool:
        return bool({"gate", "all"} & set(self.roles.split(",")))

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> dict:
        """/readyz answers 200 (for a gate: every shard and the allocator answered a ping through Redis)."""
        def ready():
            answer = requests.get(self.ops_url + "/readyz", timeout=5)
            if self.has_api and requests.get(self.url + "/healthz", timeout=5).status_code != 200:
                return None  # the API listener binds after the ops listener
            return answer.json() if answer.status_code == 200 else None
        return wait_until(ready, timeout_s=timeout_s, interval_s=0.1, what=f"{self.args} ready",
                          ignore=(requests.RequestException,), detail=self.log_tail)

    def process_id(self) -> str:
        """The id it registers under (from its start-up line)."""
        started = wait_until(lambda: log_events(self, "actor system started"), timeout_s=START_TIMEOUT_S,
                             what=f"{self.args} started", detail=self.log_tail)
        return started[0]["process_id"]

    def cluster_map(self) -> dict[str, tuple[int, ...]] | None:
        """What a gate's /readyz says each transrv host holds now (its body has the map, ready or not)."""
        cluster = requests.get(self.ops_url + "/readyz", timeout=5).json().get("cluster")
        if cluster is None:
            return None
        return {m["process"]: tuple(m["shards"]) for m in cluster if "transrv" in m["roles"]}

    def start_waiting(self) -> RoleProcess:
        """Start without waiting for health (a host that waits for another's shards is not up yet)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([WALLET, "serve", *self.args], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self


class EtcdServer:
    """A private single-member etcd on free loopback ports, for the tests that stop and restart it (the
    shared one of scripts/services.sh serves every other test)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.client_port, self.peer_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> EtcdServer:
        peer = f"http://127.0.0.1:{self.peer_port}"
        with open(self.data_dir.parent / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["etcd", "--name", "t", "--data-dir", str(self.data_dir), "--listen-client-urls", self.url,
                 "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
                 "--initial-advertise-peer-urls", peer, "--initial-cluster", f"t={peer}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self.healthy, timeout_s=30, interval_s=0.1, what="etcd healthy", ignore=(requests.RequestException,))
        return self

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited with {self.proc.returncode}")
        return requests.get(self.url + "/health", timeout=1).json().get("health") == "true"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def log_events(proc: ServeProcess, message: str) -> list[dict]:
    """The JSON log lines of `proc` whose message is `message`."""
    return [json.loads(line) for line in proc.log_text().splitlines() if f'"msg": "{message}"' in line]


def wait_for_spread(gate: RoleProcess, hosts: set[RoleProcess], shards: int = 4) -> dict[str, tuple[int, ...]]:
    """Wait until the gate's cluster map shows the shards spread over exactly `hosts` as `spread` says."""
    want = spread(shards, [host.process_id() for host in hosts])
    wait_until(lambda: gate.cluster_map() == want, timeout_s=60, interval_s=0.1,
               what=f"the shards spread over {sorted(want)}", ignore=(requests.RequestException,),
               detail=lambda: f"cluster map: {gate.cluster_map()}")
    return want


def console_health(gate: RoleProcess) -> str:
    """The console's health page on `gate`, as a new auditor logged in with password and TOTP code sees it."""
    connect_database(gate.env["WALLET_DATABASE_URL"])
    name = f"auditor-{secrets.token_hex(3)}"
    created = admins.create_admin(name, "auditor", hash_secret(STAFF_PASSWORD), KeyRing.single(MASTER_KEY))
    http, admin = requests.Session(), gate.url + "/admin"
    answer = http.post(admin + "/login", timeout=30, allow_redirects=False, data={
        "csrf_token": csrf_of(http.get(admin + "/login", timeout=30).text), "name": name,
        "password": STAFF_PASSWORD, "code": pyotp.TOTP(created.totp_secret).now()})
    assert answer.status_code == 302, answer.text
    page = http.get(admin + "/health", timeout=30)
    assert page.status_code == 200, page.text
    return page.text


def console_cluster(page: str) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[int, str]]]:
    """From a console health page: {process: (roles, shards held)} of etcd's members and {name: (epoch,
    owner)} of the fences."""
    members = {pid: (roles, shards) for pid, roles, shards in re.findall(
        r'<tr><td><code>([^<]+)</code></td><td>([^<]*)</td><td class="num">([^<]*)</td>', _table(page, "cluster-members"))}
    owners = {name: (int(epoch), owner) for name, epoch, owner in re.findall(
        r'<tr><td>([^<]+)</td><td class="num">([0-9]+)</td><td><code>([^<]*)</code>', _table(page, "cluster-owners"))}
    return members, owners


def _table(page: str, table_id: str) -> str:
    start = page.find(f'<table id="{table_id}">')
    return "" if start < 0 else page[start:page.index("</table>", start)]
