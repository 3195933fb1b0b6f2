"""Raw SQL for the hot path (a shard's batch write), where peewee's query builder costs more than the
database. Everything else uses the models.

On MySQL the statements are multi-row and their literals are built here: the driver's own parameter
quoting (`executemany`/`mogrify`) walks a chain of Python calls per value and was the largest single
cost of a shard's batch (profile in docs/BENCHMARKS.md). Ints are written with `str`, strings through the
connection's `string_literal` (libmariadb's mysql_real_escape_string: it knows the connection's charset
and whether the session has NO_BACKSLASH_ESCAPES), bytes as hex literals, None and bools as NULL and 1/0.
Statements with inlined literals are sent without parameters (the driver would otherwise %-format them),
and driver errors are mapped to peewee's (peewee.IntegrityError, ...) like every other query. SQLite
(embedded mode) binds parameters as usual.

A shard's whole batch transaction can go to MySQL as one script (`transaction_script`): BEGIN, the
statements and COMMIT in one round trip, where it took one per statement. mysqlclient opens every
connection with CLIENT_MULTI_STATEMENTS, and the server stops a script at its first failing statement, so a
failure leaves the transaction open with part of it applied: it is rolled back here before the error is
raised. Each round trip saved is, under load, a thread sleep and a wait for the GIL (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import peewee

from core.limits import SQL_IN_LIST_MAX, SQL_ROWS_PER_STATEMENT, SQL_SCRIPT_MAX_CHARS

ROWS_PER_STATEMENT = SQL_ROWS_PER_STATEMENT
IN_LIST_MAX = SQL_IN_LIST_MAX
SCRIPT_MAX_CHARS = SQL_SCRIPT_MAX_CHARS


def is_mysql(db: peewee.Database) -> bool:
    return isinstance(db, peewee.MySQLDatabase)


def insert_many(db: peewee.Database, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                chunk: int = ROWS_PER_STATEMENT) -> None:
    if not rows:
        return
    if is_mysql(db):
        _execute_all(db, insert_statements(db, table, columns, rows, chunk))
    else:
        head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
        _executemany(db, head + "(" + ", ".join([db.param] * len(columns)) + ")", rows)


def upsert_balances(db: peewee.Database, rows: Sequence[tuple[int, str, str, str]]) -> None:
    """rows: (account_id, asset, available, frozen) with amounts as digit strings."""
    if not rows:
        return
    if is_mysql(db):
        _execute_all(db, upsert_balance_statements(db, rows))
    else:
        p = db.param
        _executemany(db, f"{_BALANCE_HEAD}({p}, {p}, {p}, {p}) ON CONFLICT (account_id, asset) DO UPDATE SET "
                     "available = excluded.available, frozen = excluded.frozen", rows)


def select_in(db: peewee.Database, sql_prefix: str, values: Sequence[Any], chunk: int = IN_LIST_MAX) -> list[tuple]:
    """Run `sql_prefix IN (...)` over `values` in bounded chunks and return all rows."""
    out: list[tuple] = []
    for part in _chunks(values, chunk):
        out.extend(_execute_in(db, sql_prefix, (), part).fetchall())
    return out


def execute_in(db: peewee.Database, sql_prefix: str, params: Sequence[Any], values: Sequence[Any],
               chunk: int = IN_LIST_MAX) -> None:
    """Run `sql_prefix IN (...)` over `values` in bounded chunks; `params` fill the prefix's own
    placeholders (an UPDATE's SET values, say)."""
    for part in _chunks(values, chunk):
        _execute_in(db, sql_prefix, params, part)


# -- finished statements and scripts (MySQL) -------------------------------------------------------------


def insert_statements(db: peewee.Database, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                      chunk: int = ROWS_PER_STATEMENT) -> list[str]:
    return _row_statements(db, f"INSERT INTO {table} ({', '.join(columns)}) VALUES ", rows, "", chunk)


def upsert_balance_statements(db: peewee.Database, rows: Sequence[tuple[int, str, str, str]]) -> list[str]:
    return _row_statements(db, _BALANCE_HEAD, rows, " ON DUPLICATE KEY UPDATE available = VALUES(available), "
                           "frozen = VALUES(frozen)", ROWS_PER_STATEMENT)


def in_statements(db: peewee.Database, sql_prefix: str, params: Sequence[Any], values: Sequence[Any],
                  chunk: int = IN_LIST_MAX) -> list[str]:
    """`sql_prefix IN (...)` over `values` as finished statements; `params` fill the prefix's own `%s`."""
    return [_in_statement(db, sql_prefix, params, part) for part in _chunks(values, chunk)]


def inline(db: peewee.Database, template: str, params: Sequence[Any]) -> str:
    """A finished statement: `template`'s `{}` filled with literals of `params` (ints, str, bytes, bool, None)."""
    quote = _quoter(db)
    return template.format(*[_literal(v, quote) for v in params])


def transaction_script(db: peewee.Database, statements: Sequence[str], guard: str | None = None) -> bool:
    """Run `statements` as one transaction in as few round trips as MySQL allows: BEGIN, the statements and
    COMMIT in one script. With a `guard` (a conditional UPDATE that must change exactly one row: a fence
    check), BEGIN and the guard go first, and the rest only if it changed its row; False (rolled back,
    nothing written) if it did not.

    An error the server reports for one of the statements means it ran none after it, COMMIT included: the
    transaction is rolled back here and the error raised as peewee's. An error while the answers are read
    (the connection lost) may come after the server ran the COMMIT: the outcome is unknown, as with any
    COMMIT whose answer is lost (a shard reloads from the database then).

    Not inside an open transaction (peewee's, or one left on the connection): BEGIN would commit it."""
    if db.in_transaction() or getattr(db.connection(), "in_transaction", False):
        raise RuntimeError("transaction_script inside an open transaction")
    try:
        if guard is not None and script(db, ["BEGIN", guard])[1] != 1:
            _rollback(db)
            return False
        script(db, [*([] if guard is not None else ["BEGIN"]), *statements, "COMMIT"])
    except BaseException:
        _rollback(db)
        raise
    # The script's COMMIT is not seen by storage/db.TrackedConnection (it looks at the head of a query only).
    ended = getattr(db.connection(), "transaction_ended", None)
    if ended is not None:
        ended()
    return True


def script(db: peewee.Database, statements: Sequence[str]) -> list[int]:
    """Finished statements in as few round trips as SCRIPT_MAX_CHARS allows; their affected-row counts, in
    order. The first failing statement raises (the server runs none after it)."""
    counts: list[int] = []
    cursor = db.cursor()
    with peewee.__exception_wrapper__:
        for text in _scripts(statements):
            cursor.execute(text)
            counts.append(cursor.rowcount)
            while cursor.nextset():
                counts.append(cursor.rowcount)
    return counts


def _scripts(statements: Sequence[str]) -> Iterator[str]:
    part: list[str] = []
    size = 0
    for statement in statements:
        if part and size + len(statement) > SCRIPT_MAX_CHARS:
            yield ";\n".join(part)
            part, size = [], 0
        part.append(statement)
        size += len(statement) + 2
    if part:
        yield ";\n".join(part)


def _rollback(db: peewee.Database) -> None:
    """After a failed script (or guard) the connection may still be in the transaction, with the statements
    before the failing one applied. If ROLLBACK itself fails, the driver's connection is closed: the server
    ends the session and rolls the transaction back, the next query on it fails loudly, and the pool
    discards it. Never is it used on with that transaction open (a retry's BEGIN would commit what it holds)."""
    conn = db.connection()
    try:
        db.execute_sql("ROLLBACK")
    except Exception:  # noqa: BLE001 - the error being raised is the script's, not this one
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closed already
            pass


def query_one(db: peewee.Database, template: str, params: Sequence[Any]) -> tuple | None:
    """The first row of a hand-written statement whose placeholders are written `{p}` (the backend's own
    placeholder is put in: %s or ?); the driver binds `params`."""
    return db.execute_sql(template.format(p=db.param), params).fetchone()


# -- execution ---------------------------------------------------------------------------------------------


_BALANCE_HEAD = "INSERT INTO balance (account_id, asset, available, frozen) VALUES "


def _execute_in(db: peewee.Database, sql_prefix: str, params: Sequence[Any], values: Sequence[Any]):
    if not is_mysql(db):
        return db.execute_sql(f"{sql_prefix} IN ({', '.join([db.param] * len(values))})", [*params, *values])
    return _execute_raw(db, _in_statement(db, sql_prefix, params, values))


def _in_statement(db: peewee.Database, sql_prefix: str, params: Sequence[Any], values: Sequence[Any]) -> str:
    quote = _quoter(db)
    prefix = sql_prefix % tuple(_literal(v, quote) for v in params) if params else sql_prefix
    return f"{prefix} IN ({','.join([_literal(v, quote) for v in values])})"


def _row_statements(db: peewee.Database, head: str, rows: Sequence[Sequence[Any]], tail: str,
                    chunk: int) -> list[str]:
    quote = _quoter(db)
    return [head + ",".join(["(" + ",".join([str(v) if type(v) is int else quote(v) for v in row]) + ")"
                             for row in part]) + tail
            for part in _chunks(rows, chunk)]


def _execute_all(db: peewee.Database, statements: Sequence[str]) -> None:
    for statement in statements:
        _execute_raw(db, statement)


def _execute_raw(db: peewee.Database, sql: str):
    """Send a finished statement: no parameters, so the driver leaves '%' in literals alone."""
    cursor = db.cursor()
    with peewee.__exception_wrapper__:
        cursor.execute(sql)
    return cursor


def _executemany(db: peewee.Database, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    cursor = db.cursor()
    with peewee.__exception_wrapper__:
        cursor.executemany(sql, rows)


# -- literals (MySQL) --------------------------------------------------------------------------------------


def _quoter(db: peewee.Database) -> Callable[[Any], str]:
    """A function that quotes one non-int value for this connection's escaping mode."""
    conn = db.connection()
    string_literal = conn.string_literal  # quotes and escapes bytes in C

    def quote(value: Any) -> str:
        kind = type(value)
        if kind is str:
            if value.isalnum():  # ids, digits, hex, symbols: no character that needs escaping
                return "'" + value + "'"
            return string_literal(value.encode()).decode()
        if value is None:
            return "NULL"
        if kind is bool:
            return "1" if value else "0"
        if kind is bytes:
            return "X'" + value.hex() + "'"
        raise TypeError(f"no SQL literal for a {kind.__name__}: pass ints, str, bytes, bool or None")

    return quote


def _literal(value: Any, quote: Callable[[Any], str]) -> str:
    return str(value) if type(value) is int else quote(value)


def _chunks(values: Sequence[Any], size: int):
    for start in range(0, len(values), size):
        yield values[start:start + size]
