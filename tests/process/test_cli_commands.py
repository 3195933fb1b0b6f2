"""The operator commands as processes: `wallet admin create`, `wallet demo --check`, and every --help."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from storage.db import connect_database
from storage.models import AdminUser
from tests.conftest import make_config
from tests.process.support import WALLET, wallet_env

DEMO_CHECK_TIMEOUT_S = 180


def wallet(*args: str, env: dict[str, str] | None = None, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([WALLET, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_admin_create_prints_a_token_once_and_stores_only_its_hash(mysql_url):
    env = wallet_env(make_config(mysql_url))
    created = wallet("admin", "create", "rita", "--role", "reviewer", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("wadm_") and len(token) > 40
    assert token not in created.stderr  # the logs (stderr) never carry it

    connect_database(mysql_url)
    row = AdminUser.get(AdminUser.name == "rita")
    assert (row.role, row.token_hash) == ("reviewer", hashlib.sha256(token.encode()).hexdigest())

    again = wallet("admin", "create", "rita", "--role", "auditor", env=env)
    assert again.returncode == 1 and "exists" in again.stderr
    bad_role = wallet("admin", "create", "sam", "--role", "boss", env=env)
    assert bad_role.returncode == 2 and "reviewer" in bad_role.stderr
    assert AdminUser.select().count() == 1


@pytest.mark.parametrize("command", [(), ("serve",), ("demo",), ("admin",), ("admin", "create"), ("pool",),
                                     ("init",), ("audit",), ("webhooks",), ("webhooks", "add"),
                                     ("webhooks", "deliveries")])
def test_every_command_explains_itself(command):
    shown = wallet(*command, "--help")
    assert shown.returncode == 0 and "Usage: wallet" in shown.stdout
    assert len(shown.stdout.split("\n\n")[1].strip()) > 20  # a description, not just a usage line


@pytest.mark.slow
def test_demo_check_runs_the_walkthrough_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}  # the demo's own defaults
    result = wallet("demo", "--check", "--block-interval", "0.5", env=env, cwd=tmp_path,
                    timeout=DEMO_CHECK_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo check passed" in result.stdout and "FAIL" not in result.stdout
    assert not any((tmp_path / "var" / "demo").iterdir())  # a passing run leaves nothing behind


def test_webhooks_add_list_deliveries_disable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    env["WALLET_DATABASE_URL"] = f"sqlite:///{tmp_path / 'wallet.sqlite3'}"
    added = wallet("webhooks", "add", "http://127.0.0.1:9/hook", env=env)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_") and len(secret) == 6 + 48
    listed = wallet("webhooks", "list", env=env)
    assert json.loads(listed.stdout)["url"] == "http://127.0.0.1:9/hook"
    assert wallet("webhooks", "deliveries", env=env).stdout == ""
    assert wallet("webhooks", "add", "ftp://nope", env=env).returncode != 0
    assert wallet("webhooks", "disable", "1", env=env).returncode == 0
    assert json.loads(wallet("webhooks", "list", env=env).stdout)["disabled"] is True
