"""The operator commands as processes: `wallet admin create`, `wallet demo --check`, and every --help."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from core.keys import KeyRing
from storage.admins import totp_secret
from storage.db import connect_database
from storage.models import AdminUser
from storage.stafflog import StaffAction
from tests.conftest import MASTER_KEY, make_config
from tests.process.support import WALLET, wallet_env
from web.security import verify_secret

DEMO_CHECK_TIMEOUT_S = 180


def wallet(*args: str, env: dict[str, str] | None = None, cwd=None, timeout: float = 60,
           input: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([WALLET, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          input=input)


def test_admin_create_prints_a_token_once_and_stores_only_its_hash(mysql_url):
    env = wallet_env(make_config(mysql_url))
    created = wallet("admin", "create", "rita", "--role", "reviewer", "--password-stdin", env=env,
                     input="rita's long password\n")
    assert created.returncode == 0, created.stderr
    secret_line, uri, token = created.stdout.strip().splitlines()
    assert token.startswith("wadm_") and len(token) > 40
    assert token not in created.stderr  # the logs (stderr) never carry it
    secret = secret_line.removeprefix("totp_secret: ")
    assert len(secret) == 32 and uri.startswith("otpauth://totp/") and f"secret={secret}" in uri
    assert "issuer=wallet%20console" in uri and secret not in created.stderr

    connect_database(mysql_url)
    row = AdminUser.get(AdminUser.name == "rita")
    assert (row.role, row.token_hash) == ("reviewer", hashlib.sha256(token.encode()).hexdigest())
    assert verify_secret(row.password_hash, "rita's long password")
    assert secret.encode() not in bytes(row.totp_secret)  # sealed under the master key
    assert totp_secret(row, KeyRing.single(MASTER_KEY)) == secret
    assert [(a.action, a.admin_name) for a in StaffAction.select()] == [("admin.create", "cli")]

    again = wallet("admin", "create", "rita", "--role", "auditor", "--password-stdin", env=env,
                   input="another long password\n")
    assert again.returncode == 1 and "exists" in again.stderr
    bad_role = wallet("admin", "create", "sam", "--role", "boss", env=env)
    assert bad_role.returncode == 2 and "reviewer" in bad_role.stderr
    short = wallet("admin", "create", "sam", "--role", "auditor", "--password-stdin", env=env, input="short\n")
    assert short.returncode == 1 and "12-128 characters" in short.stderr
    assert AdminUser.select().count() == 1


def test_admin_reset_totp_replaces_the_secret_once(mysql_url):
    env = wallet_env(make_config(mysql_url))
    created = wallet("admin", "create", "olga", "--role", "operator", "--password-stdin", env=env,
                     input="olga's long password\n")
    assert created.returncode == 0, created.stderr
    old_secret = created.stdout.splitlines()[0].removeprefix("totp_secret: ")
    reset = wallet("admin", "reset-totp", "olga", env=env)
    assert reset.returncode == 0, reset.stderr
    secret_line, uri = reset.stdout.strip().splitlines()
    new_secret = secret_line.removeprefix("totp_secret: ")
    assert new_secret != old_secret and f"secret={new_secret}" in uri
    connect_database(mysql_url)
    assert totp_secret(AdminUser.get(AdminUser.name == "olga"), KeyRing.single(MASTER_KEY)) == new_secret
    assert [a.action for a in StaffAction.select().order_by(StaffAction.id)] == ["admin.create", "admin.reset_totp"]
    unknown = wallet("admin", "reset-totp", "nobody", env=env)
    assert unknown.returncode == 1 and "no admin named" in unknown.stderr


@pytest.mark.parametrize("command", [(), ("serve",), ("demo",), ("admin",), ("admin", "create"),
                                     ("admin", "reset-totp"), ("pool",), ("init",), ("audit",), ("keys",),
                                     ("keys", "rotate"), ("keys", "status"), ("webhooks",),
                                     ("webhooks", "add"), ("webhooks", "deliveries"), ("reconcile",), ("reserves",),
                                     ("reserves", "snapshot"), ("verify-proof",)])
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
    # the console's URL and the demo reviewer's credentials, then their use: log in and approve in the queue
    assert "/admin" in result.stdout and "staff name demo-reviewer, password demo-reviewer-password" in result.stdout
    assert "TOTP secret " in result.stdout and "otpauth://totp/" in result.stdout
    assert "ok   console: the demo reviewer logs in (password + TOTP) and approves carol's withdrawal" in result.stdout
    assert not any((tmp_path / "var" / "demo").iterdir())  # a passing run leaves nothing behind


def test_webhooks_add_list_deliveries_disable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    env["WALLET_DATABASE_URL"] = f"sqlite:///{tmp_path / 'wallet.sqlite3'}"
    unsealable = wallet("webhooks", "add", "http://127.0.0.1:9/hook", env=env)  # no key to seal its secret under
    assert unsealable.returncode != 0 and "WALLET_MASTER_KEY" in unsealable.stderr
    env["WALLET_MASTER_KEY"] = MASTER_KEY.hex()
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


def test_keys_rotate_and_status_cover_staff_totp_and_webhook_secrets(mysql_url):
    """The commands as processes on MariaDB: status counts each kind per version, rotate re-encrypts them all
    (a second run changes nothing), and afterwards each opens under the new key alone."""
    from storage.sealed_secrets import STAFF_TOTP, WEBHOOK
    from storage.webhooks import WebhookEndpoint, open_secret

    env = wallet_env(make_config(mysql_url))
    assert wallet("init", "--pool", "2", env=env).returncode == 0
    created = wallet("admin", "create", "rita", "--role", "reviewer", "--password-stdin", env=env,
                     input="rita's long password\n")
    staff_secret = created.stdout.strip().splitlines()[0].removeprefix("totp_secret: ")
    hook_secret = wallet("webhooks", "add", "http://127.0.0.1:9/hook", env=env).stdout.strip().splitlines()[-1]
    new_key = "5a" * 32
    rotating = {**env, "WALLET_MASTER_KEY": f"2:{new_key}", "WALLET_MASTER_KEYS_RETIRED": f"1:{MASTER_KEY.hex()}"}
    status = json.loads(wallet("keys", "status", env=rotating).stdout)
    assert status["secrets"] == {STAFF_TOTP: {"1": 1}, "user_totp": {}, WEBHOOK: {"1": 1}}
    assert status["pending"] == 2 + 2 + 2  # pool, hot and gas, the two secrets
    refused = wallet("keys", "rotate", env={**env, "WALLET_MASTER_KEY": f"2:{new_key}"})  # old key not given
    assert refused.returncode == 1 and "versions [1] that the ring lacks" in refused.stderr

    rotated = wallet("keys", "rotate", env=rotating)
    assert rotated.returncode == 0, rotated.stderr
    report = json.loads(rotated.stdout.strip().splitlines()[-1])
    assert report["secrets_reencrypted"] == {STAFF_TOTP: 1, "user_totp": 0, WEBHOOK: 1} and report["pending"] == 0
    again = json.loads(wallet("keys", "rotate", env=rotating).stdout.strip().splitlines()[-1])
    assert again["secrets_reencrypted"] == {STAFF_TOTP: 0, "user_totp": 0, WEBHOOK: 0} and again["pool_rewrapped"] == 0
    after = json.loads(wallet("keys", "status", env={**env, "WALLET_MASTER_KEY": f"2:{new_key}"}).stdout)
    assert after["secrets"] == {STAFF_TOTP: {"2": 1}, "user_totp": {}, WEBHOOK: {"2": 1}}
    assert after["pending"] == 0 and after["missing_from_ring"] == []

    connect_database(mysql_url)
    new_ring = KeyRing.single(bytes.fromhex(new_key), version=2)
    assert totp_secret(AdminUser.get(AdminUser.name == "rita"), new_ring) == staff_secret
    (endpoint,) = WebhookEndpoint.select()
    assert endpoint.secret is None and hook_secret.encode() not in bytes(endpoint.secret_sealed)
    assert open_secret(new_ring, endpoint.id, endpoint.url, endpoint.secret_sealed, endpoint.secret_key_version,
                       None) == hook_secret
