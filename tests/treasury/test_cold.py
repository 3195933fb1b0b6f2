"""Cold storage on a real anvil and MariaDB: above the cap the surplus goes to the cold address down to the
target, never below it; with no cold address (or a bad one) nothing moves and the service refuses to start;
below the low mark an alert and a metric ask for a refill."""

from __future__ import annotations

import logging

import pyotp
import pytest

from core.config import Config
from core.errors import ConfigError
from storage import admins
from storage.models import Sweep
from tests.console.support import STAFF_PASSWORD, csrf_of
from tests.treasury.support import ETH, TOKEN, eth_balance, receipt_gas, run_until_final, token_balance
from tests.withdrawals.support import open_bank
from web.security import hash_secret

COLD = "0x00000000000000000000000000000000000c01D0"  # EIP-55


@pytest.fixture
def cold_bank(node, mysql_url, redis_prefix):
    bank = open_bank(node, mysql_url, redis_prefix, hot_cap=(("ETH", 3 * ETH), (TOKEN, 3_000_000)),
                     hot_target=(("ETH", 2 * ETH), (TOKEN, 1_000_000)), cold_address=COLD)
    yield bank
    bank.stop()


def test_surplus_above_the_cap_goes_cold_down_to_the_target(cold_bank):
    bank = cold_bank
    bank.fund_hot_wallet(eth=5 * ETH, tokens=5_000_000)
    hot_eth0 = bank.chain_balance(bank.hot)
    run_until_final(bank)

    moves = {s.asset: s for s in Sweep.select().where(Sweep.kind == "cold")}
    assert set(moves) == {"ETH", TOKEN} and {s.status for s in moves.values()} == {"confirmed"}
    assert token_balance(bank.node.url, bank.wallet.token, COLD) == 4_000_000 == moves[TOKEN].amount
    assert bank.chain_balance(bank.hot, TOKEN) == 1_000_000  # exactly the target
    assert eth_balance(bank.node.url, COLD) == moves["ETH"].amount
    hot_eth = bank.chain_balance(bank.hot)
    assert 2 * ETH <= hot_eth < 3 * ETH  # never below the target: the move kept its own gas
    burnt = receipt_gas(bank, moves["ETH"].tx_hash) + receipt_gas(bank, moves[TOKEN].tx_hash)
    assert hot_eth == hot_eth0 - moves["ETH"].amount - burnt

    # under the cap now: nothing moves again
    bank.sign()
    assert Sweep.select().where(Sweep.kind == "cold").count() == 2

    # paused apart from withdrawals: a surplus waits
    assert bank.admin("POST", "/cold/pause", as_="otto").json == {"cold_paused": True, "changed": True}
    bank.fund_hot_wallet(tokens=5_000_000)
    bank.sign()
    assert Sweep.select().where(Sweep.kind == "cold").count() == 2
    bank.admin("POST", "/cold/resume", as_="otto")
    run_until_final(bank)
    assert bank.chain_balance(bank.hot, TOKEN) == 1_000_000
    assert token_balance(bank.node.url, bank.wallet.token, COLD) == 9_000_000


def test_no_cold_address_no_move_and_a_low_alert(node, mysql_url, redis_prefix, caplog):
    bank = open_bank(node, mysql_url, redis_prefix, hot_low=(("ETH", 1000 * ETH), (TOKEN, 1)))
    try:
        bank.fund_hot_wallet(eth=50 * ETH, tokens=10**12)
        with caplog.at_level(logging.WARNING, logger="treasury.sweeps"):
            stats = bank.sign()
        assert Sweep.select().count() == 0
        assert stats.hot_low == ("ETH",)
        assert any("below its low mark" in r.getMessage() for r in caplog.records)
        text = bank.wallet.api.ops.get("/metrics").get_data(as_text=True)
        assert 'wallet_hot_wallet_low{asset="ETH"} 1.0' in text and 'wallet_hot_wallet_low{asset="TKN"}' not in text
        page = console_page(bank, "/admin/treasury")  # and a line on the console asks for a refill
        assert 'id="hot-low-ETH"' in page and "refill it" in page and 'id="hot-low-TKN"' not in page
    finally:
        bank.stop()


@pytest.mark.parametrize("env, message", [
    ({"WALLET_COLD_ADDRESS": COLD.lower()}, "checksummed"),
    ({"WALLET_COLD_ADDRESS": COLD.upper().replace("0X", "0x")}, "checksummed"),
    ({"WALLET_COLD_ADDRESS": "0x1234"}, "checksummed"),
    ({"WALLET_COLD_ADDRESS": "cold-wallet"}, "checksummed"),
    ({"WALLET_HOT_CAP": "ETH:100"}, "WALLET_COLD_ADDRESS is not"),
    ({"WALLET_HOT_CAP": "ETH:100", "WALLET_HOT_TARGET": "ETH:101", "WALLET_COLD_ADDRESS": COLD}, "above its"),
    ({"WALLET_HOT_TARGET": "ETH:1", "WALLET_COLD_ADDRESS": COLD}, "no WALLET_HOT_CAP"),
    ({"WALLET_SWEEP_MIN": "ETH:-1"}, "SYMBOL:base_units"),
])
def test_bad_treasury_settings_are_refused_at_start(env, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_env(env)


def test_the_signer_refuses_to_start_with_a_bad_cold_address(node, mysql_url, redis_prefix, caplog):
    """A Config built in code (not from the environment) is checked again where it is used."""
    with pytest.raises(Exception, match="signer failed to start"):
        open_bank(node, mysql_url, redis_prefix, hot_cap=(("ETH", ETH),), cold_address=COLD.lower())
    assert "WALLET_COLD_ADDRESS must be an EIP-55 checksummed address" in caplog.text


def test_good_treasury_settings_are_read():
    config = Config.from_env({"WALLET_HOT_CAP": "ETH:100,TKN:5", "WALLET_HOT_TARGET": "ETH:60",
                              "WALLET_COLD_ADDRESS": COLD, "WALLET_SWEEP_MIN": "ETH:7", "WALLET_HOT_LOW": "TKN:2"})
    assert config.per_asset("hot_cap") == {"ETH": 100, "TKN": 5} and config.cold_address == COLD
    assert config.per_asset("sweep_min") == {"ETH": 7} and config.per_asset("hot_low") == {"TKN": 2}


def console_page(bank, path: str) -> str:
    """A console page as an auditor logged in with password and TOTP sees it (Flask's test client)."""
    created = admins.create_admin("aud", "auditor", hash_secret(STAFF_PASSWORD), bank.wallet.system.config.key_ring())
    client = bank.wallet.api.client
    token = csrf_of(client.get("/admin/login").get_data(as_text=True))
    answer = client.post("/admin/login", data={"csrf_token": token, "name": "aud", "password": STAFF_PASSWORD,
                                               "code": pyotp.TOTP(created.totp_secret).now()})
    assert answer.status_code == 302, answer.get_data(as_text=True)
    page = client.get(path)
    assert page.status_code == 200
    return page.get_data(as_text=True)
