"""Every secret under the key ring, and in rotation (storage/sealed_secrets.py, storage/rotation.py): staff TOTP
secrets, users' TOTP factors and webhook signing secrets are sealed (the database holds no plaintext), `wallet keys
rotate` re-encrypts each under the new master key so that each opens under it alone once the old key is dropped,
a second rotation changes nothing, a missing or wrong old key refuses before anything is written, and the
service refuses to start on a ring lacking a version in use. On MariaDB and SQLite."""

from __future__ import annotations

import pyotp
import pytest
from cryptography.exceptions import InvalidTag

from app.system import ActorSystem
from core.errors import ConfigError
from core.keys import KeyRing
from storage import admins
from storage.rotation import key_versions, require_ring, rotate_keys
from storage.sealed_secrets import STAFF_TOTP, USER_TOTP, WEBHOOK, secret_column
from storage.webhooks import Dispatcher, WebhookEndpoint, add_endpoint, delivery_log, open_secret
from tests.conftest import MASTER_KEY, make_config
from tests.core.test_webhooks import Receiver, drain, post, record
from tests.helpers import FakeClock
from tests.web.conftest import start_api
from web.models import TotpFactor
from web.security import hash_secret
from web.totp import STEP_S, check_code

K2 = bytes.fromhex("5a" * 32)
K3 = bytes.fromhex("3c" * 32)
RING1 = KeyRing.single(MASTER_KEY)
RING12 = KeyRing({1: MASTER_KEY, 2: K2})  # during the rotation: the new key current, the old one retired
RING2 = KeyRing.single(K2, version=2)  # after it: the old key dropped
LEGACY_SECRET = "whsec_" + "0123456789abcdef" * 3  # a plaintext row from before migration 0033
START_MS = 1_800_000_000_000


def raw_rows(db, table: str, columns: str) -> list[tuple]:
    return [tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v for v in row)
            for row in db.execute_sql(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall()]


def every_secret_row(db) -> list[tuple]:
    return (raw_rows(db, "admin_user", "id, totp_secret, totp_key_version")
            + raw_rows(db, "web_totp", "account_id, ciphertext, key_version")
            + raw_rows(db, "webhook_endpoint", "id, secret, secret_sealed, secret_key_version"))


def insert_legacy_endpoint(db, url: str) -> int:
    """A row as migration 0032 wrote it: the secret in plaintext."""
    db.execute_sql(f"INSERT INTO webhook_endpoint (url, secret, created_at) VALUES ({db.param}, {db.param}, 1)",
                   [url, LEGACY_SECRET])
    return WebhookEndpoint.select().order_by(WebhookEndpoint.id.desc()).get().id


def one_of_each(db) -> dict[str, str]:
    """A staff member with a console login, a user's TOTP factor, a sealed webhook secret and a legacy plaintext
    one, all under version 1; returns the plaintexts."""
    staff = admins.create_admin("olga", "operator", password_hash=hash_secret("olga's password"), ring=RING1)
    user_secret = pyotp.random_base32(32)
    sealed, version = secret_column(USER_TOTP).seal(RING1, user_secret, (7,))
    TotpFactor.insert(account_id=7, ciphertext=sealed, key_version=version, created_at=1, confirmed_at=1,
                      last_step=0).execute()
    _, hook_secret = add_endpoint("http://127.0.0.1:9/sealed", RING1)
    insert_legacy_endpoint(db, "http://127.0.0.1:9/legacy")
    return {"staff": staff.totp_secret, "user": user_secret, "hook": hook_secret, "legacy": LEGACY_SECRET}


def opened_under(ring: KeyRing) -> dict[str, str]:
    staff = admins.AdminUser.get(admins.AdminUser.name == "olga")
    factor = TotpFactor.get(TotpFactor.account_id == 7)
    hooks = [open_secret(ring, e.id, e.url, e.secret_sealed, e.secret_key_version, e.secret)
             for e in WebhookEndpoint.select().order_by(WebhookEndpoint.id)]
    return {"staff": admins.totp_secret(staff, ring),
            "user": secret_column(USER_TOTP).open(ring, factor.ciphertext, factor.key_version, (7,)),
            "hook": hooks[0], "legacy": hooks[1]}


def test_rotation_reencrypts_every_secret_and_each_opens_under_the_new_key_alone(migrated_db):
    db = migrated_db
    plain = one_of_each(db)
    assert key_versions(RING12).secrets == {STAFF_TOTP: {1: 1}, USER_TOTP: {1: 1}, WEBHOOK: {1: 1, None: 1}}
    assert key_versions(RING12).pending == 4
    with pytest.raises(ConfigError, match=r"versions \[1\]"):
        require_ring(RING2)  # what the service's start checks: it would refuse this ring now

    report = rotate_keys(db, RING12, chunk=1)

    assert report.secrets == {STAFF_TOTP: 1, USER_TOTP: 1, WEBHOOK: 2} and report.skipped == 0
    assert key_versions(RING2).secrets == {STAFF_TOTP: {2: 1}, USER_TOTP: {2: 1}, WEBHOOK: {2: 2}}
    assert key_versions(RING2).pending == 0 and key_versions(RING2).versions_in_use() == {2}
    require_ring(RING2)  # the old key may go
    assert opened_under(RING2) == plain  # the same secrets, under the new key alone
    with pytest.raises(KeyError, match="version 2 is not in the ring"):
        opened_under(RING1)
    # At rest: no plaintext anywhere, the legacy column cleared.
    rows = every_secret_row(db)
    for secret in plain.values():
        assert not any(secret.encode() in value for row in rows for value in row if isinstance(value, bytes))
        assert not any(value == secret for row in rows for value in row)
    assert [row[1] for row in raw_rows(db, "webhook_endpoint", "id, secret")] == [None, None]

    again = rotate_keys(db, RING12)
    assert again.changed == 0 and again.secrets == {STAFF_TOTP: 0, USER_TOTP: 0, WEBHOOK: 0}
    assert every_secret_row(db) == rows  # not one byte rewritten


def test_a_missing_or_wrong_old_key_refuses_before_anything_is_written(migrated_db):
    db = migrated_db
    one_of_each(db)
    before = every_secret_row(db)
    with pytest.raises(ConfigError, match=r"versions \[1\] that the ring lacks"):
        rotate_keys(db, RING2)
    with pytest.raises(ConfigError, match="does not open"):
        rotate_keys(db, KeyRing({1: K3, 2: K2}))  # a wrong key given for version 1
    assert every_secret_row(db) == before


def test_a_secret_moved_to_another_row_does_not_open_and_one_replaced_meanwhile_is_not_overwritten(migrated_db):
    db = migrated_db
    first, _ = add_endpoint("http://127.0.0.1:9/a", RING1)
    second, _ = add_endpoint("http://127.0.0.1:9/b", RING1)
    a, b = WebhookEndpoint.get_by_id(first), WebhookEndpoint.get_by_id(second)
    with pytest.raises(InvalidTag):
        open_secret(RING1, b.id, b.url, a.secret_sealed, a.secret_key_version, None)
    # A rotation that read endpoint a, then finds its row re-sealed by someone else: its UPDATE matches nothing.
    stale = bytes(a.secret_sealed)
    WebhookEndpoint.update(secret_sealed=secret_column(WEBHOOK).seal(RING1, "whsec_new", (a.id, a.url))[0]).where(
        WebhookEndpoint.id == a.id).execute()
    from storage.rotation import _rotate_secret_row
    assert _rotate_secret_row(db, RING12, secret_column(WEBHOOK), a.id, stale, 1, None, (a.id, a.url)) == 0
    assert open_secret(RING1, a.id, a.url, WebhookEndpoint.get_by_id(a.id).secret_sealed, 1, None) == "whsec_new"


def test_deliveries_after_a_rotation_are_signed_with_the_same_secret(migrated_db):
    db = migrated_db
    receiver = Receiver()
    clock = FakeClock(START_MS)
    try:
        _, receiver.secret = add_endpoint(receiver.url, RING1)
        running = Dispatcher(db, post, clock_ms=clock, ring=RING12)  # the service while the rotation runs
        record(db, "deposit.seen", 1, n=0)
        drain(running)
        assert rotate_keys(db, RING12).secrets[WEBHOOK] == 1
        record(db, "deposit.seen", 1, n=1)
        drain(running)  # online: it goes on signing across the rotation
        restarted = Dispatcher(db, post, clock_ms=clock, ring=RING2)  # restarted with the old key dropped
        record(db, "deposit.seen", 1, n=2)
        drain(restarted)
        stale = Dispatcher(db, post, clock_ms=clock, ring=RING1)  # a process given only the old key
        record(db, "deposit.seen", 1, n=3)
        drain(stale, rounds=1)
        assert [event["data"]["n"] for event in receiver.received] == [0, 1, 2]
        assert receiver.requests == 3 and receiver.bad_signatures == 0  # nothing sent unsigned or misigned
        (waiting,) = delivery_log(1)  # n=3 waits for a process that can open the secret
        assert waiting.status == "pending" and "signing secret does not open" in waiting.last_error
        assert receiver.secret not in waiting.last_error
        for dispatcher in (running, restarted, stale):
            dispatcher.close()
    finally:
        receiver.close()


@pytest.fixture(params=["mysql", "sqlite"])
def any_service_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wallet.sqlite3'}"
    return request.getfixturevalue("mysql_url")


def test_staff_and_user_totp_still_work_after_a_rotation_and_the_start_refuses_a_ring_missing_a_version(
        any_service_url, tmp_path):
    from storage.db import connect_database, migrate
    from tests.web.conftest import PAY_PASSWORD
    from web.console.auth import check_login

    url = any_service_url
    db = connect_database(url)
    migrate(db)
    legacy_id = insert_legacy_endpoint(db, "http://127.0.0.1:9/legacy")
    config1 = make_config(url)
    system, api = start_api(config1)  # its start seals the plaintext secret
    try:
        legacy = WebhookEndpoint.get_by_id(legacy_id)
        assert legacy.secret is None and legacy.secret_key_version == 1
        assert open_secret(RING1, legacy.id, legacy.url, legacy.secret_sealed, 1, None) == LEGACY_SECRET
        alice = api.user("alice")
        user_secret = api.client.post("/api/v1/me/totp", headers=alice.auth,
                                      json={"pay_password": PAY_PASSWORD}).json["secret"]
        totp = pyotp.TOTP(user_secret, interval=STEP_S)
        step = START_MS // 1000 // STEP_S  # the checks take the test's clock
        with api.app.test_request_context("/"):
            check_code(alice.account_id, totp.generate_otp(step), clock_ms=lambda: START_MS, confirmed=False)
        TotpFactor.update(confirmed_at=START_MS).where(TotpFactor.account_id == alice.account_id).execute()
        staff = admins.create_admin("olga", "operator", password_hash=hash_secret("olga's password"), ring=RING1)
    finally:
        system.stop()

    config2 = make_config(url, master_key=K2, master_key_version=2)
    with pytest.raises(ConfigError, match=r"versions \[1\]"):
        ActorSystem(config2).start()  # nothing rotated yet: refused at start
    assert rotate_keys(db, RING12).changed > 0
    db.close()

    system, api = start_api(config2)  # the old key dropped
    try:
        console_state = api.app.extensions["console"]
        console_state.clock = lambda: START_MS + 60_000
        staff_code = pyotp.TOTP(staff.totp_secret).at(START_MS // 1000 + 60)
        with api.app.test_request_context("/admin/login", environ_base={"REMOTE_ADDR": "127.0.0.1"}):
            assert check_login("olga", "olga's password", "000000" if staff_code != "000000" else "111111") is None
            assert check_login("olga", "olga's password", staff_code).name == "olga"
        with api.app.test_request_context("/", environ_base={"REMOTE_ADDR": "127.0.0.1"}):
            check_code(alice.account_id, totp.generate_otp(step + 1), clock_ms=lambda: START_MS + 30_000)
        assert TotpFactor.get_by_id(alice.account_id).key_version == 2
    finally:
        system.stop()


def test_the_reserves_salt_secret_is_rewrapped_and_the_same_secret_opens_under_the_new_key(migrated_db):
    """The proof-of-reserves salts' key (treasury/reserves.py) is an envelope like the wallet keys: a rotation
    re-wraps its data key (the ciphertext stays), it opens under the new key alone, and proofs keep their salts."""
    from storage.models import ReserveSecret
    from treasury.reserves import salt_secret

    db = migrated_db
    secret = salt_secret(db, RING1)
    before = ReserveSecret.get_by_id(1)
    assert key_versions(RING12).wallet == {1: 1} and key_versions(RING12).pending == 1
    with pytest.raises(ConfigError, match=r"versions \[1\]"):
        require_ring(RING2)

    report = rotate_keys(db, RING12)

    after = ReserveSecret.get_by_id(1)
    assert report.wallet_rewrapped == 1 and after.master_version == 2
    assert bytes(after.ciphertext) == bytes(before.ciphertext)
    assert bytes(after.wrapped_data_key) != bytes(before.wrapped_data_key)
    require_ring(RING2)
    assert salt_secret(db, RING2) == secret
    with pytest.raises(KeyError):
        salt_secret(db, RING1)
    assert rotate_keys(db, RING12).changed == 0
