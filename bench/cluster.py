"""Cluster mode against one process, in the same run: HTTP POST /api/v1/transfers through

  (a) `wallet serve --role all` (one process: actors called directly, no Redis transport), and
  (b) 2 gates (`--role gate`) + 1 transrv host (`--role transrv`, every shard) + the singletons
      (`--role accountsrv,signsrv,blockwatch`), the gates reached by two wrk processes at once;

then the transport's own cost per ask (actors/transport.py): one caller asking a trivial actor through
Redis Streams, one ask at a time (latency at low load) and CPU on each side (caller threads, host threads,
redis-server).

Each setup gets a fresh MariaDB database and Redis prefix; wrk drives keep-alive connections with a fresh
Idempotency-Key per transfer; afterwards the number of transfer operations matches the 201s and the audit
passes (as bench/http.py).

    .venv/bin/python bench/cluster.py [--users 64] [--connections 32] [--seconds 10] [--asks 2000]
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # as bench/http.py: bench/ last, so `http` is the standard library's

import argparse  # noqa: E402
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pykka
import redis
import requests

import common
import wrk
from actors.transport import StreamClient, StreamHost, StreamNames
from app.audit import run_audit
from core import messages as m
from core.config import Config
from core.ports import free_port
from devnet.waiting import wait_until
from storage.db import connect_database
from storage.models import Operation, Outbox

SINGLETONS = "accountsrv,signsrv,blockwatch"


def start_role(config: Config, roles: str, threads: int, log_path: Path) -> tuple[subprocess.Popen, int]:
    port, ops = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    env.update(WALLET_DATABASE_URL=config.database_url, WALLET_REDIS_URL=config.redis_url,
               WALLET_REDIS_PREFIX=config.redis_prefix, WALLET_MASTER_KEY=config.master_key.hex(),
               WALLET_SHARDS=str(config.shards), WALLET_HTTP=f"127.0.0.1:{port}", WALLET_OPS_HTTP=f"127.0.0.1:{ops}")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([wrk.WALLET, "--log-level", "WARNING", "serve", "--threads", str(threads),
                                 "--role", roles], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"wallet serve --role {roles} exited with {proc.returncode}; see {log_path}")
        if requests.get(f"http://127.0.0.1:{ops}/readyz", timeout=3).status_code != 200:
            return False
        # A gate's API listener binds after its ops listener: ready means both answer.
        return roles not in ("all", "gate") or requests.get(f"http://127.0.0.1:{port}/healthz",
                                                              timeout=3).status_code == 200

    wait_until(ready, 90, f"--role {roles} ready (log: {log_path})", interval_s=0.1, ignore=(requests.RequestException,))
    return proc, port


def run_setup(name: str, roles: list[str], args: argparse.Namespace) -> dict:
    prefix = f"wallet-bench-{secrets.token_hex(4)}"
    result: dict = {"setup": name}
    with common.bench_database() as url, tempfile.TemporaryDirectory() as tmp:
        config = Config(database_url=url, redis_url=wrk.REDIS_URL, redis_prefix=prefix, master_key=common.MASTER_KEY,
                        shards=args.shards)
        names = wrk.prepare_users(url, config, args.users)
        procs = [(roles_, *start_role(config, roles_, args.threads, Path(tmp) / f"{n}.log"))
                 for n, roles_ in enumerate(roles)]
        gates = [(proc, port) for roles_, proc, port in procs if roles_ in ("all", "gate")]
        db = connect_database(url)
        try:
            base = f"http://127.0.0.1:{gates[0][1]}"
            tokens = wrk.log_in_and_warm_up(base, names)
            for _, port in gates[1:]:  # each gate checks a session's pay password once (argon2): not timed
                _warm_up(f"http://127.0.0.1:{port}", tokens, names)
            warm_ups = len(names) * len(gates)
            cpu_before = {proc.pid: wrk.cpu_seconds(proc.pid) for _, proc, _ in procs}
            # one run id per wrk process: each numbers its Idempotency-Keys from 1
            scripts = [wrk.lua_data(tokens, names, f"{prefix}-g{n}") + wrk.LUA_COMMON + wrk.LUA_TRANSFERS
                       for n in range(len(gates))]
            runs = _wrk_on_every_gate(gates, scripts, args)
            cpu = {f"{roles_}#{n}": wrk.cpu_seconds(proc.pid) - cpu_before[proc.pid]
                   for n, (roles_, proc, _) in enumerate(procs)}
            drained = time.monotonic()
            while Outbox.select().where(Outbox.delivered_at.is_null()).count():
                if time.monotonic() > drained + 60:
                    raise RuntimeError("the outbox did not drain")
                time.sleep(0.1)
        finally:
            for _, proc, _ in procs:
                proc.send_signal(signal.SIGTERM)
            for _, proc, _ in procs:
                proc.wait(timeout=60)
        requests_done = sum(r["requests"] for r in runs)
        errors = sum(r["errors"] for r in runs)
        seconds = max(r["seconds"] for r in runs)
        operations = Operation.select().where(Operation.kind == "transfer").count()
        low = requests_done - errors + warm_ups
        audit = run_audit()
        db.close_all()
    _drop_prefix(prefix)
    result.update(per_second=round(sum(r["per_second"] for r in runs)), p50_ms=max(r["p50_ms"] for r in runs),
                  p99_ms=max(r["p99_ms"] for r in runs), errors=errors, requests=requests_done, seconds=seconds,
                  cpu_us_per_request={role: round(s / max(1, requests_done) * 1e6) for role, s in cpu.items()},
                  ledger_ok=audit.ok and low <= operations <= low + args.connections,
                  transfer_operations=operations, expected=f"{low}..{low + args.connections}",
                  load_after=common.load_average())
    return result


def _warm_up(base: str, tokens: list[str], names: list[str]) -> None:
    http = requests.Session()
    for i, token in enumerate(tokens):
        answer = http.post(base + "/api/v1/transfers", timeout=30, json={
            "to_username": names[(i + 1) % len(names)], "asset": "ETH", "amount": "1", "pay_password": wrk.PAY_PASSWORD},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"warm-up-{base.rsplit(':', 1)[1]}-{i}"})
        if answer.status_code != 201:
            raise RuntimeError(f"warm-up transfer failed: {answer.status_code} {answer.text[:300]}")


def _wrk_on_every_gate(gates: list[tuple[subprocess.Popen, int]], scripts: list[str],
                       args: argparse.Namespace) -> list[dict]:
    """One wrk per gate, at the same time, the connections split between them."""
    share = argparse.Namespace(**{**vars(args), "connections": max(1, args.connections // len(gates))})
    runs: list[dict] = [{} for _ in gates]
    threads = [threading.Thread(target=lambda i=i, gate=gate: runs.__setitem__(i, wrk.run_wrk(
        "transfers", "/api/v1/transfers", f"http://127.0.0.1:{gate[1]}", scripts[i], share, gate[0].pid)))
        for i, gate in enumerate(gates)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return runs


# -- the transport alone -----------------------------------------------------------------------------------
class _Echo(pykka.ThreadingActor):
    def on_receive(self, message):  # noqa: ANN001, ANN201
        return m.Pong("echo")


def _thread_cpu_s(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_pid(client: redis.Redis) -> int | None:
    pid = client.info("server").get("process_id")
    return int(pid) if pid and Path(f"/proc/{pid}/stat").exists() else None


def transport_cost(asks: int) -> dict:
    prefix = f"wallet-bench-{secrets.token_hex(4)}"
    client = redis.Redis.from_url(wrk.REDIS_URL)
    names = StreamNames(prefix)
    echo = _Echo.start()
    host = StreamHost(client, names, "echo", lambda: echo, "bench-host", batch_max=100).start()
    caller = StreamClient(client, names, "bench-caller").start()
    try:
        caller.ask("echo", m.Ping(), 10.0)  # the group exists, both threads run
        tids = {t.name: t.native_id for t in threading.enumerate()}
        redis_pid = _redis_pid(client)
        host_threads = [tids["host-echo"]] + [t.native_id for t in threading.enumerate()
                                              if t.name.startswith("_Echo-")]
        caller_threads = [tids["stream-replies"]]
        before_caller = time.thread_time() + sum(map(_thread_cpu_s, caller_threads))
        before_host = sum(map(_thread_cpu_s, host_threads))
        before_redis = wrk.cpu_seconds(redis_pid) if redis_pid else None
        latencies = []
        for _ in range(asks):
            started = time.perf_counter()
            caller.ask("echo", m.Ping(), 10.0)
            latencies.append((time.perf_counter() - started) * 1e6)
        caller_cpu = time.thread_time() + sum(map(_thread_cpu_s, caller_threads)) - before_caller
        host_cpu = sum(map(_thread_cpu_s, host_threads)) - before_host
        redis_cpu = wrk.cpu_seconds(redis_pid) - before_redis if redis_pid else None
    finally:
        caller.stop()
        host.stop()
        echo.stop()
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    latencies.sort()
    local = _local_ask_us(asks)
    return {"asks": asks, "latency_p50_us": round(common.percentile(latencies, 0.5)),
            "latency_p99_us": round(common.percentile(latencies, 0.99)),
            "caller_cpu_us_per_ask": round(caller_cpu / asks * 1e6), "host_cpu_us_per_ask": round(host_cpu / asks * 1e6),
            "redis_cpu_us_per_ask": None if redis_cpu is None else round(redis_cpu / asks * 1e6),
            "in_process_ask_p50_us": local}


def _local_ask_us(asks: int) -> int:
    """The same ask to the same actor in-process (the role-all path), for comparison."""
    echo = _Echo.start()
    try:
        latencies = []
        for _ in range(asks):
            started = time.perf_counter()
            echo.ask(m.Ping(), timeout=10)
            latencies.append((time.perf_counter() - started) * 1e6)
    finally:
        echo.stop()
    latencies.sort()
    return round(common.percentile(latencies, 0.5))


def _drop_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(wrk.REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--threads", type=int, default=64, help="`wallet serve --threads` of every process")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--asks", type=int, default=2000, help="asks of the transport-only measurement")
    p.add_argument("--json")
    args = p.parse_args(argv)
    report = {"uptime_before": common.uptime(), "machine": common.machine_facts()}
    report["transport"] = transport_cost(args.asks)
    report["all"] = run_setup("(a) --role all", ["all"], args)
    report["cluster"] = run_setup("(b) 2 gates + 1 transrv + singletons", [SINGLETONS, "transrv", "gate", "gate"], args)
    report["uptime_after"] = common.uptime()
    for key in ("all", "cluster"):
        r = report[key]
        print(f"{r['setup']}: {r['per_second']}/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  errors {r['errors']}  "
              f"CPU us/request by process {r['cpu_us_per_request']}  ledger ok={r['ledger_ok']} "
              f"({r['transfer_operations']} ops, expected {r['expected']})  load after {r['load_after']}")
    ratio = report["cluster"]["per_second"] / max(1, report["all"]["per_second"])
    print(f"ratio (b)/(a): {ratio:.2f}")
    print(f"transport: {report['transport']}")
    print(f"before: {report['uptime_before']}\nafter:  {report['uptime_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["all"]["ledger_ok"] and report["cluster"]["ledger_ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
