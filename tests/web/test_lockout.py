"""Issue 9, finding 4: strangers cannot lock an owner out, and brute force is still limited.

Before the fix five wrong passwords for a username, from five addresses, made the owner's correct password
answer 429 for 900 s, again and again. Now a login returns a device token; a login presenting a device token
of that username is counted on that device alone (`login:device`), never with strangers' failures
(`login:account` per username, `login:ip` per address), which still stop guessing from anywhere else.
"""

from __future__ import annotations

from devnet.waiting import FakeClock
from core.limits import DEVICE_TOKEN_TTL_S
from tests.web.conftest import PASSWORD
from web.security import DeviceTokens


def login(api, username: str, password: str, ip: str, device_token: str | None = None):
    body = {"username": username, "password": password}
    if device_token is not None:
        body["device_token"] = device_token
    return api.client.post("/api/v1/sessions", json=body, environ_base={"REMOTE_ADDR": ip})


def test_strangers_failures_never_lock_the_owner_out_of_a_known_device(any_api):
    any_api.user("alice", login=False)
    any_api.user("bob", login=False)
    first = login(any_api, "alice", PASSWORD, "192.0.2.10")
    assert first.status_code == 200
    device = first.json["device_token"]
    limit = any_api.front.limits.login_account.max_failures

    for round_ in range(3):  # strangers keep at it from many addresses
        for n in range(limit + 2):
            wrong = login(any_api, "alice", "guess", f"203.0.113.{round_ * 20 + n}")
            assert wrong.status_code in (401, 429)
        # Brute force is still limited: the right password from a stranger's client is refused...
        assert login(any_api, "alice", PASSWORD, "203.0.113.200").status_code == 429
        # ...but the owner's known device gets in, from any address, every time.
        owner = login(any_api, "alice", PASSWORD, f"198.51.100.{round_}", device)
        assert owner.status_code == 200, owner.json
        assert owner.json["device_token"] == device

    # A token is bound to its username: bob's token does not make a stranger known to alice's account.
    bobs = login(any_api, "bob", PASSWORD, "192.0.2.20").json["device_token"]
    assert login(any_api, "alice", PASSWORD, "192.0.2.20", bobs).status_code == 429
    # A forged one neither.
    issued, nonce, mac = device.split(".")
    forged = f"{issued}.{nonce}.{'0' * 32 if mac != '0' * 32 else '1' * 32}"
    assert login(any_api, "alice", PASSWORD, "192.0.2.21", forged).status_code == 429


def test_a_known_device_has_its_own_limit(any_api):
    any_api.user("alice", login=False)
    device = login(any_api, "alice", PASSWORD, "192.0.2.10").json["device_token"]
    limit = any_api.front.limits.login_device.max_failures
    for _ in range(limit):
        assert login(any_api, "alice", "typo", "192.0.2.10", device).status_code == 401
    limited = login(any_api, "alice", PASSWORD, "192.0.2.10", device)
    assert limited.status_code == 429 and limited.json["code"] == "rate_limited"
    # The device's own guesses did not count against strangers: a new device still gets in.
    assert login(any_api, "alice", PASSWORD, "192.0.2.11").status_code == 200


def test_device_tokens_expire_and_name_their_user():
    clock = FakeClock(1_700_000_000)
    tokens = DeviceTokens(bytes(32), clock_s=clock)
    token = tokens.issue("alice")
    assert tokens.device_of(token, "alice") is not None
    assert tokens.device_of(token, "alicf") is None
    assert DeviceTokens(bytes([1]) * 32, clock_s=clock).device_of(token, "alice") is None  # another master key
    clock.advance(DEVICE_TOKEN_TTL_S)
    assert tokens.device_of(token, "alice") is not None
    clock.advance(1)
    assert tokens.device_of(token, "alice") is None
