"""The staff log's hash chain: appended in the caller's transaction, verified by `wallet audit`, broken by any
change, removal or reordering, and serialised so concurrent appenders never fork it."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json

from hypothesis import given, strategies as st

from app.audit import run_audit
from storage import stafflog
from storage.db import connect_database, migrate
from storage.stafflog import Actor, StaffAction, StaffLogHead

ALICE = Actor(7, "alice", "reviewer")


def _log(db, n: int) -> list[StaffAction]:
    rows = []
    for i in range(n):
        with db.atomic():
            rows.append(stafflog.append(db, ALICE, "withdrawal.approve", f"withdrawal:{i}", {"n": i}))
    return rows


def test_appended_rows_chain_and_verify(any_db_url):
    db = connect_database(any_db_url)
    migrate(db)
    rows = _log(db, 5)
    assert [r.id for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == stafflog.GENESIS_HASH
    assert all(b.prev_hash == a.row_hash for a, b in zip(rows, rows[1:]))
    assert stafflog.verify() == [] and run_audit().ok
    assert [r.subject for r in stafflog.history("withdrawal:3")] == ["withdrawal:3"]
    db.close()


def test_a_rolled_back_change_leaves_no_log_row(any_db_url):
    db = connect_database(any_db_url)
    migrate(db)
    _log(db, 1)
    try:
        with db.atomic():
            stafflog.append(db, ALICE, "withdrawal.reject", "withdrawal:9", {"reason": "x"})
            raise RuntimeError("the change failed")
    except RuntimeError:
        pass
    assert StaffAction.select().count() == 1 and stafflog.verify() == []
    db.close()


def test_tampering_is_found(any_db_url):
    db = connect_database(any_db_url)
    migrate(db)
    _log(db, 4)
    StaffAction.update(details='{"n":99}').where(StaffAction.id == 2).execute()
    assert any("row 2" in p and "changed" in p for p in stafflog.verify())
    report = run_audit()
    assert not report.ok and any("staff log" in v for v in report.violations)
    db.close()


def test_removed_rows_are_found(any_db_url):
    db = connect_database(any_db_url)
    migrate(db)
    _log(db, 4)
    StaffAction.delete().where(StaffAction.id == 4).execute()  # the last one: only the head knows
    assert any("head names row 4" in p for p in stafflog.verify())
    StaffAction.delete().where(StaffAction.id == 2).execute()
    assert any("row 3 follows row 1" in p for p in stafflog.verify())
    db.close()


def test_concurrent_appends_never_fork_the_chain(mysql_url):
    db = connect_database(mysql_url)
    migrate(db)

    def append_some(worker: int) -> None:
        for i in range(25):
            with db.atomic():
                stafflog.append(db, Actor(worker, f"w{worker}", "operator"), "hold.release", f"account:{i}")
        db.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(append_some, range(8)))
    assert StaffAction.select().count() == 200
    assert StaffLogHead.get_by_id(1).last_id == 200
    assert stafflog.verify() == []
    db.close_all()


@given(st.integers(1, 2**40), st.integers(0, 2**45), st.one_of(st.none(), st.integers(1, 2**40)),
       st.text(max_size=20), st.text(max_size=10), st.text(max_size=30), st.text(max_size=40),
       st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
       st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_the_row_hash_has_one_exact_form(row_id, at_ms, admin_id, name, role, action, subject, details, prev):
    stored = stafflog.canonical_details(details)
    assert stored == json.dumps(details, sort_keys=True, separators=(",", ":"))
    text = json.dumps([row_id, at_ms, admin_id, name, role, action, subject, stored, prev], separators=(",", ":"))
    assert stafflog.row_hash(row_id, at_ms, admin_id, name, role, action, subject, stored, prev) == \
        hashlib.sha256(text.encode()).hexdigest()
