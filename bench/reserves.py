"""Reconciliation and proof of reserves at scale (issue 11, "Speed"):

1. a Merkle-sum tree over 1,000,000 balances (target <= 30 s) and the size of its proofs (target <= 2 KiB),
   against the same run's baseline: the bare sha256 calls a tree of that size needs (2 per leaf), so the
   ratio says what the tree code costs on top of hashing;
2. one reconciliation (treasury/reconcile.py, `Reconciler.run`) of 100,000 accounts on MariaDB + anvil
   (target <= 2 s of service time): every account a balance row and a confirmed deposit to its own address,
   and that address holding exactly the balance on chain (anvil_setBalance), so the run must come out clean;
   split into the ledger's side (one transaction of SQL) and the chain's (batched eth_getBalance at one block).
   Baseline: the same eth_getBalance batches sent raw through the transport (no parsing, no summing).

    .venv/bin/python bench/reserves.py [--leaves 1000000] [--accounts 100000] [--json out.json]

ETH only for the reconciliation (a token doubles the chain reads: one balanceOf per address).
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # bench/http.py must not shadow the standard library (see ledger_batch.py)

import argparse  # noqa: E402
import hashlib
import json
import os
import random
import time

import common
from chain.nodes import ChainClient
from chain.transport import Transport
from core.money import AssetRegistry
from core.config import Config
from devnet.anvil import Anvil, rpc
from storage import sql
from storage.db import connect_database
from storage.models import ChainCursor, now_ms
from treasury.merkle import MerkleSumTree, derive_salt, leaf_hash, proof_document, verify_proof
from treasury.reconcile import Reconciler, Wallets, read_ledger

SET_BALANCE_BATCH = 500


def bench_tree(leaves: int) -> dict:
    rng = random.Random(11)
    balances = [rng.randrange(0, 10**22) for _ in range(leaves)]
    secret = os.urandom(32)
    started = time.perf_counter()
    tree = MerkleSumTree.build((leaf_hash(i + 1, derive_salt(secret, 1, "ETH", i + 1), b), b)
                               for i, b in enumerate(balances))
    build_s = time.perf_counter() - started
    assert tree.total == sum(balances)
    sizes, verify_s = [], []
    for index in rng.sample(range(leaves), 200) + [0, leaves - 1]:
        document = proof_document(tree, index, account_id=index + 1, salt=derive_salt(secret, 1, "ETH", index + 1),
                                  balance=balances[index], asset="ETH", snapshot_id=1, block_number=1)
        text = json.dumps(document, separators=(",", ":"))
        sizes.append(len(text))
        t = time.perf_counter()
        verify_proof(json.loads(text), root=tree.root.hex(), total=tree.total)
        verify_s.append(time.perf_counter() - t)
    payload = bytes(137)  # a node's input: 1 + 2 x (32 + 32) bytes
    t = time.perf_counter()
    sha = hashlib.sha256
    for _ in range(2 * leaves):
        sha(payload).digest()
    baseline_s = time.perf_counter() - t
    return {"leaves": leaves, "build_s": round(build_s, 2), "proof_bytes_max": max(sizes),
            "proof_bytes_mean": round(sum(sizes) / len(sizes)), "depth": len(tree.hashes) - 1,
            "verify_ms_mean": round(sum(verify_s) / len(verify_s) * 1000, 3),
            "baseline_bare_sha256_s": round(baseline_s, 2), "build_over_baseline": round(build_s / baseline_s, 1)}


def seed(db, node: Anvil, accounts: int) -> int:
    """Accounts with balances, a confirmed deposit each, and the chain holding exactly that. Returns the height."""
    rows = common.create_accounts(db, accounts, shards=4)
    rng = random.Random(5)
    addresses = ["0x" + os.urandom(20).hex() for _ in rows]
    amounts = [rng.randrange(1, 10**20) for _ in rows]
    frozen = [a // 10 if i % 7 == 0 else 0 for i, a in enumerate(amounts)]
    with db.atomic():
        sql.insert_many(db, "balance", ("account_id", "asset", "available", "frozen"),
                        [(a, "ETH", str(v - f), str(f)) for (a, _), v, f in zip(rows, amounts, frozen)])
        sql.insert_many(db, "deposit", ("chain_id", "tx_hash", "log_index", "account_id", "address", "asset", "amount",
                                        "block_number", "block_hash", "status", "created_at", "updated_at"),
                        [(31337, "0x" + os.urandom(32).hex(), -1, a, addr, "ETH", str(v), 1, "0x" + "00" * 32,
                          "confirmed", now_ms(), now_ms()) for (a, _), addr, v in zip(rows, addresses, amounts)])
    transport = Transport(timeout_s=120)
    for start in range(0, len(addresses), SET_BALANCE_BATCH):
        transport.batch(node.url, [("anvil_setBalance", [addr, hex(v)]) for addr, v in
                                   zip(addresses[start:start + SET_BALANCE_BATCH], amounts[start:start + SET_BALANCE_BATCH])])
    rpc(node.url, "anvil_mine", ["0x1"])
    head = int(rpc(node.url, "eth_blockNumber"), 16)
    block = rpc(node.url, "eth_getBlockByNumber", [hex(head), False])
    ChainCursor.insert(chain_id=31337, height=head, block_hash=block["hash"], start_height=0,
                       updated_at=now_ms()).execute()
    transport.close()
    return head


def bench_reconcile(accounts: int) -> dict:
    with common.bench_database() as url, Anvil() as node:
        db = connect_database(url)
        height = seed(db, node, accounts)
        chain = ChainClient([node.url], batch_size=500, timeout_s=120)
        chain.start()
        reconciler = Reconciler(db, AssetRegistry.from_config(Config()), lambda: Wallets(None, None, None), {})
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            ledger = read_ledger(db)
            ledger_s = time.perf_counter() - t
            t = time.perf_counter()
            report = reconciler.run(chain.session(), trigger="bench")
            total_s = time.perf_counter() - t
            assert report.clean and report.block_number == height, report.as_json()
            assert len(ledger.deposit_addresses) == accounts
            runs.append((total_s, ledger_s))
        addresses = ledger.deposit_addresses
        transport = Transport(timeout_s=120)
        t = time.perf_counter()
        for start in range(0, len(addresses), 500):
            transport.batch(node.url, [("eth_getBalance", [a, hex(height)]) for a in addresses[start:start + 500]])
        raw_s = time.perf_counter() - t
        transport.close()
        chain.close()
        best = min(runs)
        server = common.server_facts(db)
        db.close_all()
    return {"accounts": accounts, "service_s_runs": [round(r[0], 2) for r in runs], "service_s_best": round(best[0], 2),
            "ledger_side_s_best": round(min(r[1] for r in runs), 2), "baseline_raw_balance_batches_s": round(raw_s, 2),
            "holdings_wei": str(report.lines[0].holdings), "clean": report.clean, "server": server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    report = {"uptime_before": common.uptime(), "machine": common.machine_facts()}
    report["tree"] = bench_tree(args.leaves)
    print("tree:", json.dumps(report["tree"]))
    report["reconcile"] = bench_reconcile(args.accounts)
    report["server"] = report["reconcile"].pop("server")
    print("reconcile:", json.dumps(report["reconcile"]))
    print(f"uptime before: {report['uptime_before']}")
    common.finish_report(report, args.json_path)


if __name__ == "__main__":
    main()
