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
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import peewee

from core.limits import SQL_IN_LIST_MAX, SQL_ROWS_PER_STATEMENT

ROWS_PER_STATEMENT = SQL_ROWS_PER_STATEMENT
IN_LIST_MAX = SQL_IN_LIST_MAX


def is_mysql(db: peewee.Database) -> bool:
    return isinstance(db, peewee.MySQLDatabase)


def insert_many(db: peewee.Database, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                chunk: int = ROWS_PER_STATEMENT) -> None:
    if not rows:
        return
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    if is_mysql(db):
        _execute_rows(db, head, rows, "", chunk)
    else:
        _executemany(db, head + "(" + ", ".join([db.param] * len(columns)) + ")", rows)


def upsert_balances(db: peewee.Database, rows: Sequence[tuple[int, str, str, str]]) -> None:
    """rows: (account_id, asset, available, frozen) with amounts as digit strings."""
    if not rows:
        return
    head = "INSERT INTO balance (account_id, asset, available, frozen) VALUES "
    if is_mysql(db):
        _execute_rows(db, head, rows, " ON DUPLICATE KEY UPDATE available = VALUES(available), "
                      "frozen = VALUES(frozen)", ROWS_PER_STATEMENT)
    else:
        p = db.param
        _executemany(db, f"{head}({p}, {p}, {p}, {p}) ON CONFLICT (account_id, asset) DO UPDATE SET "
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


def query_one(db: peewee.Database, template: str, params: Sequence[Any]) -> tuple | None:
    """The first row of a hand-written statement whose placeholders are written `{p}` (the backend's own
    placeholder is put in: %s or ?); the driver binds `params`."""
    return db.execute_sql(template.format(p=db.param), params).fetchone()


# -- execution ---------------------------------------------------------------------------------------------


def _execute_in(db: peewee.Database, sql_prefix: str, params: Sequence[Any], values: Sequence[Any]):
    if not is_mysql(db):
        return db.execute_sql(f"{sql_prefix} IN ({', '.join([db.param] * len(values))})", [*params, *values])
    quote = _quoter(db)
    prefix = sql_prefix % tuple(_literal(v, quote) for v in params) if params else sql_prefix
    return _execute_raw(db, f"{prefix} IN ({','.join([_literal(v, quote) for v in values])})")


def _execute_rows(db: peewee.Database, head: str, rows: Sequence[Sequence[Any]], tail: str, chunk: int) -> None:
    quote = _quoter(db)
    for part in _chunks(rows, chunk):
        values = ",".join(["(" + ",".join([str(v) if type(v) is int else quote(v) for v in row]) + ")"
                           for row in part])
        _execute_raw(db, head + values + tail)


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
