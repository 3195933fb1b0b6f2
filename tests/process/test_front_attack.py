"""Issue 9, findings 1 and 2: slow request bodies and idle connections against a real `wallet serve`.

Before the fix, every body was read on one of the 64 view threads with no time limit (200 slow bodies held
them all: `/healthz` waited for the bodies, and SIGTERM for the last trickling client), and granian's
defaults held at most 1,024 connections, each for up to 30 s of silence (1,100 idle sockets delayed a new
client by ~29 s). This test process opens thousands of sockets: its open-file soft limit is raised to the
hard one.
"""

from __future__ import annotations

import resource
import time

import pytest
import requests

from core.limits import HTTP_BODY_READ_TIMEOUT_MS
from core.ports import free_port
from devnet.attack import SlowBodies, address_of, healthz_once, open_idle, open_non_reading, watch_closed
from tests.conftest import make_config
from tests.process.support import PAY_PASSWORD, ServeProcess, login, prepare, wallet_env

SLOW_CLIENTS = 200
IDLE_SOCKETS = 5000
IDLE_TIMEOUT_S = 2
HEALTHZ_P99_MAX_MS = 500.0  # the target is 100 ms on a quiet machine (bench/front_attack.py); tests share it


@pytest.fixture(autouse=True)
def _many_open_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert hard >= 2 * IDLE_SOCKETS + 1000, f"this test needs `ulimit -Hn` >= {2 * IDLE_SOCKETS + 1000}"
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def served(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    prepare(config, {"alice": 10**18, "bob": 0})
    env = wallet_env(config, free_port())
    env["WALLET_HTTP_IDLE_TIMEOUT_S"] = str(IDLE_TIMEOUT_S)
    server = ServeProcess(env, tmp_path / "serve.log")
    try:
        yield server.start()
    finally:
        server.ensure_stopped()


def test_slow_bodies_take_no_thread_and_healthz_and_transfers_go_on(served):
    http = requests.Session()
    http.headers["Authorization"] = "Bearer " + login(http, served.url, "alice")
    attack = SlowBodies(served.url, SLOW_CLIENTS)
    attack.start()
    try:
        time.sleep(1.0)  # pacing, not waiting for a condition: every slow client is mid-body from here on
        measured_until = time.monotonic() + 5.0  # a slow body takes 7.8 s: all are still arriving until then
        latencies, attempted, transfers = [], 0, 0
        while time.monotonic() < measured_until and attempted < 60:
            latency = healthz_once(served.url)
            assert latency is not None, served.log_tail()
            latencies.append(latency)
            attempted += 1
            answer = http.post(served.url + "/api/v1/transfers", timeout=10,
                               headers={"Idempotency-Key": f"k-{attempted}"},
                               json={"to_username": "bob", "asset": "ETH", "amount": "1", "pay_password": PAY_PASSWORD})
            transfers += answer.status_code == 201
            time.sleep(0.05)
        assert attack.connects == SLOW_CLIENTS and not attack.answers, "the slow clients were still sending"
    finally:
        attack.stopping.set()
        attack.join(timeout=10)
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99) - 1] <= HEALTHZ_P99_MAX_MS, latencies
    assert attempted >= 10 and transfers == attempted, (attempted, transfers)
    # Finding 8: the HTTP server does not announce itself (granian adds its name unless a Server is sent).
    assert http.get(served.url + "/healthz", timeout=10).headers.get("Server", "") == ""


def test_a_body_that_stops_arriving_is_answered_408_and_sigterm_waits_for_no_client(served):
    import socket

    silent = socket.create_connection(address_of(served.url), timeout=30)
    silent.sendall(b"POST /api/v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 49\r\n\r\n{\"user")
    started = time.monotonic()
    answer = silent.recv(4096)
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request_timeout" in answer and waited < HTTP_BODY_READ_TIMEOUT_MS / 1000 + 5
    assert silent.recv(4096) == b"", "the connection is closed after the 408"
    silent.close()

    tricklers = SlowBodies(served.url, 50, byte_every_s=1.0, length=60_000)  # would take 16 hours each
    tricklers.start()
    deaf = open_non_reading(served.url, 10)  # and these never read what they asked for
    try:
        time.sleep(1.5)  # pacing: every trickler is mid-body, the deaf clients' answers are backed up
        signalled = time.monotonic()
        assert served.terminate(timeout_s=40) == 0, served.log_tail()
        assert time.monotonic() - signalled < 30
    finally:
        tricklers.stopping.set()
        tricklers.join(timeout=10)
        for sock in deaf:
            sock.close()


def test_idle_sockets_from_one_address_neither_block_a_new_client_nor_stay_open(served):
    assert healthz_once(served.url, "127.0.0.2") is not None
    idle = open_idle(served.url, IDLE_SOCKETS)  # half say nothing, half half a request head
    try:
        assert len(idle) == IDLE_SOCKETS, f"the server took only {len(idle)} connections"
        opened = time.monotonic()
        for _ in range(3):
            latency = healthz_once(served.url, "127.0.0.2")
            assert latency is not None and latency < 1000, latency
        closed = watch_closed(idle, timeout_s=IDLE_TIMEOUT_S + 20)
        assert len(closed) == IDLE_SOCKETS, f"{len(closed)} of {IDLE_SOCKETS} closed by the server"
        assert min(closed) >= IDLE_TIMEOUT_S - 0.5 and time.monotonic() - opened < IDLE_TIMEOUT_S + 20
    finally:
        for sock, _ in idle:
            sock.close()
    assert healthz_once(served.url) is not None


def test_the_gate_bounds_bodies_before_reading_them_and_drops_ambiguous_headers(served):
    import socket

    def exchange(raw: bytes) -> bytes:
        with socket.create_connection(address_of(served.url), timeout=15) as sock:
            sock.sendall(raw)
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    declared = exchange(b"POST /api/v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 70000\r\n\r\n{")  # refused before a byte of it is read
    assert declared.startswith(b"HTTP/1.1 413") and b"payload_too_large" in declared
    chunk = b"x" * 40_000
    chunked = exchange(b"POST /api/v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n" + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2 + b"0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413") and b"payload_too_large" in chunked
    echoed = requests.get(served.url + "/healthz", headers={"X-Request-ID": "mine-1"}, timeout=10)
    assert echoed.headers["X-Request-ID"] == "mine-1"
    underscored = requests.get(served.url + "/healthz", headers={"X_Request_ID": "mine-2"}, timeout=10)
    assert underscored.headers["X-Request-ID"] != "mine-2"  # X_Request_ID is not X-Request-ID: dropped


@pytest.mark.parametrize("soft, hard, connections, soft_after", [
    (1024, 20000, 16384, 16384 + 1024),  # raised as far as needed (granian's import may raise it to the hard one)
    (1024, 1024, 512, 1024),  # cannot be raised: half of it, and a warning
])
def test_the_connection_bound_follows_the_open_file_limit(soft, hard, connections, soft_after):
    import os
    import subprocess
    import sys

    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d)); "
            "from app.serve import connections_allowed; "
            "print(connections_allowed(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])" % (soft, hard))
    if hard > resource.getrlimit(resource.RLIMIT_NOFILE)[1]:
        pytest.skip("this machine's hard open-file limit is lower")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert out.returncode == 0, out.stderr
    got_connections, got_soft = map(int, out.stdout.split())
    assert got_connections == connections and got_soft >= soft_after
