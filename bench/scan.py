"""Chain scanning: BlockWatch catching up against a real anvil node, the node's ceiling, and the latency
from a confirming block to the credited balance through the HTTP API.

One run, one fresh MariaDB database, one anvil:

1. fill: BLOCKS blocks of TXS transactions each (half ETH transfers, half ERC-20 `transfer` calls of the
   configured token, a tenth of each to deposit addresses), mined with `anvil_mine` while automine is off;
   ADDRESSES accounts with deposit addresses in MariaDB: the watch set.
2. ceilings: the same range fetched with batched eth_getBlockByNumber(full) and nothing else, three ways:
   raw (HTTP + json only, one batch of --batch blocks after another), typed (through ChainClient: the client,
   batch size and typed parsing BlockWatch uses) and parallel (typed, in the request pattern BlockWatch uses:
   parts of batch/FETCH_PARALLEL blocks, FETCH_PARALLEL in flight). The catch-up is compared with the best.
3. catch-up: BlockWatch's logic (blockwatch.watcher.BlockWatcher, the class the actor is a thin shell over) from
   the first filled block to the head, recording blocks and deposits in MariaDB and having the shard actors
   credit the due ones; timed until the tip is the head. Its start-up (loading the watch set) is apart.
4. latency: the full actor system (BlockWatch ticking at its own pace, chain_poll_s) with anvil mining every
   second; per deposit, from the moment the confirming block (deposit block + N - 1) is on the node (seen by
   a poller at 2 ms) to the moment GET /api/v1/balances (Flask test client) shows the credited balance.

    .venv/bin/python bench/scan.py [--blocks 300] [--txs 100] [--addresses 1000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# bench/ goes last on the path: a module there named like a stdlib one (bench/http.py) must not shadow it.
# The root goes first: devnet.anvil has the anvil process and token helpers.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]

import requests  # noqa: E402
from eth_utils import to_checksum_address  # noqa: E402

import common  # noqa: E402

from app.provision import provision  # noqa: E402
from blockwatch.crediting import Crediting  # noqa: E402
from chain.nodes import ChainClient  # noqa: E402
from core.limits import FETCH_PARALLEL  # noqa: E402
from blockwatch.watcher import BlockWatcher  # noqa: E402
from storage import sql  # noqa: E402
from storage.db import connect_database, database_proxy  # noqa: E402
from storage.models import Account, ChainCursor, Deposit, now_ms  # noqa: E402
from devnet.waiting import wait_until  # noqa: E402
from devnet.anvil import DEV_ADDRESSES, DEV_KEYS, Anvil, deploy_token, rpc, token_mint  # noqa: E402
from core.config import Config, TokenConfig  # noqa: E402
from core.money import AssetRegistry  # noqa: E402
from app.system import ActorSystem  # noqa: E402
from web import create_app  # noqa: E402

TOKEN = "TKN"
SHARDS = 4
CONFIRMATIONS = 6
LATENCY_CONFIRMATIONS = 3
TRANSFER_SELECTOR = "0xa9059cbb"


# -- fill -----------------------------------------------------------------------------------------------

def create_watched_accounts(db, count: int, seed: int) -> list[tuple[int, int, str]]:
    """`count` user accounts with random deposit addresses; returns (id, shard, address) of each."""
    rng = random.Random(seed)
    provision(db, SHARDS)
    now = now_ms()
    raw = rng.randbytes(20 * count).hex()
    addresses = [to_checksum_address("0x" + raw[i * 40:(i + 1) * 40]) for i in range(count)]
    for start in range(0, count, 20_000):
        rows = [(f"w{i}", "user", i % SHARDS, addresses[i], 0, now) for i in range(start, min(count, start + 20_000))]
        with db.atomic():
            sql.insert_many(db, "account", ("username", "kind", "shard", "deposit_address", "on_hold", "created_at"),
                            rows)
    query = (Account.select(Account.id, Account.shard, Account.deposit_address)
             .where((Account.kind == "user") & Account.username.startswith("w")).order_by(Account.id))
    return list(query.tuples().iterator())


def fill_chain(node: Anvil, token: str, blocks: int, txs: int, pool: list[str], seed: int) -> tuple[int, int, int]:
    """Mines `blocks` blocks of `txs` transactions from the dev accounts (eth_sendTransaction: the node signs).
    Returns (first block, last block, deposits sent)."""
    rng = random.Random(seed + 1)  # not the accounts' seed: "random" recipients would replay their addresses
    node.set_automine(False)
    first = node.head() + 1
    deposits = 0
    senders = DEV_ADDRESSES[:len(DEV_KEYS)]
    for _ in range(blocks):
        calls = []
        for i in range(txs):
            to_pool = rng.random() < 0.1
            deposits += to_pool
            to = rng.choice(pool) if to_pool else to_checksum_address("0x" + rng.randbytes(20).hex())
            sender = senders[i % len(senders)]
            if i % 2 == 0:
                tx = {"from": sender, "to": to, "value": hex(rng.randint(10**12, 10**16)), "gas": hex(21_000)}
            else:
                data = TRANSFER_SELECTOR + to[2:].lower().rjust(64, "0") + hex(rng.randint(1, 10**9))[2:].rjust(64, "0")
                tx = {"from": sender, "to": token, "data": data, "gas": hex(80_000)}
            calls.append({"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction", "params": [tx]})
        replies = requests.post(node.url, json=calls, timeout=60).json()
        failed = [r for r in replies if "error" in r]
        if failed:
            raise RuntimeError(f"eth_sendTransaction failed: {failed[:3]}")
        node.mine(1)
    last = node.head()
    block = node.block(last)
    if len(block["transactions"]) != txs:
        raise RuntimeError(f"block {last} has {len(block['transactions'])} transactions, expected {txs}")
    return first, last, deposits


# -- ceiling --------------------------------------------------------------------------------------------

def ceiling_typed(url: str, first: int, last: int, batch: int) -> float:
    client = ChainClient([url], batch_size=batch)
    client.start()
    started = time.perf_counter()
    session = client.session()
    for low in range(first, last + 1, batch):
        session.blocks(range(low, min(last, low + batch - 1) + 1), full=True)
    seconds = time.perf_counter() - started
    client.close()
    return (last - first + 1) / seconds


def ceiling_parallel(url: str, first: int, last: int, batch: int) -> float:
    """The same range in requests of batch/FETCH_PARALLEL blocks, FETCH_PARALLEL in flight at all times: what
    the node serves to the request pattern BlockWatch uses, with nothing else done."""
    client = ChainClient([url], batch_size=batch)
    client.start()
    part = max(1, batch // FETCH_PARALLEL)
    started = time.perf_counter()
    session = client.session()
    with ThreadPoolExecutor(max_workers=FETCH_PARALLEL) as pool:
        parts = [range(low, min(last, low + part - 1) + 1) for low in range(first, last + 1, part)]
        for blocks in pool.map(lambda numbers: session.blocks(numbers, full=True), parts):
            assert blocks
    seconds = time.perf_counter() - started
    client.close()
    return (last - first + 1) / seconds


def ceiling_raw(url: str, first: int, last: int, batch: int) -> float:
    http = requests.Session()
    started = time.perf_counter()
    for low in range(first, last + 1, batch):
        calls = [{"jsonrpc": "2.0", "id": n, "method": "eth_getBlockByNumber", "params": [hex(n), True]}
                 for n in range(low, min(last, low + batch - 1) + 1)]
        json.loads(http.post(url, data=json.dumps(calls), headers={"Content-Type": "application/json"}).content)
    seconds = time.perf_counter() - started
    http.close()
    return (last - first + 1) / seconds


# -- catch-up -------------------------------------------------------------------------------------------

def catch_up(config: Config, system: ActorSystem, last: int) -> dict:
    db = database_proxy.obj
    db.connect(reuse_if_open=True)
    client = ChainClient(config.rpc_urls, batch_size=config.scan_batch_blocks)
    watcher = BlockWatcher(config, client, Crediting(system.router, db, config.confirmations),
                           AssetRegistry.from_config(config), db)
    rss_before = rss_mib()
    started = time.perf_counter()
    watched = watcher.load_addresses()
    load_s = time.perf_counter() - started
    watch_mib = watcher.watch.memory_bytes() / 2**20
    rss_after = rss_mib()
    watcher.connect()
    started = time.perf_counter()
    steps = 0
    while watcher.tip is None or watcher.tip.height < last:
        report = watcher.run(max_steps=1)
        steps += 1
        if report.errors:
            raise RuntimeError(f"catch-up step failed: {report.errors}")
    scanned_s = time.perf_counter() - started
    while watcher.credit_due():  # the last due deposits (the run credits after every step)
        pass
    credited_s = time.perf_counter() - started
    watcher.close()
    blocks = last - config.start_block + 1
    return {"watched": watched, "load_s": round(load_s, 2), "watch_set_mib": round(watch_mib, 1),
            "rss_growth_mib": round(rss_after - rss_before, 1), "steps": steps, "blocks": blocks,
            "scan_s": round(scanned_s, 2), "blocks_per_s": round(blocks / scanned_s, 1),
            "with_credits_s": round(credited_s, 2), "deposits": Deposit.select().count(),
            "credited": Deposit.select().where(Deposit.status == "confirmed").count()}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


# -- latency --------------------------------------------------------------------------------------------

class HeadWatcher(threading.Thread):
    """Notes when each block appears on the node (polling eth_blockNumber every 2 ms)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.http = requests.Session()

    def run(self) -> None:
        last = -1
        while not self.stop.is_set():
            head = int(self.http.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber",
                                                      "params": []}).json()["result"], 16)
            now = time.perf_counter()
            for number in range(last + 1, head + 1):
                self.seen.setdefault(number, now)
            last = head
            time.sleep(0.002)


def latency(config: Config, node: Anvil, accounts: list[tuple[int, int, str]], rounds: int, per_block: int,
            seed: int) -> dict:
    rng = random.Random(seed)
    config = dataclasses.replace(config, confirmations=LATENCY_CONFIRMATIONS, chain_poll_s=0.1)
    system = ActorSystem(config).start()
    app = create_app(system)
    heads = HeadWatcher(node.url)
    heads.start()
    collector = CreditCollector(app, heads)
    try:
        tokens = login_all(app, rng.sample(accounts, rounds * per_block))
        collector.start()
        rpc(node.url, "evm_setIntervalMining", [1])
        for group in chunks(tokens, per_block):
            head = node.head()
            for account, _ in group:
                rpc(node.url, "eth_sendTransaction", [{"from": DEV_ADDRESSES[0], "to": account[2],
                                                       "value": hex(10**15), "gas": hex(21_000)}])
            wait_head(node, head + 1)
            collector.expect(node.head() + LATENCY_CONFIRMATIONS - 1, [token for _, token in group], 10**15)
        collector.finish(timeout_s=30)
    finally:
        rpc(node.url, "evm_setIntervalMining", [0])
        heads.stop.set()
        collector.stop.set()
        system.stop()
    samples = sorted(collector.latencies)
    return {"samples": len(samples), "p50_ms": round(1000 * statistics.median(samples), 1),
            "p99_ms": round(1000 * common.percentile(samples, 99), 1),
            "max_ms": round(1000 * samples[-1], 1), "confirmations": LATENCY_CONFIRMATIONS,
            "poll_s": config.chain_poll_s}


class CreditCollector(threading.Thread):
    """Polls GET /api/v1/balances (every 2 ms) for deposits whose confirming block is on the node, and
    records, per deposit, the time from that block's arrival to the balance showing the credit."""

    def __init__(self, app, heads: HeadWatcher) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.heads = heads
        self.pending: list[tuple[int, str, int]] = []  # (confirming block, bearer token, expected ETH)
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.failure: str | None = None

    def expect(self, confirming_block: int, tokens: list[str], amount: int) -> None:
        with self.lock:
            self.pending.extend((confirming_block, token, amount) for token in tokens)

    def finish(self, timeout_s: float) -> None:
        wait_until(lambda: not self.pending or self.failure is not None, timeout_s,
                   "every deposit credited", interval_s=0.01, detail=lambda: f"{len(self.pending)} still pending")
        if self.failure:
            raise RuntimeError(self.failure)

    def run(self) -> None:
        client = self.app.test_client()
        while not self.stop.is_set():
            with self.lock:
                due = [item for item in self.pending if item[0] in self.heads.seen]
            for item in due:
                confirming, token, amount = item
                body = client.get("/api/v1/balances", headers={"Authorization": f"Bearer {token}"}).json
                if next(int(b["available"]) for b in body["balances"] if b["asset"] == "ETH") >= amount:
                    self.latencies.append(time.perf_counter() - self.heads.seen[confirming])
                    with self.lock:
                        self.pending.remove(item)
                elif time.perf_counter() - self.heads.seen[confirming] > 10:
                    self.failure = "a deposit was not credited within 10 s of its confirming block"
                    return
            time.sleep(0.002)


def login_all(app, accounts: list[tuple[int, int, str]]) -> list[tuple[tuple[int, int, str], str]]:
    """Bearer tokens for these accounts, issued directly by the front's session store (no passwords)."""
    sessions = app.extensions["wallet"].sessions
    return [(account, sessions.create(account[0])[0]) for account in accounts]


def wait_head(node: Anvil, height: int) -> None:
    wait_until(lambda: node.head() >= height, 10, f"anvil to mine block {height}", interval_s=0.005)


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# -- main -----------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=300)
    p.add_argument("--txs", type=int, default=100, help="transactions per block")
    p.add_argument("--addresses", type=int, default=1_000_000, help="watched deposit addresses")
    p.add_argument("--batch", type=int, default=100, help="blocks per scan step and per ceiling request")
    p.add_argument("--latency-rounds", type=int, default=40, help="blocks with deposits in the latency run")
    p.add_argument("--latency-per-block", type=int, default=5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report: dict = {"machine": common.machine_facts(), "uptime_before": common.uptime(), "args": vars(args)}
    with common.bench_database() as url, Anvil(accounts=10, extra_args=("--gas-limit", "100000000")) as node:
        db = connect_database(url)
        report["server"] = common.server_facts(db)
        token = deploy_token(node.url, DEV_KEYS[0], symbol=TOKEN, decimals=6)
        for holder in DEV_ADDRESSES:
            token_mint(node.url, token, DEV_KEYS[0], holder, 10**30)
        started = time.perf_counter()
        accounts = create_watched_accounts(db, args.addresses, args.seed)
        print(f"accounts: {len(accounts)} watched addresses inserted in {time.perf_counter() - started:.1f}s")
        pool = [address for _, _, address in accounts]
        started = time.perf_counter()
        first, last, sent = fill_chain(node, token, args.blocks, args.txs, pool, args.seed)
        print(f"fill: blocks {first}..{last} ({last - first + 1} x {args.txs} txs, {sent} deposits) "
              f"in {time.perf_counter() - started:.1f}s")

        ceilings = {"raw": ceiling_raw(node.url, first, last, args.batch),
                    "typed": ceiling_typed(node.url, first, last, args.batch),
                    "parallel": ceiling_parallel(node.url, first, last, args.batch)}
        print("ceiling (blocks/s): " + ", ".join(f"{k} {v:.1f}" for k, v in ceilings.items()))

        config = Config(database_url=url, rpc_urls=(node.url,), confirmations=CONFIRMATIONS, shards=SHARDS,
                        master_key=common.MASTER_KEY, tokens=(TokenConfig(TOKEN, token, 6),), start_block=first,
                        scan_batch_blocks=args.batch, chain_poll_s=3600.0, shard_batch_max=2000)
        core = ActorSystem(dataclasses.replace(config, rpc_urls=())).start()  # shards credit; no BlockWatch
        try:
            scan = catch_up(config, core, last)
        finally:
            core.stop()
        connect_database(url)
        for name, value in ceilings.items():
            scan[f"vs_{name}_ceiling"] = round(scan["blocks_per_s"] / value, 3)
        scan["vs_best_ceiling"] = round(scan["blocks_per_s"] / max(ceilings.values()), 3)
        print(f"catch-up: {scan}")
        lat = latency(config, node, accounts, args.latency_rounds, args.latency_per_block, args.seed)
        print(f"credit latency: {lat}")
        report.update({"deposits_sent": sent, "ceilings_blocks_per_s": {k: round(v, 1) for k, v in ceilings.items()},
                       "catch_up": scan, "latency": lat, "cursor": ChainCursor.get().height})
    common.finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
