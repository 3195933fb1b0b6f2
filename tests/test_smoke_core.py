from tests.conftest import make_config
from tests.helpers import fund, register, start_system, wait_until
from app.audit import run_audit


def test_register_fund_transfer_same_and_cross_shard(any_db_url):
    system = start_system(make_config(any_db_url))
    try:
        alice, bob = register(system, "alice"), register(system, "bob")
        assert alice.shard != bob.shard  # fewest-accounts placement spreads them
        fund(system, alice.account_id, 1000)
        result = system.router.transfer("t1", alice.account_id, bob.account_id, "ETH", 300)
        assert result.status == "in_transit"
        again = system.router.transfer("t1", alice.account_id, bob.account_id, "ETH", 300)
        assert again.replayed and again.status == "in_transit"
        assert system.router.balances(alice.account_id)["ETH"] == (700, 0)
        wait_until(lambda: system.router.balances(bob.account_id)["ETH"] == (300, 0), timeout_s=10,
                   what="bob's cross-shard credit of 300")
    finally:
        system.stop()
    from storage.db import connect_database
    connect_database(any_db_url)
    report = run_audit()
    assert report.ok, report.violations
