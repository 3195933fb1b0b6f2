"""Issue 9, finding 5: refused money requests are limited per account and logged as one line each.

Before the fix a zero-balance user sent 8,000 refused transfers in 25 s: each added a refusal record for
good (and an entry held in memory), and a pykka traceback to the log. Now refusals count against
`refused:account` (20 per 900 s): over it the request is answered 429 before the shard is asked, and
nothing is recorded; records expire with WALLET_IDEMPOTENCY_RETENTION_S (tests/web/test_idempotency_retention.py).
A refusal is one access-log line carrying its code, with no traceback anywhere.
"""

from __future__ import annotations

import logging

from web.models import IdempotencyFailure

EXTRA = 15


def test_refused_transfers_are_limited_per_account_and_logged_once_without_a_traceback(any_api, caplog):
    broke = any_api.user("broke")
    any_api.user("bob", login=False)
    rich = any_api.user("rich", funds=100)
    limit = any_api.front.limits.refused_account.max_failures
    caplog.set_level(logging.INFO)
    caplog.clear()

    codes = [any_api.transfer(broke, "bob", "1").json["code"] for _ in range(limit + EXTRA)]

    assert codes == ["insufficient_funds"] * limit + ["rate_limited"] * EXTRA
    assert IdempotencyFailure.select().where(IdempotencyFailure.account_id == broke.account_id).count() == limit
    assert len(any_api.front.refusals) == limit
    # Another account is not affected by this one's refusals.
    assert any_api.transfer(rich, "bob", "1").status_code == 201

    assert not [r for r in caplog.records if r.exc_info], "a refusal must never log a traceback"
    requests = [r for r in caplog.records if r.name == "web.access"]
    assert [getattr(r, "code", None) for r in requests] == codes + [None]
    assert all(getattr(r, "client", None) == "127.0.0.1" for r in requests)
    others = [r for r in caplog.records if r.name != "web.access" and r.levelno >= logging.INFO]
    assert others == [], [(r.name, r.getMessage()) for r in others]

