"""Cluster gates share a database but not their caches: a session revoked, or a pay password changed, at one
gate holds at another within FRONT_RECHECK_MS (the caches are checked against the database again), while a
single front (`--role all`, recheck None) trusts its own cache, which it keeps current itself."""

from __future__ import annotations

import pytest

from core.limits import FRONT_RECHECK_MS
from storage.models import Account
from web.errors import InvalidToken
from web import security
from web.security import PayPasswordMemo, Sessions


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


def _account(name: str, pay_hash: str) -> int:
    return Account.insert(username=name, kind="user", shard=0, pay_password_hash=pay_hash).execute()


def _gate(clock: FakeClock, recheck_ms: int | None = FRONT_RECHECK_MS, ages: FakeClock | None = None) -> Sessions:
    """One front's session cache: a cluster gate (recheck) or a single front (None)."""
    return Sessions(3600, recheck_ms, clock, ages or clock)


def _session_of(name: str, pay_hash: str, clock: FakeClock):  # noqa: ANN202 - (token, Session)
    """A new account's session, created (and cached) at a front of its own, not the one under test."""
    return _gate(clock, None).create(_account(name, pay_hash))


def test_a_session_revoked_at_one_gate_is_refused_at_another_within_the_bound(migrated_db):
    clock = FakeClock()
    gate_a, gate_b = _gate(clock), _gate(clock)
    token, session = gate_a.create(_account("alice", "h1"))
    assert gate_b.resolve(f"Bearer {token}") == session  # cached at B from here on
    gate_a.revoke(session)
    clock.ms += FRONT_RECHECK_MS - 1
    assert gate_b.resolve(f"Bearer {token}") == session  # within the bound, B's cache still answers
    clock.ms += 1
    with pytest.raises(InvalidToken):
        gate_b.resolve(f"Bearer {token}")
    with pytest.raises(InvalidToken):  # and stays refused (the stale entry is gone)
        gate_b.resolve(f"Bearer {token}")


def test_a_live_session_is_rechecked_and_kept(migrated_db):
    clock = FakeClock()
    gate_a, gate_b = _gate(clock), _gate(clock)
    token, session = gate_a.create(_account("bob", "h1"))
    for _ in range(3):
        assert gate_b.resolve(f"Bearer {token}") == session
        clock.ms += FRONT_RECHECK_MS


def test_a_single_front_trusts_its_own_cache(migrated_db):
    """Without recheck (one front), only this process revokes, and it forgets what it revokes."""
    clock = FakeClock()
    sessions = _gate(clock, None)
    token, session = sessions.create(_account("carol", "h1"))
    other = _gate(clock, None)
    other.resolve(f"Bearer {token}")
    sessions.revoke(session)
    clock.ms += 10 * FRONT_RECHECK_MS
    assert other.resolve(f"Bearer {token}") == session  # why cluster gates need the recheck
    with pytest.raises(InvalidToken):
        sessions.resolve(f"Bearer {token}")


def test_a_pay_password_changed_at_another_gate_ends_the_memo_within_the_bound(migrated_db):
    clock = FakeClock()
    account_id = _account("dave", "hash-of-old")
    session = _gate(clock).create(account_id)[1]
    memo = PayPasswordMemo(FRONT_RECHECK_MS, clock, clock)
    reads = []

    def stored() -> str | None:
        reads.append(1)
        return Account.get_by_id(account_id).pay_password_hash

    memo.remember(session, "old-pay", stored(), memo.generation())
    reads.clear()
    assert not memo.matches(session, "wrong-pay", stored)
    assert memo.matches(session, "old-pay", stored) and reads == []  # within the bound: no database read
    clock.ms += FRONT_RECHECK_MS
    assert memo.matches(session, "old-pay", stored) and reads == [1]  # unchanged hash: kept, no argon2
    Account.update(pay_password_hash="hash-of-new").where(Account.id == account_id).execute()  # another gate
    clock.ms += FRONT_RECHECK_MS - 1
    assert memo.matches(session, "old-pay", stored)
    clock.ms += 1
    assert not memo.matches(session, "old-pay", stored)
    assert not memo.matches(session, "old-pay", lambda: "hash-of-old")  # forgotten: argon2 decides again


def test_a_single_front_memo_never_reads_the_database(migrated_db):
    clock = FakeClock()
    session = _session_of("erin", "h", clock)[1]
    memo = PayPasswordMemo(None, clock, clock)
    memo.remember(session, "pay", "h", memo.generation())
    clock.ms += 100 * FRONT_RECHECK_MS

    def never() -> str:
        raise AssertionError("a single front's memo read the stored hash")

    assert memo.matches(session, "pay", never)


def test_a_wall_clock_stepped_back_does_not_make_cached_entries_young(migrated_db):
    """Ages are on their own (monotonic) clock: a wall clock set back an hour changes nothing."""
    wall, ages = FakeClock(), FakeClock()
    gate_a, gate_b = _gate(wall, ages=ages), _gate(wall, ages=ages)
    token, session = gate_a.create(_account("frank", "h1"))
    gate_b.resolve(f"Bearer {token}")
    gate_a.revoke(session)
    wall.ms -= 3_600_000
    ages.ms += FRONT_RECHECK_MS
    with pytest.raises(InvalidToken):
        gate_b.resolve(f"Bearer {token}")


def test_a_memo_forgotten_while_it_is_rechecked_stays_forgotten(migrated_db):
    """A change at this gate (forget) between the recheck's read and its write-back wins."""
    clock = FakeClock()
    session = _session_of("gina", "h", clock)[1]
    memo = PayPasswordMemo(FRONT_RECHECK_MS, clock, clock)
    memo.remember(session, "pay", "h", memo.generation())
    clock.ms += FRONT_RECHECK_MS

    def stored_then_forgotten() -> str:
        memo.forget(session)  # e.g. this gate's pay-password change, committed during the read
        return "h"

    assert memo.matches(session, "pay", stored_then_forgotten)  # this request was proved before the change
    assert not memo.matches(session, "pay", lambda: "h")


def test_a_revocation_during_a_session_read_is_not_undone_by_caching_it(migrated_db, monkeypatch):
    """Logout (or a password change's revocations) at this very front while another request of the same
    token reads its row: that request may pass, but the session is not cached, so the next one is refused."""
    clock = FakeClock()
    token, session = _session_of("hana", "h", clock)
    front = _gate(clock, None)  # this front has not cached it yet
    real_query_one = security.sql.query_one

    def read_then_logged_out(db, template, params):  # noqa: ANN001, ANN202
        row = real_query_one(db, template, params)
        front.revoke(session)  # lands between the read and the cache write
        return row

    monkeypatch.setattr(security.sql, "query_one", read_then_logged_out)
    assert front.resolve(f"Bearer {token}") == session
    monkeypatch.setattr(security.sql, "query_one", real_query_one)
    with pytest.raises(InvalidToken):
        front.resolve(f"Bearer {token}")


def test_a_forget_during_a_proof_is_not_undone_by_remembering_it(migrated_db):
    """A pay-password change (or logout) at this front during another request's argon2 verify."""
    clock = FakeClock()
    session = _session_of("ivan", "old-hash", clock)[1]
    memo = PayPasswordMemo(None, clock, clock)
    generation = memo.generation()  # the proving request reads the stored hash after this
    memo.forget(session)  # the change lands while it verifies
    memo.remember(session, "old-pay", "old-hash", generation)
    assert not memo.matches(session, "old-pay", lambda: "old-hash")
    memo.remember(session, "new-pay", "new-hash", memo.generation())
    assert memo.matches(session, "new-pay", lambda: "new-hash")
