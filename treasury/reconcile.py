"""Reconciliation (DESIGN.md "Treasury"): per asset, what the ledger owes against what our addresses hold on
chain, at ONE block height, with every known difference explained and the rest called drift.

The height is BlockWatch's cursor: the highest block whose deposits and our transactions' receipts the
database has recorded. Chain balances are read at that block (a block tag on every call, batched), and the
database is read in one transaction (one consistent snapshot), so both sides describe the same moment.

Per asset (base units):
    liabilities      every user's available + frozen
    fees             the `fees` system accounts (net fee income, still on our addresses)
    system           the other system accounts that hold money for users: escrow (red packets) and transit
                     (between shards)
    pending          deposits on chain at or below the height but not credited (pending, below the minimum,
                     credit failed): on our addresses, not in the ledger
    in_flight        withdrawals still signed/broadcast whose transaction is mined at or below the height:
                     the value has left the hot wallet, the ledger still holds it frozen; for ETH also the gas
                     those transactions burnt (booked to `fees` only when they settle); and the gas of
                     treasury moves (sweeps, their top-ups, cold moves) mined at or below the height whose gas
                     is not booked yet (BookSweepGas "sw:<id>" is written when the move is final). A move's
                     value stays on our addresses (deposit address -> hot -> cold): only its gas leaves.
    float            the operator's own money on our addresses (WALLET_RECONCILE_FLOAT): owed to nobody
    expected         liabilities + fees + system + pending + float - in_flight
    holdings         deposit addresses (every address with a recorded deposit) + hot + gas + cold wallets
    drift            holdings - expected: anything else. Zero is clean; a shortfall or a surplus alike is
                     unexplained and raises the alarm (a metric, a CRITICAL log line, exit 1 of
                     `wallet reconcile`).

`world` is not read: all accounts sum to zero per asset, so it is the negation of the rest.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import logging
from typing import Any, Callable, Iterable, Sequence

import peewee

from core.limits import RECONCILE_SNAPSHOTS_KEPT
from core.money import AssetRegistry
from chain.session import NodeSession
from storage import sql
from storage.models import ChainCursor, Reconciliation, now_ms
from treasury.sweeps import OPEN as TREASURY_OPEN, PURPOSES as TREASURY_PURPOSES

log = logging.getLogger(__name__)

UNCREDITED = ("pending", "below_minimum", "credit_failed")
IN_SIGNERS_HANDS = ("signed", "broadcast")
HOLDING_SYSTEM = ("escrow", "transit")
GAS_ASSET = "ETH"


@dataclasses.dataclass(frozen=True)
class Line:
    asset: str
    liabilities: int
    fees: int
    system: int
    pending: int
    in_flight: int
    float: int
    holdings: int

    @property
    def expected(self) -> int:
        return self.liabilities + self.fees + self.system + self.pending + self.float - self.in_flight

    @property
    def drift(self) -> int:
        return self.holdings - self.expected

    def as_json(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields.update(expected=self.expected, drift=self.drift)
        return {k: (v if k == "asset" else str(v)) for k, v in fields.items()}


@dataclasses.dataclass(frozen=True)
class Report:
    id: int | None
    block_number: int
    block_hash: str
    lines: tuple[Line, ...]
    created_at: int
    trigger: str
    addresses: int = 0  # how many addresses were read on chain

    @property
    def clean(self) -> bool:
        return all(line.drift == 0 for line in self.lines)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "block_number": self.block_number, "block_hash": self.block_hash,
                "clean": self.clean, "trigger": self.trigger, "created_at": self.created_at,
                "lines": [line.as_json() for line in self.lines]}


@dataclasses.dataclass(frozen=True)
class Wallets:
    hot: str | None
    gas: str | None
    cold: str | None

    def addresses(self) -> list[str]:
        return [a for a in (self.hot, self.gas, self.cold) if a]


@dataclasses.dataclass(frozen=True)
class LedgerSide:
    """The database's half, read in one transaction."""

    block_number: int
    liabilities: dict[str, int]
    fees: dict[str, int]
    system: dict[str, int]
    pending: dict[str, int]
    in_flight: dict[str, int]
    deposit_addresses: list[str]
    treasury_hashes: list[str] = dataclasses.field(default_factory=list)  # unbooked moves' attempts


class Reconciler:
    """Compares; stores each report; says what drifted. No threads: actors/reconciler.py keeps time."""

    def __init__(self, db: peewee.Database, assets: AssetRegistry, wallets: Callable[[], Wallets],
                 floats: dict[str, int], wall_ms: Callable[[], int] = now_ms) -> None:
        self.db = db
        self.assets = assets
        self.wallets = wallets
        self.floats = floats
        self.wall_ms = wall_ms
        self.deposit_addresses = AddressBook()

    def run(self, session: NodeSession, trigger: str = "interval") -> Report:
        ledger = read_ledger(self.db, self.deposit_addresses)
        if ledger is None:
            raise LookupError("BlockWatch has recorded no block yet: nothing to reconcile against")
        (block,) = session.blocks([ledger.block_number], full=False)
        treasury_gas = _treasury_gas(session, ledger.treasury_hashes, ledger.block_number)
        if treasury_gas:
            ledger.in_flight[GAS_ASSET] = ledger.in_flight.get(GAS_ASSET, 0) + treasury_gas
        holders = sorted(set(ledger.deposit_addresses) | set(self.wallets().addresses()))
        lines = []
        for asset in self.assets:
            held = sum(session.balances_at(holders, ledger.block_number, asset.contract)) if holders else 0
            symbol = asset.symbol
            lines.append(Line(symbol, ledger.liabilities.get(symbol, 0), ledger.fees.get(symbol, 0),
                              ledger.system.get(symbol, 0), ledger.pending.get(symbol, 0),
                              ledger.in_flight.get(symbol, 0), self.floats.get(symbol, 0), held))
        report = Report(None, ledger.block_number, block.hash, tuple(lines), self.wall_ms(), trigger, len(holders))
        report = self.store(report)
        self._alert(report)
        return report

    def store(self, report: Report) -> Report:
        with self.db.atomic():
            row = Reconciliation.create(block_number=report.block_number, block_hash=report.block_hash,
                                        clean=report.clean, trigger=report.trigger, created_at=report.created_at,
                                        lines=json.dumps([line.as_json() for line in report.lines]))
            Reconciliation.delete().where(Reconciliation.id <= row.id - RECONCILE_SNAPSHOTS_KEPT).execute()
        return dataclasses.replace(report, id=row.id)

    def _alert(self, report: Report) -> None:
        for line in report.lines:
            if line.drift:
                log.critical("reconciliation drift: holdings differ from what the ledger explains", extra={
                    "asset": line.asset, "drift": str(line.drift), "holdings": str(line.holdings),
                    "expected": str(line.expected), "block_number": report.block_number,
                    "reconciliation_id": report.id})


class AddressBook:
    """Every address with a recorded deposit, read incrementally: deposit rows are never deleted, so each run
    reads only the rows added since the last one (the first run reads them all)."""

    def __init__(self) -> None:
        self.addresses: set[str] = set()
        self.last_id = 0

    def refresh(self, db: peewee.Database) -> list[str]:
        rows = db.execute_sql(f"SELECT id, address FROM deposit WHERE id > {int(self.last_id)}").fetchall()
        for deposit_id, address in rows:
            self.addresses.add(address)
            self.last_id = max(self.last_id, deposit_id)
        return sorted(self.addresses)


def read_ledger(db: peewee.Database, book: AddressBook | None = None) -> LedgerSide | None:
    book = book or AddressBook()
    with db.atomic():  # one transaction: one consistent snapshot of every table read below
        cursor = ChainCursor.select(ChainCursor.height, ChainCursor.block_hash).order_by(ChainCursor.chain_id).first()
        if cursor is None or cursor.block_hash is None:
            return None
        height = cursor.height
        liabilities, fees, system = _balances(db)
        pending = _sum_by_asset(db, "SELECT asset, amount FROM deposit WHERE status IN ({}) AND block_number <= {}"
                                .format(_quoted(UNCREDITED), int(height)))
        in_flight = _in_flight(db, height)
        addresses = book.refresh(db)
        treasury_hashes = _unbooked_treasury_attempts(db)
    return LedgerSide(height, liabilities, fees, system, pending, in_flight, addresses, treasury_hashes)


def _balances(db: peewee.Database) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Users', fees' and the holding system accounts' balances per asset. Users' are summed by MariaDB
    (DECIMAL sums are exact there) in one GROUP BY; SQLite would sum TEXT as floats, so there the rows are
    summed as Python ints. System accounts are a few rows per shard, read one by one."""
    liabilities: dict[str, int] = {}
    fees: dict[str, int] = {}
    system: dict[str, int] = {}
    if sql.is_mysql(db):  # every account's sum, no join; the system accounts' rows are taken off below
        rows = db.execute_sql("SELECT asset, SUM(available), SUM(frozen) FROM balance GROUP BY asset").fetchall()
    else:
        rows = db.execute_sql("SELECT b.asset, b.available, b.frozen FROM balance b JOIN account a "
                              "ON a.id = b.account_id WHERE a.kind = 'user'").fetchall()
    for asset, available, frozen in rows:
        liabilities[asset] = liabilities.get(asset, 0) + _exact(available) + _exact(frozen)
    for username, asset, available, frozen in db.execute_sql(
            "SELECT a.username, b.asset, b.available, b.frozen FROM balance b JOIN account a ON a.id = b.account_id "
            "WHERE a.kind = 'system'").fetchall():
        amount = _exact(available) + _exact(frozen)
        if sql.is_mysql(db):
            liabilities[asset] = liabilities.get(asset, 0) - amount
        name = username.split(":")[1]  # system:<name>:<shard>
        target = fees if name == "fees" else system if name in HOLDING_SYSTEM else None
        if target is not None:
            target[asset] = target.get(asset, 0) + amount
    return liabilities, fees, system


def _exact(value: Any) -> int:
    """A DECIMAL (MariaDB) or TEXT of digits (SQLite) as an int; a fraction would be a corrupt amount."""
    if isinstance(value, decimal.Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"non-integral amount in the database: {value}")
        return int(value)
    return int(value)


def _in_flight(db: peewee.Database, height: int) -> dict[str, int]:
    """Value (and, in ETH, gas) that has left the hot wallet for withdrawals the ledger has not settled."""
    rows = db.execute_sql(
        "SELECT w.id, w.asset, w.amount, o.succeeded, o.gas_used, o.effective_gas_price "
        "FROM withdrawal w JOIN tx_attempt a ON a.purpose = 'withdrawal' AND a.ref_id = w.id "
        "JOIN tx_observation o ON o.tx_hash = a.tx_hash AND o.orphaned = {} "
        "WHERE w.status IN ({}) AND o.block_number <= {}".format(_false(db), _quoted(IN_SIGNERS_HANDS), int(height))
    ).fetchall()
    out: dict[str, int] = {}
    seen: set[int] = set()
    for withdrawal_id, asset, amount, succeeded, gas_used, gas_price in rows:
        if withdrawal_id in seen:  # one nonce: at most one attempt is mined on the canonical chain
            continue
        seen.add(withdrawal_id)
        if succeeded:
            out[asset] = out.get(asset, 0) + int(amount)
        out[GAS_ASSET] = out.get(GAS_ASSET, 0) + int(gas_used) * int(gas_price)
    return out


def _unbooked_treasury_attempts(db: peewee.Database) -> list[str]:
    """Hashes of every attempt of a treasury move whose gas is not booked yet (no "sw:<id>" operation): open
    moves, and final ones in the moment between the booking's ask and the move's row. Their receipts tell
    which were mined by the height (sweeps follow their receipts themselves, not through tx_observation)."""
    rows = db.execute_sql(
        "SELECT s.id, a.tx_hash FROM sweep s JOIN tx_attempt a ON a.ref_id = s.id AND a.purpose IN ({}) "
        "WHERE s.status IN ({})".format(_quoted(TREASURY_PURPOSES), _quoted(TREASURY_OPEN))).fetchall()
    if not rows:
        return []
    booked = {op_id for (op_id,) in sql.select_in(db, "SELECT op_id FROM operation WHERE op_id",
                                                    sorted({f"sw:{sweep_id}" for sweep_id, _ in rows}))}
    return sorted({tx_hash for sweep_id, tx_hash in rows if f"sw:{sweep_id}" not in booked})


def _treasury_gas(session: NodeSession, tx_hashes: list[str], height: int) -> int:
    """Wei burnt at or below the height by the given (unbooked) treasury attempts."""
    if not tx_hashes:
        return 0
    return sum(r.gas_used * r.effective_gas_price for r in session.receipts(tx_hashes, missing_ok=True)
               if r is not None and r.block_number <= height)


def _sum_by_asset(db: peewee.Database, sql: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for asset, amount in db.execute_sql(sql).fetchall():
        out[asset] = out.get(asset, 0) + int(amount)
    return out


def _quoted(words: Iterable[str]) -> str:
    """Constant words of this module only (never input), as an SQL list."""
    assert all(w.replace("_", "").isalnum() for w in words)
    return ", ".join(f"'{w}'" for w in words)


def _false(db: peewee.Database) -> str:
    return "0"  # BOOLEAN is TINYINT(1) on MySQL and INTEGER on SQLite: false is 0 on both


def format_table(report: Report, decimals: Callable[[str], int] | None = None) -> Sequence[Sequence[str]]:
    """Rows for `wallet reconcile` (base units)."""
    rows = []
    for line in report.lines:
        rows.append([line.asset, str(line.liabilities), str(line.fees), str(line.system), str(line.pending),
                     str(line.in_flight), str(line.float), str(line.expected), str(line.holdings), str(line.drift),
                     "ok" if line.drift == 0 else "DRIFT"])
    return rows


TABLE_HEADERS = ("asset", "liabilities", "fees", "system", "pending", "in flight", "float", "expected", "holdings",
                 "drift", "")


def last_report() -> dict[str, Any] | None:
    row = Reconciliation.select().order_by(Reconciliation.id.desc()).first()
    if row is None:
        return None
    return {"id": row.id, "block_number": row.block_number, "block_hash": row.block_hash, "clean": bool(row.clean),
            "trigger": row.trigger, "created_at": row.created_at, "lines": json.loads(row.lines)}


def wallets_of(config) -> Callable[[], Wallets]:  # noqa: ANN001 - core.config.Config
    """The service's own addresses, read when asked (provisioning may create them after start)."""
    from storage import walletkeys

    def read() -> Wallets:
        found = walletkeys.wallet_addresses()
        return Wallets(found.get("hot"), found.get("gas"), config.cold_address)

    return read


def reconciler_for(config, db: peewee.Database, wall_ms: Callable[[], int] = now_ms) -> Reconciler:  # noqa: ANN001
    return Reconciler(db, AssetRegistry.from_config(config), wallets_of(config), config.per_asset("reconcile_float"),
                      wall_ms)
