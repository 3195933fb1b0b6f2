"""Sweep speed, in one run on anvil + MariaDB: D funded deposit addresses (half ETH, half the test token) swept into
the hot wallet by the signer's own treasury logic (treasury.sweeps.SweepLogic over treasury.signer.SignerLogic,
SWEEPS_PER_TICK a tick): every ETH sweep, every gas top-up of a token sweep, and every token transfer once its
top-up is final, signed, committed and sent. The time counted is the service's: the ticks that sign and send,
not the blocks the chain needs for the top-ups' confirmations (mined by hand in between). Against the node's raw
send ceiling measured right after in the same run (bench/withdrawals.py send_ceiling: as many raw transactions,
signed beforehand, sent in batches with nothing else done). Target: >= 50 % of the ceiling.

    .venv/bin/python bench/sweeps.py [--addresses 1000] [--json out.json]

BENCH_PROFILE=1 writes a cProfile of the ticks to /tmp/treasury.prof (what was used to find the round trips).
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # bench/ last: `import http` must find the standard library
sys.path.insert(0, __file__.rsplit("/", 2)[0])  # and the repository first, for its packages

import argparse  # noqa: E402
import cProfile  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from eth_abi import encode  # noqa: E402
from eth_account import Account  # noqa: E402
from eth_utils import keccak  # noqa: E402

import common  # noqa: E402
from chain.broadcast import Broadcaster  # noqa: E402
from chain.nodes import ChainClient, node_label  # noqa: E402
from chain.transport import Transport  # noqa: E402
from core.config import Config, TokenConfig  # noqa: E402
from core.limits import SIGN_BATCH_MAX  # noqa: E402
from core.money import AssetRegistry  # noqa: E402
from devnet.anvil import DEV_KEYS, Anvil, deploy_token, eth_balance, send_eth, token_balance  # noqa: E402
from storage import sql, walletkeys  # noqa: E402
from storage.db import connect_database  # noqa: E402
from storage.models import PoolKey, Sweep, now_ms  # noqa: E402
from storage.pool import sealed_pool_key  # noqa: E402
from treasury.fees import OracleFees  # noqa: E402
from treasury.signer import SignerLogic  # noqa: E402
from treasury.sweeps import SweepLogic, TreasuryRules  # noqa: E402
from withdrawals import send_ceiling  # noqa: E402

ETH_DEPOSIT = 10**17
TOKEN_DEPOSIT = 5_000_000
CONFIRMATIONS = 2
MINT = keccak(text="mint(address,uint256)")[:4]
OPEN = ("topup", "signed", "broadcast")


def fund_addresses(node: Anvil, broadcaster: Broadcaster, token: str, eth_to: list[str], token_to: list[str]) -> None:
    """Deposits sent as raw transactions signed beforehand (the dev key), in batches: set-up, not measured."""
    key = DEV_KEYS[0]
    sender = Account.from_key(key).address
    nonce = int(node.rpc("eth_getTransactionCount", [sender, "pending"]), 16)
    fee = int(node.rpc("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16) * 4 + 10**9
    txs = [{"to": a, "value": ETH_DEPOSIT, "gas": 21_000, "data": b""} for a in eth_to]
    txs += [{"to": token, "value": 0, "gas": 90_000, "data": MINT + encode(["address", "uint256"], [a, TOKEN_DEPOSIT])}
            for a in token_to]
    raws = [bytes(Account.sign_transaction({"type": 2, "chainId": 31337, "nonce": nonce + i, "maxFeePerGas": fee,
                                            "maxPriorityFeePerGas": 10**9, **tx}, key).raw_transaction)
            for i, tx in enumerate(txs)]
    for start in range(0, len(raws), SIGN_BATCH_MAX):
        results = broadcaster.send(raws[start:start + SIGN_BATCH_MAX])
        assert all(r.sent for r in results), results[0].summary()


def credited_deposits(db, addresses: list[tuple[str, str]], head: int) -> None:  # noqa: ANN001
    """The deposit rows BlockWatch would have written once credited (what the sweep looks for)."""
    now = now_ms()
    rows = [(31337, "0x" + f"{i:064x}", 0, 0, address, asset, str(ETH_DEPOSIT if asset == "ETH" else TOKEN_DEPOSIT),
             head, "0x" + "0" * 64, "confirmed", now, now) for i, (address, asset) in enumerate(addresses)]
    with db.atomic():
        sql.insert_many(db, "deposit", ("chain_id", "tx_hash", "log_index", "account_id", "address", "asset",
                                        "amount", "block_number", "block_hash", "status", "created_at",
                                        "updated_at"), rows)


def bench_sweeps(url: str, node: Anvil, count: int) -> dict:
    common.provision_wallet(url, 4, pool=count)
    db = connect_database(url)
    token = deploy_token(node.url, DEV_KEYS[0], symbol="TKN", decimals=6)
    config = Config(database_url=url, master_key=common.MASTER_KEY, shards=4, confirmations=CONFIRMATIONS,
                    rpc_urls=(node.url,), tokens=(TokenConfig("TKN", token, 6),),
                    sweep_min=(("ETH", 10**15), ("TKN", 1)))
    assets = AssetRegistry.from_config(config)
    ring = config.key_ring()
    hot, gas = walletkeys.wallet_address("hot"), walletkeys.wallet_address("gas")
    addresses = [a for (a,) in PoolKey.select(PoolKey.address).order_by(PoolKey.id).limit(count).tuples()]
    eth_to, token_to = addresses[:count // 2], addresses[count // 2:]
    client = ChainClient([node.url])
    client.start()
    transport = Transport(timeout_s=60)
    broadcaster = Broadcaster([(node_label(0, node.url), node.url)], transport, batch_max=SIGN_BATCH_MAX)
    send_eth(node.url, DEV_KEYS[1], gas, 100 * 10**18)
    started = time.perf_counter()
    fund_addresses(node, broadcaster, token, eth_to, token_to)
    setup_s = time.perf_counter() - started
    credited_deposits(db, [(a, "ETH") for a in eth_to] + [(a, "TKN") for a in token_to], node.head())
    keys = {row.address: row for row in PoolKey.select().where(PoolKey.address.in_(addresses))}
    signer = SignerLogic(db, client, broadcaster, assets, hot,
                         private_key=lambda: ring.open(walletkeys.load_sealed("hot")), fees=OracleFees(client),
                         gas_price_cap_wei=config.gas_price_cap_wei, replace_after_ms=config.replace_after_ms,
                         wall_ms=now_ms)
    booked: dict[int, int] = {}
    logic = SweepLogic(signer, TreasuryRules.from_config(config), gas,
                       gas_key=lambda: ring.open(walletkeys.load_sealed("gas")),
                       deposit_key=lambda a: ring.open(sealed_pool_key(keys[a])),
                       book_gas=lambda moves: booked.update(moves))
    hot0, gas0 = eth_balance(node.url, hot), eth_balance(node.url, gas)
    service_s, ticks = 0.0, 0
    profiler = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
    for _ in range(200):
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        logic.tick()
        if profiler:
            profiler.disable()
        service_s += time.perf_counter() - t0
        ticks += 1
        if not Sweep.select().where(Sweep.status.in_(OPEN)).exists() and Sweep.select().count() >= count:
            break
        node.mine(CONFIRMATIONS)  # chain time: the top-ups' (and the transfers') confirmations
    if profiler:
        profiler.dump_stats("/tmp/treasury.prof")
    sweeps = list(Sweep.select())
    sent = int(sum(1 for s in sweeps) + sum(1 for s in sweeps if s.topup_amount))
    ceiling_s = send_ceiling(node, broadcaster, sent)
    confirmed = sum(1 for s in sweeps if s.status == "confirmed")
    eth_in = sum(int(s.amount) for s in sweeps if s.kind == "eth" and s.status == "confirmed")
    report = {
        "addresses": count, "sweeps": len(sweeps), "confirmed": confirmed, "transactions": sent, "ticks": ticks,
        "setup_funding_s": round(setup_s, 2), "service_s": round(service_s, 3),
        "tx_per_s": round(sent / service_s, 1), "ceiling_s": round(ceiling_s, 3),
        "ceiling_tx_per_s": round(sent / ceiling_s, 1), "share_of_ceiling": round(ceiling_s / service_s, 3),
        "hot_eth_gain_wei": str(eth_balance(node.url, hot) - hot0), "eth_swept_wei": str(eth_in),
        "hot_tokens": str(token_balance(node.url, token, hot)), "tokens_deposited": str(TOKEN_DEPOSIT * len(token_to)),
        "gas_wallet_spent_wei": str(gas0 - eth_balance(node.url, gas)), "gas_booked_wei": str(sum(booked.values())),
        "flagged": sum(1 for s in sweeps if s.needs_operator),
    }
    signer.close()
    client.close()
    transport.close()
    db.close_all()
    return report


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addresses", type=int, default=1000)
    p.add_argument("--json")
    args = p.parse_args(argv)
    report: dict = {"machine": common.machine_facts(), "uptime_before": common.uptime()}
    with Anvil() as node, common.bench_database() as url:
        report["sweeps"] = bench_sweeps(url, node, args.addresses)
        report["server"] = common.server_facts(connect_database(url))
    s = report["sweeps"]
    print(f"sweep of {s['addresses']} deposit addresses (half ETH, half token): {s['confirmed']}/{s['sweeps']} "
          f"confirmed, {s['transactions']} transactions (sweeps + gas top-ups) signed and sent in {s['service_s']} s "
          f"of service time over {s['ticks']} ticks ({s['tx_per_s']} tx/s); node ceiling {s['ceiling_s']} s "
          f"({s['ceiling_tx_per_s']} tx/s) -> {100 * s['share_of_ceiling']:.0f}% of the ceiling (target >= 50%: "
          f"{'met' if s['share_of_ceiling'] >= 0.5 else 'NOT met'})")
    print(f"hot wallet +{s['hot_eth_gain_wei']} wei (ETH swept {s['eth_swept_wei']}), tokens {s['hot_tokens']} of "
          f"{s['tokens_deposited']}; gas wallet spent {s['gas_wallet_spent_wei']} wei; gas booked "
          f"{s['gas_booked_wei']} wei; flagged {s['flagged']}; funding set-up {s['setup_funding_s']} s")
    common.finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
