"""The front under attack: slow request bodies and idle connections against a real `wallet serve`.

One run, one fresh MariaDB database and Redis prefix, a few users funded through the actors; then `wallet
serve` in a child process (the code found first on PYTHONPATH, so `--code DIR` measures another checkout in
the same sitting), and over loopback:

1. baseline: `GET /healthz` probed 20 times a second (latency of each) while 4 clients make transfers in a
   loop (transfers answered per second);
2. slow bodies: the same, while N clients (200) each send `POST /api/v1/sessions` with `Content-Length: 49`
   and then one byte every 160 ms, reconnecting when answered (what issue 9 found: 70 of them pushed
   `/healthz` from 0.7 ms to 9.3 s);
3. idle connections: M sockets (5,000) from 127.0.0.1, half sending nothing, half half a request head; then
   a new client from 127.0.0.2 asks `/healthz` (time to its answer, against the same with no idle sockets),
   and the idle sockets are watched until the server closes them (time after they were opened);
4. SIGTERM while 50 clients trickle bodies, 500 sockets sit idle and 20 clients never read the answers they
   asked for: seconds until the process exits.

    .venv/bin/python bench/front_attack.py [--slow 200] [--idle 5000] [--seconds 10] [--code DIR] [--json F]

The open-file limit of this process is raised to its hard limit (each idle socket is a descriptor here and
one in the server); the figures say what it was.
"""

from __future__ import annotations

import sys

# bench/ is first on the path, where bench/http.py would shadow the standard library's `http` (flask needs it).
sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402 - after the path fix above
import os
import resource
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests

import common
from app.system import ActorSystem
from core import messages as m
from core.config import Config
from core.ports import free_port
from devnet.attack import SlowBodies, healthz_once, open_idle, open_non_reading, watch_closed
from devnet.waiting import wait_until
from storage.db import connect_database
from storage.models import Account
from web.security import hash_secret

REDIS_URL = os.environ.get("WALLET_BENCH_REDIS", "redis://127.0.0.1:6379/0")
WALLET = str(Path(sys.executable).with_name("wallet"))
PASSWORD, PAY_PASSWORD = "bench-password", "bench-pay-123"
USERS = 8
PROBE_EVERY_S = 0.05
PROBE_TIMEOUT_S = 30.0
TARGET_HEALTHZ_P99_MS = 100.0
TARGET_IDLE_DELAY_S = 1.0
TARGET_EXIT_S = 30.0


# -- the server ------------------------------------------------------------------------------------------


def prepare_users(url: str, config: Config) -> list[str]:
    db = connect_database(url)
    accounts = common.create_accounts(db, USERS, config.shards, prefix="bench")
    Account.update(password_hash=hash_secret(PASSWORD), pay_password_hash=hash_secret(PAY_PASSWORD)).where(
        Account.kind == "user").execute()
    system = ActorSystem(config).start()
    try:
        for account_id, _ in accounts:
            system.router.command(m.Credit(op_id=f"fund-{account_id}", account_id=account_id, asset="ETH",
                                           amount=10**24))
    finally:
        system.stop()
    db.close_all()
    return [f"bench-{i}" for i in range(USERS)]


class Server:
    def __init__(self, config: Config, code: str | None, log_path: Path) -> None:
        self.port, self.ops_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
        env.update(WALLET_DATABASE_URL=config.database_url, WALLET_REDIS_URL=config.redis_url,
                   WALLET_REDIS_PREFIX=config.redis_prefix, WALLET_MASTER_KEY=config.master_key.hex(),
                   WALLET_SHARDS=str(config.shards), WALLET_HTTP=f"127.0.0.1:{self.port}",
                   WALLET_OPS_HTTP=f"127.0.0.1:{self.ops_port}")
        if code:
            env["PYTHONPATH"] = code
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([WALLET, "--log-level", "WARNING", "serve"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wallet serve exited with {self.proc.returncode}; see {self.log_path}")
            return requests.get(self.base + "/healthz", timeout=1).status_code == 200

        wait_until(healthy, 60, "wallet serve to answer /healthz", interval_s=0.05, ignore=(requests.RequestException,))
        return self

    def stop(self) -> float:
        """SIGTERM; seconds until the process exited (killed after 60 s)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        return time.monotonic() - started


# -- the well-behaved clients ----------------------------------------------------------------------------


class Probe(threading.Thread):
    """GET /healthz on a fresh connection every PROBE_EVERY_S; the latency of each (None: failed)."""

    def __init__(self, base: str, source: str = "127.0.0.1") -> None:
        super().__init__(daemon=True)
        self.base, self.source = base, source
        self.latencies_ms: list[float] = []
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(PROBE_EVERY_S):
            latency = healthz_once(self.base, self.source)
            if latency is None:
                self.failures += 1
            else:
                self.latencies_ms.append(latency)

    def summary(self) -> dict:
        values = sorted(self.latencies_ms)
        return {"probes": len(values), "failures": self.failures,
                "p50_ms": round(common.percentile(values, 50), 2), "p99_ms": round(common.percentile(values, 99), 2),
                "max_ms": round(values[-1], 2) if values else None}


class Transfers(threading.Thread):
    """One logged-in user making 1-wei transfers to the next user, back to back."""

    def __init__(self, base: str, names: list[str], i: int, run_id: str) -> None:
        super().__init__(daemon=True)
        self.base, self.name, self.to, self.run_id = base, names[i], names[(i + 1) % len(names)], f"{run_id}-{i}"
        self.http = requests.Session()
        token = self.http.post(base + "/api/v1/sessions", json={"username": self.name, "password": PASSWORD},
                               timeout=30).json()["token"]
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.answered: list[float] = []  # monotonic time of each 201
        self.errors = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                answer = self.http.post(self.base + "/api/v1/transfers", timeout=30, json={
                    "to_username": self.to, "asset": "ETH", "amount": "1", "pay_password": PAY_PASSWORD},
                    headers={"Idempotency-Key": f"{self.run_id}-{n}"})
                if answer.status_code == 201:
                    self.answered.append(time.monotonic())
                else:
                    self.errors += 1
            except requests.RequestException:
                self.errors += 1


def transfers_per_s(clients: list[Transfers], since: float, until: float) -> float:
    count = sum(1 for c in clients for t in c.answered if since <= t < until)
    return round(count / (until - since), 1)


# -- the runs --------------------------------------------------------------------------------------------


def with_load(server: Server, names: list[str], seconds: float, run_id: str, attack: threading.Thread | None) -> dict:
    clients = [Transfers(server.base, names, i, run_id) for i in range(4)]
    probe = Probe(server.base)
    for thread in clients:
        thread.start()
    if attack is not None:
        attack.start()
        time.sleep(2.0)  # bench pacing, not a wait for a condition: let the attack build up first
    probe.start()
    started = time.monotonic()
    time.sleep(seconds)  # the measured stretch
    ended = time.monotonic()
    probe.stopping.set()
    probe.join(timeout=PROBE_TIMEOUT_S + 5)
    if attack is not None:
        attack.stopping.set()
        attack.join(timeout=30)
    for thread in clients:
        thread.stopping.set()
    for thread in clients:
        thread.join(timeout=40)
    result = {"healthz": probe.summary(), "transfers_per_s": transfers_per_s(clients, started, ended),
              "transfer_errors": sum(c.errors for c in clients), "load": common.load_average()}
    if isinstance(attack, SlowBodies):
        result["slow_clients"] = {"connections": attack.connects, "answers": attack.answers}
    return result


def idle_run(server: Server, count: int, idle_timeout_s: float) -> dict:
    before = [healthz_once(server.base, "127.0.0.2") for _ in range(5)]
    opened_at = time.monotonic()
    socks = open_idle(server.base, count)
    open_s = time.monotonic() - opened_at
    during = [healthz_once(server.base, "127.0.0.2") for _ in range(5)]
    closed = sorted(watch_closed(socks, timeout_s=idle_timeout_s * 3 + 30))
    for s, _ in socks:
        s.close()
    return {"sockets": count, "opened": len(socks), "open_s": round(open_s, 2),
            "new_client_ms_without": [None if v is None else round(v, 1) for v in before],
            "new_client_ms_with": [None if v is None else round(v, 1) for v in during],
            "closed_by_server": len(closed), "closed_after_s_min": round(closed[0], 2) if closed else None,
            "closed_after_s_max": round(closed[-1], 2) if closed else None, "load": common.load_average()}


def sigterm_run(server: Server, tricklers: int, idle: int, non_reading: int) -> dict:
    attack = SlowBodies(server.base, tricklers, byte_every_s=1.0, length=60_000)  # never finishes
    attack.start()
    socks = open_idle(server.base, idle)
    deaf = open_non_reading(server.base, non_reading)
    time.sleep(2.0)  # bench pacing: the tricklers are mid-body, the deaf clients' answers backed up
    idle = len(socks)
    exit_s = server.stop()
    attack.stopping.set()
    attack.join(timeout=30)
    for s, _ in socks:
        s.close()
    for s in deaf:
        s.close()
    return {"tricklers": tricklers, "idle_sockets": idle, "non_reading": non_reading, "exit_s": round(exit_s, 2),
            "exit_code": server.proc.returncode, "load": common.load_average()}


def raise_nofile() -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return {"nofile_soft_was": soft, "nofile_now": hard}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slow", type=int, default=200, help="slow-body clients")
    p.add_argument("--idle", type=int, default=5000, help="idle or half-open sockets")
    p.add_argument("--seconds", type=float, default=10.0, help="measured stretch of the baseline and slow runs")
    p.add_argument("--idle-timeout", type=float, default=10.0, help="the server's idle timeout (its default)")
    p.add_argument("--code", help="PYTHONPATH of the `wallet serve` under test (default: this checkout)")
    p.add_argument("--skip-idle", action="store_true")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report: dict = {"machine": common.machine_facts(), "args": vars(args), "uptime_before": common.uptime(),
                    "nofile": raise_nofile()}
    prefix = f"wallet-bench-{secrets.token_hex(4)}"
    with common.bench_database() as url, tempfile.TemporaryDirectory() as tmp:
        config = Config(database_url=url, redis_url=REDIS_URL, redis_prefix=prefix, master_key=common.MASTER_KEY,
                        shards=4)
        names = prepare_users(url, config)
        server = Server(config, args.code, Path(tmp) / "serve.log").start()
        try:
            report["baseline"] = with_load(server, names, args.seconds, prefix + "-a", None)
            report["slow_bodies"] = with_load(server, names, args.seconds, prefix + "-b",
                                              SlowBodies(server.base, args.slow))
            if not args.skip_idle:
                report["idle"] = idle_run(server, args.idle, args.idle_timeout)
            report["sigterm"] = sigterm_run(server, 50, min(500, args.idle), 20)
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
        db = connect_database(url)
        report["server"] = common.server_facts(db)
        db.close_all()
        report["serve_log_tail"] = Path(server.log_path).read_text(errors="replace").splitlines()[-5:]
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    print_report(report)
    common.finish_report(report, args.json)
    return 0


def print_report(report: dict) -> None:
    base, slow = report["baseline"], report["slow_bodies"]
    print(f"baseline:    /healthz p50 {base['healthz']['p50_ms']} ms, p99 {base['healthz']['p99_ms']} ms, max "
          f"{base['healthz']['max_ms']} ms ({base['healthz']['probes']} probes, {base['healthz']['failures']} failed); "
          f"transfers {base['transfers_per_s']}/s ({base['transfer_errors']} errors); load {base['load']}")
    verdict = "met" if slow["healthz"]["p99_ms"] <= TARGET_HEALTHZ_P99_MS and not slow["healthz"]["failures"] \
        and slow["transfers_per_s"] > 0 else "NOT met"
    print(f"slow bodies: {report['args']['slow']} clients; /healthz p50 {slow['healthz']['p50_ms']} ms, p99 "
          f"{slow['healthz']['p99_ms']} ms, max {slow['healthz']['max_ms']} ms ({slow['healthz']['probes']} probes, "
          f"{slow['healthz']['failures']} failed); transfers {slow['transfers_per_s']}/s ({slow['transfer_errors']} "
          f"errors); slow clients {slow.get('slow_clients')}; load {slow['load']}  "
          f"(target p99 <= {TARGET_HEALTHZ_P99_MS:g} ms, transfers flowing: {verdict})")
    if "idle" in report:
        idle = report["idle"]
        worst = max((v for v in idle["new_client_ms_with"] if v is not None), default=None)
        verdict = "met" if worst is not None and None not in idle["new_client_ms_with"] and \
            worst <= TARGET_IDLE_DELAY_S * 1000 else "NOT met"
        print(f"idle:        {idle['opened']} of {idle['sockets']} sockets opened in {idle['open_s']} s; a new client from 127.0.0.2: "
              f"{idle['new_client_ms_without']} ms without, {idle['new_client_ms_with']} ms with "
              f"(target <= {TARGET_IDLE_DELAY_S * 1000:g} ms: {verdict}); closed by the server: "
              f"{idle['closed_by_server']}, after {idle['closed_after_s_min']}-{idle['closed_after_s_max']} s; "
              f"load {idle['load']}")
    term = report["sigterm"]
    verdict = "met" if term["exit_s"] <= TARGET_EXIT_S else "NOT met"
    print(f"SIGTERM:     {term['tricklers']} trickling bodies + {term['idle_sockets']} idle sockets + "
          f"{term['non_reading']} clients not reading their answers: exited "
          f"{term['exit_code']} after {term['exit_s']} s (target <= {TARGET_EXIT_S:g} s: {verdict}); "
          f"load {term['load']}")
    print(f"open files:  {report['nofile']}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
