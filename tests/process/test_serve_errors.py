"""`wallet serve` refuses to start with a clear message, not a traceback, when it cannot run safely."""

from click.testing import CliRunner

from tests.conftest import make_config
from tests.helpers import start_system
from app.cli import main

KEY = "11" * 32


def test_serve_with_an_unreachable_database_exits_1_with_a_message():
    env = {"WALLET_MASTER_KEY": KEY, "WALLET_DATABASE_URL": "mysql://root:@127.0.0.1:1/nowhere"}
    result = CliRunner().invoke(main, ["serve"], env=env)
    assert result.exit_code == 1
    assert "cannot reach the database or Redis" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_a_database_another_system_is_running_on(mysql_url):
    running = start_system(make_config(mysql_url, shards=1), pool=1)
    try:
        env = {"WALLET_MASTER_KEY": KEY, "WALLET_DATABASE_URL": mysql_url, "WALLET_SHARDS": "1",
               "WALLET_HTTP": "127.0.0.1:0"}
        result = CliRunner().invoke(main, ["serve"], env=env)
        assert result.exit_code == 1
        assert "another wallet process is running" in result.output
    finally:
        running.stop()
