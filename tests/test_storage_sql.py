"""storage/sql.py builds the hot path's SQL literals itself on MySQL: every awkward string must come back
byte for byte, amounts must stay exact, and driver errors must surface as peewee's."""

from __future__ import annotations

import peewee
import pytest

from storage import sql
from storage.db import connect_database, migrate
from storage.models import Balance, Operation, Outbox

AWKWARD_IDS = [
    "plain1", "quote'in", 'double"in', "back\\slash", "trailing\\", "percent%s%d%%", "nul\x00byte",
    "lines\n\r\x1a", "unicode-ü€😀", "x'); DROP TABLE operation; --", "'", "\\'",
]


def _operation_row(op_id: str) -> tuple:
    return (op_id, 0, "transfer", 1, "f" * 64, '{"op_id": "?", "status": "completed"}', 1)


def test_awkward_strings_round_trip_through_insert_select_and_update(migrated_db):
    db = migrated_db
    with db.atomic():
        sql.insert_many(db, "operation", ("op_id", "shard", "kind", "account_id", "fingerprint", "result",
                                          "created_at"), [_operation_row(op) for op in AWKWARD_IDS])
        sql.insert_many(db, "outbox", ("op_id", "source_op_id", "source_shard", "target_shard", "payload",
                                       "created_at"), [(op, op, 0, 1, "{}", 1) for op in AWKWARD_IDS])
    rows = sql.select_in(db, "SELECT op_id, result FROM operation WHERE op_id", AWKWARD_IDS, chunk=5)
    assert sorted(op for op, _ in rows) == sorted(AWKWARD_IDS)
    assert {result for _, result in rows} == {'{"op_id": "?", "status": "completed"}'}
    assert set(Operation.select(Operation.op_id).tuples()) == {(op,) for op in AWKWARD_IDS}

    marked = AWKWARD_IDS[::2]
    with db.atomic():
        sql.execute_in(db, f"UPDATE outbox SET delivered_at = {db.param} WHERE delivered_at IS NULL AND op_id",
                       (42,), marked, chunk=4)
    delivered = {op: at for op, at in Outbox.select(Outbox.op_id, Outbox.delivered_at).tuples()}
    assert delivered == {op: (42 if op in marked else None) for op in AWKWARD_IDS}


@pytest.fixture
def mysql_db(mysql_url):
    db = connect_database(mysql_url)
    migrate(db)
    yield db
    db.close()


def test_awkward_strings_round_trip_when_the_session_has_no_backslash_escapes(mysql_db):
    """Under NO_BACKSLASH_ESCAPES a backslash is an ordinary character and only a doubled quote escapes:
    the driver's string_literal must follow the session's mode, or "back\\slash" would come back changed
    (or a quote would end the literal early)."""
    db = mysql_db
    with db.connection_context():
        db.execute_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        try:
            with db.atomic():
                sql.insert_many(db, "operation", ("op_id", "shard", "kind", "account_id", "fingerprint", "result",
                                                  "created_at"), [_operation_row(op) for op in AWKWARD_IDS])
            rows = sql.select_in(db, "SELECT op_id FROM operation WHERE op_id", AWKWARD_IDS)
        finally:
            db.execute_sql("SET SESSION sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')")
    assert sorted(op for (op,) in rows) == sorted(AWKWARD_IDS)


def test_other_literals_are_null_booleans_and_hex_and_anything_else_is_refused(mysql_db):
    db = mysql_db
    with db.connection_context():
        quote = sql._quoter(db)
        assert [quote(None), quote(True), quote(False), quote(b"\x00'\xff")] == ["NULL", "1", "0", "X'0027ff'"]
        literal = quote(b"\x00'\xff")
        assert db.execute_sql(f"SELECT {literal} = UNHEX('0027FF')").fetchone() == (1,)
        with pytest.raises(TypeError):
            quote(1.5)  # amounts travel as digit strings; a float here is a bug, never rounded silently


def test_upserted_balances_stay_exact_up_to_the_limit(migrated_db):
    db = migrated_db
    huge = 10**65 - 1
    with db.atomic():
        sql.upsert_balances(db, [(1, "ETH", str(huge), "0"), (2, "ETH", "5", "7")])
    with db.atomic():
        sql.upsert_balances(db, [(2, "ETH", "6", str(huge - 1))])
    got = {(a, s): (av, fr) for a, s, av, fr in
           Balance.select(Balance.account_id, Balance.asset, Balance.available, Balance.frozen).tuples()}
    assert got == {(1, "ETH"): (huge, 0), (2, "ETH"): (6, huge - 1)}


def test_a_duplicate_key_is_a_peewee_integrity_error_and_writes_nothing(migrated_db):
    db = migrated_db
    columns = ("op_id", "shard", "kind", "account_id", "fingerprint", "result", "created_at")
    sql.insert_many(db, "operation", columns, [_operation_row("once")])
    with pytest.raises(peewee.IntegrityError):
        with db.atomic():
            sql.insert_many(db, "operation", columns, [_operation_row("other"), _operation_row("once")])
    assert [op for (op,) in Operation.select(Operation.op_id).tuples()] == ["once"]


def test_the_pool_rolls_back_what_a_thread_left_open_and_reuses_the_rest_unpinged(mysql_url):
    """Check-in rolls back only a connection really inside a transaction (storage.db.TrackedConnection), and a
    connection back within DB_POOL_PING_IDLE_MS goes out again without a ping: both were round trips under
    the database's one lock on every request that read the database."""
    db = connect_database(mysql_url)
    migrate(db)
    db.close()
    pings = []
    db.connect()
    conn = db.connection()
    original_ping = type(conn).ping
    type(conn).ping = lambda self, *a: (pings.append(self), original_ping(self, *a))[1]
    try:
        db.execute_sql("BEGIN")
        db.execute_sql("INSERT INTO operation (op_id, shard, kind, account_id, fingerprint, result, created_at) "
                       "VALUES ('left-open', 0, 'transfer', 1, 'f', '{}', 1)")
        db.close()  # back to the pool with the transaction open: rolled back
        db.connect()
        assert db.connection() is conn and pings == []  # the same connection, unpinged
        assert Operation.select().where(Operation.op_id == "left-open").count() == 0
        db.close()
        db._checked_in_ms[db.conn_key(conn)] -= 10_000  # as if it had idled in the pool for 10 s
        db.connect()
        assert db.connection() is conn and pings == [conn]  # idle a while: pinged before it goes out
    finally:
        type(conn).ping = original_ping
        db.close()


def test_query_one_binds_its_parameters_on_both_backends(migrated_db):
    """`{p}` becomes the backend's placeholder and the driver binds the values: a quote in a value is data."""
    sql.insert_many(migrated_db, "outbox", ("op_id", "source_op_id", "source_shard", "target_shard", "payload",
                                            "created_at"), [("o'1", "s-1", 0, 2, '{"a": 1}', 5), ("o-2", "s-2", 0, 3, "{}", 6)])
    template = "SELECT op_id, target_shard FROM outbox WHERE op_id = {p} AND created_at >= {p}"
    assert sql.query_one(migrated_db, template, ("o'1", 5)) == ("o'1", 2)
    assert sql.query_one(migrated_db, template, ("o'1", 6)) is None
    assert sql.query_one(migrated_db, template, ("o-2' OR '1'='1", 0)) is None


# -- a transaction as one script (MySQL) ---------------------------------------------------------------------

OPERATION = ("op_id", "shard", "kind", "account_id", "fingerprint", "result", "created_at")


def _ops(db) -> list[str]:
    return sorted(op for (op,) in Operation.select(Operation.op_id).tuples())


def _counted_round_trips(db) -> list[bytes]:
    """The queries sent on this thread's connection from now on (TrackedConnection.query is every round trip)."""
    sent: list[bytes] = []
    conn = db.connection()
    original = conn.query
    conn.query = lambda q: (sent.append(bytes(q)), original(q))[1]
    return sent


def test_a_transaction_script_commits_everything_in_one_round_trip(mysql_db):
    db = mysql_db
    with db.connection_context():
        sent = _counted_round_trips(db)
        statements = [*sql.insert_statements(db, "operation", OPERATION, [_operation_row("s-1"), _operation_row("s-2")]),
                      *sql.upsert_balance_statements(db, [(1, "ETH", "5", "0")]),
                      *sql.in_statements(db, "UPDATE operation SET created_at = %s WHERE op_id", (9,), ["s-1"])]
        assert sql.transaction_script(db, statements) is True
        assert len(sent) == 1 and sent[0].startswith(b"BEGIN;") and sent[0].endswith(b"COMMIT")
        assert db.connection().in_transaction is False  # the pool will not roll it back on check-in
    assert _ops(db) == ["s-1", "s-2"]
    assert Operation.get(Operation.op_id == "s-1").created_at == 9
    assert Balance.get(Balance.account_id == 1).available == 5


def test_a_failing_statement_of_a_script_rolls_back_the_ones_before_it(mysql_db):
    """The server stops a script at its first error with the transaction open and the statements before it
    applied: nothing of them may stay, and the connection goes on working."""
    db = mysql_db
    sql.insert_many(db, "operation", OPERATION, [_operation_row("once")])
    with db.connection_context():
        statements = [*sql.upsert_balance_statements(db, [(7, "ETH", "5", "0")]),
                      *sql.insert_statements(db, "operation", OPERATION, [_operation_row("new")]),
                      *sql.insert_statements(db, "operation", OPERATION, [_operation_row("once")]),
                      *sql.insert_statements(db, "operation", OPERATION, [_operation_row("after")])]
        with pytest.raises(peewee.IntegrityError):
            sql.transaction_script(db, statements)
        assert db.connection().in_transaction is False
        assert db.execute_sql("SELECT 1").fetchone() == (1,)
    assert _ops(db) == ["once"]
    assert Balance.select().where(Balance.account_id == 7).count() == 0


def test_a_guard_that_changes_no_row_writes_nothing(mysql_db):
    """The fence's check: BEGIN and the guard first; the statements only if it changed its one row."""
    db = mysql_db
    db.execute_sql("INSERT INTO shard_owner (name, epoch, batches, owner, updated_at_ms) VALUES ('shard-0', 3, 0, 'x', 0)")
    with db.connection_context():
        sent = _counted_round_trips(db)
        stale = sql.inline(db, "UPDATE shard_owner SET batches = batches + 1 WHERE name = {} AND epoch = {}", ("shard-0", 2))
        assert sql.transaction_script(db, sql.insert_statements(db, "operation", OPERATION, [_operation_row("g-1")]),
                                      guard=stale) is False
        assert [q.split(b";")[0] for q in sent] == [b"BEGIN", b"ROLLBACK"]
        current = sql.inline(db, "UPDATE shard_owner SET batches = batches + 1 WHERE name = {} AND epoch = {}", ("shard-0", 3))
        assert sql.transaction_script(db, sql.insert_statements(db, "operation", OPERATION, [_operation_row("g-2")]),
                                      guard=current) is True
    assert _ops(db) == ["g-2"]
    assert db.execute_sql("SELECT batches FROM shard_owner WHERE name = 'shard-0'").fetchone() == (1,)


def test_a_long_script_goes_in_several_round_trips_of_one_transaction(mysql_db, monkeypatch):
    db = mysql_db
    monkeypatch.setattr(sql, "SCRIPT_MAX_CHARS", 200)
    sql.insert_many(db, "operation", OPERATION, [_operation_row("dup")])
    rows = [[_operation_row(f"long-{n}")] for n in range(6)]
    with db.connection_context():
        sent = _counted_round_trips(db)
        assert sql.transaction_script(db, [s for r in rows for s in sql.insert_statements(db, "operation", OPERATION, r)])
        assert len(sent) > 2 and sent[0].startswith(b"BEGIN") and sent[-1].endswith(b"COMMIT")
        with pytest.raises(peewee.IntegrityError):  # the failure is in a later round trip: the earlier ones go too
            sql.transaction_script(db, [*sql.insert_statements(db, "operation", OPERATION, [_operation_row("x-1")]),
                                        *sql.insert_statements(db, "operation", OPERATION, [_operation_row("x-2")]),
                                        *sql.insert_statements(db, "operation", OPERATION, [_operation_row("dup")])])
    assert _ops(db) == sorted(["dup", *(f"long-{n}" for n in range(6))])


def test_a_script_refuses_to_run_inside_a_transaction_peewee_opened(mysql_db):
    """Its BEGIN would silently commit the open transaction."""
    db = mysql_db
    with pytest.raises(RuntimeError):
        with db.atomic():
            sql.insert_many(db, "operation", OPERATION, [_operation_row("outer")])
            sql.transaction_script(db, sql.insert_statements(db, "operation", OPERATION, [_operation_row("inner")]))
    assert _ops(db) == []


def test_a_failed_rollback_never_leaves_the_partial_transaction_for_the_next_script(mysql_db, monkeypatch):
    """A script fails after its first INSERT, and the ROLLBACK fails too: the driver's connection is closed (the
    server rolls back), so no later BEGIN on it can commit that INSERT, and the pool hands out another."""
    db = mysql_db
    sql.insert_many(db, "operation", OPERATION, [_operation_row("dup")])
    real_execute_sql = db.execute_sql

    def failing_rollback(text, *args, **kwargs):
        if text == "ROLLBACK":
            raise peewee.OperationalError("connection interrupted during ROLLBACK")
        return real_execute_sql(text, *args, **kwargs)

    with db.connection_context():
        monkeypatch.setattr(db, "execute_sql", failing_rollback)
        with pytest.raises(peewee.IntegrityError):
            sql.transaction_script(db, [*sql.insert_statements(db, "operation", OPERATION, [_operation_row("partial")]),
                                        *sql.insert_statements(db, "operation", OPERATION, [_operation_row("dup")])])
        monkeypatch.setattr(db, "execute_sql", real_execute_sql)
        broken = db.connection()
        with pytest.raises((RuntimeError, peewee.DatabaseError)):  # refused: still marked in a transaction
            sql.transaction_script(db, sql.insert_statements(db, "operation", OPERATION, [_operation_row("x")]))
        with pytest.raises(peewee.DatabaseError):  # and closed: nothing more goes over it
            db.execute_sql("SELECT 1")
    with db.connection_context():
        assert db.connection() is not broken
        assert sql.transaction_script(db, sql.insert_statements(db, "operation", OPERATION, [_operation_row("next")]))
    assert _ops(db) == ["dup", "next"]


def test_a_script_refuses_a_connection_left_inside_a_transaction(mysql_db):
    db = mysql_db
    with db.connection_context():
        db.execute_sql("BEGIN")  # raw, not peewee's: only the connection knows
        db.execute_sql("INSERT INTO operation (op_id, shard, kind, account_id, fingerprint, result, created_at) "
                       "VALUES ('left', 0, 'transfer', 1, 'f', '{}', 1)")
        with pytest.raises(RuntimeError):
            sql.transaction_script(db, sql.insert_statements(db, "operation", OPERATION, [_operation_row("x")]))
        db.execute_sql("ROLLBACK")
    assert _ops(db) == []
