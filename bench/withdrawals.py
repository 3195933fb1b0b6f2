"""Withdrawals' speed, in one run on anvil + MariaDB (+ Redis for the HTTP part):

(a) the signer's throughput from approval to broadcast: W approved withdrawals signed (a lane nonce each, signed
    offline with eth-account), committed with their attempts, and sent to the node, by the signer's own logic
    (treasury.signer.SignerLogic, batches of SIGN_BATCH_MAX); against the node's ceiling measured right after in
    the same run: W raw transactions signed beforehand by another key, sent in batches of the same size with
    nothing else done. Target: >= 50 % of the ceiling.
(b) approval -> broadcast latency at 20 approvals/s: the running service (the Signer actor, woken by the
    blockout_req news of each approval's commit); latency = the attempt's first send minus the moment the approval
    was asked. Target: p99 <= 500 ms.
(c) `POST /api/v1/withdrawals` through HTTP against `POST /api/v1/transfers` on the same `wallet serve`, wrk over
    keep-alive connections. Target: withdrawals >= 0.8 x transfers.

    .venv/bin/python bench/withdrawals.py [--withdrawals 2000] [--rate 20] [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # bench/ last: `import http` must find the standard library

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from eth_account import Account  # noqa: E402

import common  # noqa: E402
import wrk  # noqa: E402
from app.audit import run_audit  # noqa: E402
from app.system import ActorSystem  # noqa: E402
from chain.broadcast import Broadcaster  # noqa: E402
from chain.nodes import ChainClient, node_label  # noqa: E402
from chain.transport import Transport  # noqa: E402
from core import messages as m  # noqa: E402
from core.config import Config  # noqa: E402
from core.limits import SIGN_BATCH_MAX  # noqa: E402
from core.ports import free_port  # noqa: E402
from devnet.anvil import DEV_KEYS, Anvil, send_eth  # noqa: E402
from devnet.waiting import wait_until  # noqa: E402
from storage import walletkeys  # noqa: E402
from storage.db import connect_database  # noqa: E402
from storage.models import TxAttempt, Withdrawal, now_ms  # noqa: E402
from treasury.fees import OracleFees  # noqa: E402
from treasury.signer import SignerLogic  # noqa: E402

RECIPIENT = "0x000000000000000000000000000000000000dEaD"
AMOUNT = 10**9  # 1 gwei each: the hot wallet pays gas, not value
HOT_FUNDS = 1_000 * 10**18
WINDOW = 64  # requests in flight while building the queue

LUA_WITHDRAWALS = r"""
function request()
  counter = counter + 1
  local from = math.random(#tokens)
  local body = '{"asset": "ETH", "to_address": "0x000000000000000000000000000000000000dEaD", "amount": "1000", '
    .. '"speed": "standard", "pay_password": "' .. pay_password .. '"}'
  return wrk.format("POST", "/api/v1/withdrawals", {
    ["Authorization"] = "Bearer " .. tokens[from],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = run_id .. "-w-" .. id .. "-" .. counter}, body)
end
"""


def config_for(url: str, node: Anvil, prefix: str, **extra) -> Config:
    return Config(database_url=url, redis_url=wrk.REDIS_URL, redis_prefix=prefix, master_key=common.MASTER_KEY,
                  shards=4, confirmations=3, chain_poll_s=0.2, **extra)


def build_queue(system: ActorSystem, accounts: list[tuple[int, int]], count: int, approve: bool) -> list[int]:
    """`count` withdrawals requested (and approved) through the shards, WINDOW in flight."""
    router = system.router

    def one(i: int) -> int:
        account_id, _ = accounts[i % len(accounts)]
        result = router.command(m.RequestWithdrawal(f"w-{i}", account_id, "ETH", RECIPIENT, AMOUNT, 0, "fast"))
        if approve:
            router.command(m.ApproveWithdrawal(f"a-{i}", account_id, result.ref, 1, "bench"))
        return result.ref

    with concurrent.futures.ThreadPoolExecutor(WINDOW) as pool:
        return list(pool.map(one, range(count)))


def fund(system: ActorSystem, accounts: list[tuple[int, int]]) -> None:
    for account_id, _ in accounts:
        system.router.command(m.Credit(f"fund-{account_id}", account_id, "ETH", 10**24))


# -- (a) ------------------------------------------------------------------------------------------------------

def bench_signer(url: str, node: Anvil, prefix: str, count: int) -> dict:
    config = config_for(url, node, prefix)  # no rpc_urls: no Signer actor; the logic is driven here
    db = connect_database(url)
    accounts = common.create_accounts(db, max(50, count // 40), config.shards, prefix="sig")
    system = ActorSystem(config).start()
    try:
        fund(system, accounts)
        build_queue(system, accounts, count, approve=True)
    finally:
        system.stop()
    db = connect_database(url)
    client = ChainClient([node.url])
    client.start()
    transport = Transport(timeout_s=30)
    broadcaster = Broadcaster([(node_label(0, node.url), node.url)], transport, batch_max=SIGN_BATCH_MAX)
    ring = config.key_ring()
    hot = walletkeys.wallet_address("hot")
    logic = SignerLogic(db, client, broadcaster, system.assets, hot,
                        private_key=lambda: ring.open(walletkeys.load_sealed("hot")), fees=OracleFees(client),
                        gas_price_cap_wei=config.gas_price_cap_wei, replace_after_ms=config.replace_after_ms,
                        wall_ms=now_ms)
    started = time.perf_counter()
    while logic.sign_approved(SIGN_BATCH_MAX):  # one call signs them all (pipelined), the next finds none
        pass
    signer_s = time.perf_counter() - started
    logic.close()
    broadcast = Withdrawal.select().where(Withdrawal.status == "broadcast").count()
    ceiling_s = send_ceiling(node, broadcaster, count)
    client.close()
    transport.close()
    db.close_all()
    return {"withdrawals": count, "broadcast": broadcast, "signer_s": round(signer_s, 3),
            "signer_per_s": round(count / signer_s), "ceiling_s": round(ceiling_s, 3),
            "ceiling_per_s": round(count / ceiling_s), "share_of_ceiling": round(ceiling_s / signer_s, 3)}


def send_ceiling(node: Anvil, broadcaster: Broadcaster, count: int) -> float:
    """The node alone: `count` transactions signed beforehand, sent in the signer's batch size."""
    key = DEV_KEYS[2]
    sender = Account.from_key(key).address
    nonce = int(node.rpc("eth_getTransactionCount", [sender, "pending"]), 16)
    fees = int(node.rpc("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16) * 2 + 10**9
    raws = [bytes(Account.sign_transaction({
        "type": 2, "chainId": 31337, "nonce": nonce + i, "to": RECIPIENT, "value": AMOUNT, "gas": 21_000,
        "maxFeePerGas": fees, "maxPriorityFeePerGas": 10**9}, key).raw_transaction) for i in range(count)]
    started = time.perf_counter()
    for start in range(0, count, SIGN_BATCH_MAX):
        results = broadcaster.send(raws[start:start + SIGN_BATCH_MAX])
        assert all(r.sent for r in results), results[0].summary()
    return time.perf_counter() - started


# -- (b) ------------------------------------------------------------------------------------------------------

def bench_latency(url: str, node: Anvil, prefix: str, rate: int, seconds: int) -> dict:
    config = config_for(url, node, prefix, rpc_urls=(node.url,))
    count = rate * seconds
    db = connect_database(url)
    accounts = common.create_accounts(db, 50, config.shards, prefix="lat")
    system = ActorSystem(config).start()
    try:
        fund(system, accounts)
        ids = build_queue(system, accounts, count, approve=False)
        rows = {w.id: w for w in Withdrawal.select().where(Withdrawal.id.in_(ids))}
        asked: dict[int, int] = {}
        started = time.perf_counter()
        for i, withdrawal_id in enumerate(ids):  # paced: one approval every 1/rate s
            time.sleep(max(0.0, started + i / rate - time.perf_counter()))
            asked[withdrawal_id] = now_ms()
            system.router.command(m.ApproveWithdrawal(f"lat-a-{withdrawal_id}", rows[withdrawal_id].account_id,
                                                      withdrawal_id, 1, "bench"))
        wait_until(lambda: TxAttempt.select().where(TxAttempt.sends >= 1).count() >= count, 60,
                   "every approved withdrawal broadcast")
    finally:
        system.stop()
    sent = {a.ref_id: a.last_sent_at for a in TxAttempt.select().where(TxAttempt.ref_id.in_(ids))}
    latencies = sorted(sent[i] - asked[i] for i in ids)
    db.close_all()
    return {"approvals": count, "rate_per_s": rate, "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))], "max_ms": latencies[-1]}


# -- (c) ------------------------------------------------------------------------------------------------------

def bench_http(url: str, node: Anvil, prefix: str, args: argparse.Namespace) -> dict:
    config = config_for(url, node, prefix)
    names = wrk.prepare_users(url, config, args.users)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = wrk.start_server(config, port, 64, Path(tmp) / "serve.log",
                                {"WALLET_RPC_URLS": node.url, "WALLET_SIGNER_TICK_MS": "3600000"})
        try:
            base = f"http://127.0.0.1:{port}"
            tokens = wrk.log_in_and_warm_up(base, names)
            data = wrk.lua_data(tokens, names, prefix)
            runs = {kind: wrk.run_wrk(kind, path, base, data + wrk.LUA_COMMON + lua, args, proc.pid)
                    for kind, path, lua in (("transfers", "/api/v1/transfers", wrk.LUA_TRANSFERS),
                                            ("withdrawals", "/api/v1/withdrawals", LUA_WITHDRAWALS))}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    runs["ratio"] = round(runs["withdrawals"]["per_second"] / runs["transfers"]["per_second"], 2)
    return runs


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--withdrawals", type=int, default=2000)
    p.add_argument("--rate", type=int, default=20, help="approvals per second for the latency run")
    p.add_argument("--latency-seconds", type=int, default=10)
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    p.add_argument("--json")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report: dict = {"machine": common.machine_facts(), "uptime_before": common.uptime()}
    with Anvil() as node:
        send_eth_to_hot = HOT_FUNDS
        with common.bench_database() as url:
            prefix = f"wallet-bench-{secrets.token_hex(4)}"
            common.provision_wallet(url, 4)
            send_eth(node.url, DEV_KEYS[0], walletkeys.wallet_address("hot"), send_eth_to_hot)
            report["signer"] = bench_signer(url, node, prefix, args.withdrawals)
        # Automine mines the 2 x W transactions of (a) one block each: let it finish before (b) sends its own.
        wait_until(lambda: int(node.rpc("txpool_status", [])["pending"], 16) == 0, 300, "anvil's pool to empty")
        with common.bench_database() as url:
            common.provision_wallet(url, 4)
            send_eth(node.url, DEV_KEYS[1], walletkeys.wallet_address("hot"), send_eth_to_hot)
            report["latency"] = bench_latency(url, node, f"wallet-bench-{secrets.token_hex(4)}", args.rate,
                                              args.latency_seconds)
        with common.bench_database() as url:
            common.provision_wallet(url, 4)
            report["http"] = bench_http(url, node, f"wallet-bench-{secrets.token_hex(4)}", args)
            connect_database(url)
            audit = run_audit()
            report["http"]["audit_ok"] = audit.ok
    report["uptime_after"] = common.uptime()
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def print_report(report: dict) -> None:
    s, lat, h = report["signer"], report["latency"], report["http"]
    print(f"(a) signer: {s['withdrawals']} approved -> broadcast in {s['signer_s']} s ({s['signer_per_s']}/s); node "
          f"ceiling {s['ceiling_s']} s ({s['ceiling_per_s']}/s) -> {100 * s['share_of_ceiling']:.0f}% of the ceiling "
          f"(target >= 50%: {'met' if s['share_of_ceiling'] >= 0.5 else 'NOT met'})")
    print(f"(b) approval -> broadcast at {lat['rate_per_s']}/s: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max "
          f"{lat['max_ms']} ms (target p99 <= 500 ms: {'met' if lat['p99_ms'] <= 500 else 'NOT met'})")
    for kind in ("transfers", "withdrawals"):
        run = h[kind]
        print(f"(c) {kind:>11}: {run['per_second']}/s p50 {run['p50_ms']} ms p99 {run['p99_ms']} ms errors "
              f"{run['errors']} (server {run['server_cpu_us_per_request']} us CPU/request)")
    print(f"(c) withdrawals / transfers = {h['ratio']} (target >= 0.8: {'met' if h['ratio'] >= 0.8 else 'NOT met'}); "
          f"audit ok={h['audit_ok']}")
    print(f"machine: {report['machine']}\nbefore: {report['uptime_before']}\nafter:  {report['uptime_after']}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
