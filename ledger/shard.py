"""The logic of one transrv shard, without threads: plan money commands against the in-memory book,
write a whole batch in one transaction (group commit), and keep the outbox of cross-shard credits.

The TransrvShard actor (actors/transrv_shard.py) is a thin shell over this class.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from typing import Callable, Sequence

import peewee

from core.messages import (
    Credit, CrossShardCredit, Debit, Freeze, MoneyCommand, OpResult, Settle, Transfer, Unfreeze,
)
from ledger.accounts import SYSTEM_ACCOUNT_NAMES
from ledger.book import AVAILABLE, FROZEN, Book, Leg
from storage import sql
from storage.models import Account, Balance, Outbox, now_ms
from core.errors import (
    AccountOnHold, BalanceOverflow, CommitFailed, InsufficientFunds, InvalidAmount, OperationConflict,
    SelfTransfer, Unavailable, UnknownAccount, ValidationError, WalletError, WrongShard,
)
from core.money import AMOUNT_LIMIT, AssetRegistry, check_amount

log = logging.getLogger(__name__)

OP_ID_MAX_LEN = 90  # the outbox derives "x:" + op_id for the credit half; the column holds 100
# Bounded memory of applied op ids, so a quick retry is answered without the database; older ones are
# found there (a batch queries the ids it does not remember anyway). ~450 bytes an entry: 50,000 cost a
# shard ~21 MiB (bench/shard_memory.py).
RECENT_OPS_MAX = 50_000
REDELIVER_AFTER_S = 2.0
REDELIVER_MAX_S = 60.0
ALERT_AFTER_ATTEMPTS = 10
WRITE_ATTEMPTS = 3
MYSQL_LOCK_CONFLICTS = (1205, 1213)  # lock wait timeout, deadlock: the server rolled the transaction back
LOAD_PAGE = 10_000


def _is_lock_conflict(exc: peewee.OperationalError) -> bool:
    # peewee wraps the driver's error as (driver_exception, code, message)
    return any(isinstance(arg, int) and arg in MYSQL_LOCK_CONFLICTS for arg in exc.args)


def credit_op_id(transfer_op_id: str) -> str:
    return "x:" + transfer_op_id


@dataclasses.dataclass(slots=True)
class _Planned:
    command: MoneyCommand
    legs: tuple[Leg, ...]
    result: OpResult
    outbox: CrossShardCredit | None = None


@dataclasses.dataclass
class BatchOutcome:
    """What a batch produced: one reply per command (an OpResult or a WalletError), and the messages
    to send now that it is durable."""

    replies: list[OpResult | WalletError]
    credits_to_send: list[tuple[int, CrossShardCredit]]  # (target shard, credit)
    acks_to_send: dict[int, list[str]]  # source shard -> credit op ids now committed here


class ShardLedger:
    def __init__(self, shard_id: int, db: peewee.Database, assets: AssetRegistry,
                 shard_of: Callable[[int], int] | None = None) -> None:
        self.shard_id = shard_id
        self.db = db
        self.assets = assets
        # Where an account lives (the Directory): checks a cross-shard recipient before any money leaves.
        self.shard_of = shard_of
        self.stale = False  # a commit failed with an unknown outcome: reload from the database first
        self.book = Book()
        self.system: dict[str, int] = {}
        self.accounts: dict[int, bool] = {}  # user account id -> on hold
        self.recent: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        # outbox rows not yet acknowledged by their target: credit op id -> (credit, target shard, last sent,
        # times sent)
        self.unacked: dict[str, tuple[CrossShardCredit, int, float, int]] = {}
        self.delivered_pending: list[str] = []  # acks received, to be written with the next batch
        self.batches = 0
        self.last_batch_size = 0

    # -- loading -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Rebuild the shard's memory from the database (on start and after a crash)."""
        for account_id, username, kind, on_hold in self._account_rows():
            if kind == "system":
                self.system[username.split(":")[1]] = account_id
            else:
                self.accounts[account_id] = bool(on_hold)
        missing = [n for n in SYSTEM_ACCOUNT_NAMES if n not in self.system]
        if missing:
            raise RuntimeError(f"shard {self.shard_id} has no system accounts {missing}; run `wallet init`")
        self.book.system_accounts = set(self.system.values())
        owned = set(self.accounts) | self.book.system_accounts
        for account_id, asset, available, frozen in self._balance_rows(owned):
            self.book.load(account_id, asset, available, frozen)
        for row in Outbox.select().where((Outbox.source_shard == self.shard_id) & Outbox.delivered_at.is_null()):
            self.unacked[row.op_id] = (self._credit_from_outbox(row), row.target_shard, 0.0, 0)

    def _account_rows(self):
        """The shard's accounts in pages of LOAD_PAGE (keyset on id): the driver buffers a whole result
        set, so one query for 100,000 accounts would briefly hold them all twice."""
        last_id = 0
        while True:
            page = list(Account.select(Account.id, Account.username, Account.kind, Account.on_hold)
                        .where((Account.shard == self.shard_id) & (Account.id > last_id))
                        .order_by(Account.id).limit(LOAD_PAGE).tuples())
            yield from page
            if len(page) < LOAD_PAGE:
                return
            last_id = page[-1][0]

    def _balance_rows(self, owned: set[int]):
        """Balances of the owned accounts, a range of LOAD_PAGE account ids per query."""
        ids = sorted(owned)
        for start in range(0, len(ids), LOAD_PAGE):
            low, high = ids[start], ids[min(start + LOAD_PAGE, len(ids)) - 1]
            query = (Balance.select(Balance.account_id, Balance.asset, Balance.available, Balance.frozen)
                     .join(Account, on=(Account.id == Balance.account_id))
                     .where((Account.shard == self.shard_id) & Balance.account_id.between(low, high)))
            for row in query.tuples():
                if row[0] in owned:
                    yield row

    def _credit_from_outbox(self, row: Outbox) -> CrossShardCredit:
        data = json.loads(row.payload)
        return CrossShardCredit(op_id=row.op_id, account_id=data["to_account"], source_op_id=row.source_op_id,
                                source_shard=row.source_shard, from_account=data["from_account"],
                                asset=data["asset"], amount=int(data["amount"]))

    def account_opened(self, account_id: int) -> None:
        self.accounts.setdefault(account_id, False)

    def is_known(self, account_id: int) -> bool:
        """Known user account of this shard; a registration racing its AccountOpened is looked up."""
        if account_id in self.accounts:
            return True
        row = Account.get_or_none((Account.id == account_id) & (Account.shard == self.shard_id)
                                  & (Account.kind == "user"))
        if row is not None:
            self.accounts[account_id] = bool(row.on_hold)
        return row is not None

    # -- queries -----------------------------------------------------------------------------------
    def balances(self, account_id: int) -> dict[str, tuple[int, int]]:
        # After a commit of unknown outcome memory may be behind the database (or half reloaded): never show it.
        if self.stale and not self.reload():
            raise Unavailable("balances are being reloaded from the database; retry shortly")
        if not self.is_known(account_id):
            raise UnknownAccount(f"no account {account_id}")
        return {symbol: self.book.balance(account_id, symbol) for symbol in self.assets.symbols}

    def set_hold(self, account_id: int, on_hold: bool) -> None:
        if self.is_known(account_id):
            self.accounts[account_id] = on_hold

    # -- the batch ---------------------------------------------------------------------------------
    def apply_batch(self, commands: Sequence[MoneyCommand]) -> BatchOutcome:
        """Apply a batch in memory, write it in one transaction, and say what to reply.

        If the commit fails, the batch's in-memory effects are undone and every operation that depended
        on it answers CommitFailed; replays of earlier, committed operations still answer their result.
        """
        if self.stale and not self.reload():
            return self._fail_batch(commands, RuntimeError("shard state could not be reloaded"))
        fingerprints = [cmd.fingerprint() for cmd in commands]
        replies: list[OpResult | WalletError | None] = [None] * len(commands)
        try:
            known = self._known_results(commands)
        except Exception as exc:  # noqa: BLE001 - the database failed before anything was applied
            return self._fail_batch(commands, exc)
        planned: list[tuple[int, _Planned]] = []
        in_batch: dict[str, int] = {}  # op id -> index of its first occurrence in this batch
        depends_on_commit: list[int] = []
        for i, cmd in enumerate(commands):
            if cmd.op_id in known:
                replies[i] = self._replay(cmd, fingerprints[i], *known[cmd.op_id])
            elif cmd.op_id in in_batch:
                first = in_batch[cmd.op_id]
                replies[i] = self._replay_in_batch(cmd, fingerprints[i], fingerprints[first], replies[first])
                depends_on_commit.append(i)
            else:
                try:
                    plan = self._plan(cmd)
                    self.book.apply(plan.legs)
                except WalletError as exc:
                    replies[i] = exc
                    if isinstance(exc, (InsufficientFunds, BalanceOverflow)):  # judged on uncommitted state
                        depends_on_commit.append(i)
                    continue
                except Exception as exc:  # noqa: BLE001 - a lookup hit a failing database mid-batch
                    return self._fail_batch(commands, exc)
                in_batch[cmd.op_id] = i
                planned.append((i, plan))
                replies[i] = plan.result
                depends_on_commit.append(i)
        try:
            self._write_retrying_lock_conflicts(planned, fingerprints)
        except Exception as exc:  # noqa: BLE001 - whatever broke the commit, memory must match the database
            self._abandon_batch("shard batch commit failed; rolled back", exc)
            # If the connection died after COMMIT reached the server, the batch may be durable after all:
            # memory is rebuilt from the database (the truth) before anything else is applied or read. A
            # retry of these op ids then finds them committed (a replay) or absent (applied anew): never twice.
            self.stale = True
            self.reload()
            for i in depends_on_commit:
                replies[i] = CommitFailed("the operation may not have been applied; retry with the same id")
            return BatchOutcome(replies, [], {})  # type: ignore[arg-type]
        self.book.commit_batch()
        return self._after_commit(commands, fingerprints, planned, replies)  # type: ignore[arg-type]

    def reload(self) -> bool:
        """Rebuild the whole shard from the database; False (and still stale) if the database is down."""
        try:
            self.book, self.system, self.accounts = Book(), {}, {}
            self.recent.clear()
            self.unacked.clear()
            self.delivered_pending.clear()  # their credits are redelivered and acknowledged again
            self.load()
        except Exception:  # noqa: BLE001 - retried before the next batch
            log.warning("shard reload failed; will retry before the next batch", extra={"shard": self.shard_id},
                        exc_info=True)
            self._reconnect()
            return False
        self.stale = False
        log.info("shard reloaded from the database", extra={"shard": self.shard_id})
        return True

    def _write_retrying_lock_conflicts(self, planned: list[tuple[int, _Planned]], fingerprints: list[str]) -> None:
        """A deadlock or lock-wait timeout rolls the transaction back whole; memory is untouched, so the
        same write may simply be tried again (a bounded number of times)."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                self._write(planned, fingerprints)
                return
            except peewee.OperationalError as exc:
                if attempt == WRITE_ATTEMPTS or not _is_lock_conflict(exc):
                    raise
                log.warning("shard batch hit a lock conflict; retrying", extra={"shard": self.shard_id,
                                                                              "attempt": attempt})

    def _fail_batch(self, commands: Sequence[MoneyCommand], exc: Exception) -> BatchOutcome:
        """The database failed while the batch was planned: undo it in memory, nothing was written."""
        self._abandon_batch("shard batch failed before its write", exc)
        failed = [CommitFailed("the operation was not applied; retry with the same id") for _ in commands]
        return BatchOutcome(failed, [], {})  # type: ignore[arg-type]

    def _abandon_batch(self, what: str, exc: Exception) -> None:
        log.error(what, extra={"shard": self.shard_id, "error": str(exc)})
        self.book.rollback_batch()
        self._reconnect()

    @staticmethod
    def _replay(cmd: MoneyCommand, fingerprint: str, prior_fingerprint: str, prior_result: str) -> OpResult | WalletError:
        if fingerprint != prior_fingerprint:
            return OperationConflict(f"operation id {cmd.op_id!r} was used with different content")
        return OpResult.from_json(prior_result, replayed=True)

    @staticmethod
    def _replay_in_batch(cmd: MoneyCommand, fingerprint: str, first_fingerprint: str,
                         first_reply: OpResult | WalletError | None) -> OpResult | WalletError:
        if fingerprint != first_fingerprint:
            return OperationConflict(f"operation id {cmd.op_id!r} was used with different content")
        if isinstance(first_reply, OpResult):
            return dataclasses.replace(first_reply, replayed=True)
        return first_reply  # type: ignore[return-value]

    def _known_results(self, commands: Sequence[MoneyCommand]) -> dict[str, tuple[str, str]]:
        """Earlier results of these op ids: memory first, then one query for the rest."""
        known: dict[str, tuple[str, str]] = {}
        unknown: dict[str, None] = {}  # ordered set: a batch may repeat an op id
        for cmd in commands:
            hit = self.recent.get(cmd.op_id)
            if hit is not None:
                known[cmd.op_id] = hit
            else:
                unknown[cmd.op_id] = None
        if unknown:
            rows = sql.select_in(self.db, "SELECT op_id, fingerprint, result FROM operation WHERE op_id",
                                 list(unknown))
            for op_id, fingerprint, result in rows:
                known[op_id] = (fingerprint, result)
        return known

    # -- planning: a command becomes balanced legs ------------------------------------------------
    def _plan(self, cmd: MoneyCommand) -> _Planned:
        self._validate_common(cmd)
        done = OpResult(cmd.op_id, "completed")
        sys_acct = self.system
        if isinstance(cmd, Transfer):
            return self._plan_transfer(cmd)
        if isinstance(cmd, CrossShardCredit):
            return _Planned(cmd, (Leg(cmd.asset, sys_acct["transit"], AVAILABLE, cmd.account_id, AVAILABLE,
                                      cmd.amount),), done)
        if isinstance(cmd, Credit):
            return _Planned(cmd, (Leg(cmd.asset, sys_acct["world"], AVAILABLE, cmd.account_id, AVAILABLE,
                                      cmd.amount),), done)
        if isinstance(cmd, Debit):
            return _Planned(cmd, (Leg(cmd.asset, cmd.account_id, AVAILABLE, sys_acct["world"], AVAILABLE,
                                      cmd.amount),), done)
        if isinstance(cmd, Freeze):
            self._check_fee(cmd.fee)
            self._check_not_held(cmd.account_id)
            return _Planned(cmd, (Leg(cmd.asset, cmd.account_id, AVAILABLE, cmd.account_id, FROZEN,
                                      cmd.amount + cmd.fee),), done)
        if isinstance(cmd, Unfreeze):
            return _Planned(cmd, (Leg(cmd.asset, cmd.account_id, FROZEN, cmd.account_id, AVAILABLE,
                                      cmd.amount),), done)
        if isinstance(cmd, Settle):
            self._check_fee(cmd.fee)
            legs = [Leg(cmd.asset, cmd.account_id, FROZEN, sys_acct["world"], AVAILABLE, cmd.amount)]
            if cmd.fee:
                legs.append(Leg(cmd.asset, cmd.account_id, FROZEN, sys_acct["fees"], AVAILABLE, cmd.fee))
            return _Planned(cmd, tuple(legs), done)
        raise ValidationError(f"unsupported command {type(cmd).__name__}")

    def _validate_common(self, cmd: MoneyCommand) -> None:
        # A credit's id is derived from its transfer's ("x:" + id), so it may be that much longer.
        longest = OP_ID_MAX_LEN + len(credit_op_id("")) if isinstance(cmd, CrossShardCredit) else OP_ID_MAX_LEN
        if not isinstance(cmd.op_id, str) or not 0 < len(cmd.op_id) <= longest:
            raise ValidationError(f"operation id must be 1..{OP_ID_MAX_LEN} characters")
        self.assets.get(cmd.asset)  # type: ignore[attr-defined]
        amount = cmd.amount  # type: ignore[attr-defined]
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise InvalidAmount("amount must be an integer number of base units")
        check_amount(amount)
        if not self.is_known(cmd.account_id):
            raise UnknownAccount(f"account {cmd.account_id} is not on shard {self.shard_id}")

    def _plan_transfer(self, cmd: Transfer) -> _Planned:
        if cmd.to_account == cmd.account_id:
            raise SelfTransfer("cannot transfer to the same account")
        self._check_not_held(cmd.account_id)
        if cmd.to_shard == self.shard_id:
            if not self.is_known(cmd.to_account):
                raise UnknownAccount(f"no account {cmd.to_account}")
            leg = Leg(cmd.asset, cmd.account_id, AVAILABLE, cmd.to_account, AVAILABLE, cmd.amount)
            return _Planned(cmd, (leg,), OpResult(cmd.op_id, "completed"))
        if cmd.to_shard < 0 or (self.shard_of is not None and self.shard_of(cmd.to_account) != cmd.to_shard):
            # Money sent to the wrong shard would wait in transit for ever: refuse before it leaves.
            raise WrongShard(f"account {cmd.to_account} does not live on shard {cmd.to_shard}")
        leg = Leg(cmd.asset, cmd.account_id, AVAILABLE, self.system["transit"], AVAILABLE, cmd.amount)
        credit = CrossShardCredit(op_id=credit_op_id(cmd.op_id), account_id=cmd.to_account,
                                  source_op_id=cmd.op_id, source_shard=self.shard_id,
                                  from_account=cmd.account_id, asset=cmd.asset, amount=cmd.amount)
        return _Planned(cmd, (leg,), OpResult(cmd.op_id, "in_transit"), outbox=credit)

    def _check_fee(self, fee: int) -> None:
        if not isinstance(fee, int) or isinstance(fee, bool) or not 0 <= fee < AMOUNT_LIMIT:
            raise InvalidAmount("fee must be a non-negative integer")

    def _check_not_held(self, account_id: int) -> None:
        if self.accounts.get(account_id):
            raise AccountOnHold("the account is on hold for an operator")

    # -- writing -----------------------------------------------------------------------------------
    def _write(self, planned: list[tuple[int, _Planned]], fingerprints: list[str]) -> None:
        if not planned and not self.delivered_pending:
            return
        now = now_ms()
        ops, postings, outbox = [], [], []
        for i, plan in planned:
            cmd = plan.command
            ops.append((cmd.op_id, self.shard_id, cmd.kind, cmd.account_id, fingerprints[i],
                        plan.result.to_json(), now))
            for n, leg in enumerate(plan.legs):
                postings.append((cmd.op_id, n, self.shard_id, leg.asset, leg.debit_account, leg.debit_bucket,
                                 leg.credit_account, leg.credit_bucket, str(leg.amount), now))
            if plan.outbox is not None:
                c = plan.outbox
                payload = json.dumps({"to_account": c.account_id, "from_account": c.from_account,
                                      "asset": c.asset, "amount": str(c.amount)})
                outbox.append((c.op_id, c.source_op_id, self.shard_id, cmd.to_shard, payload, now))  # type: ignore[attr-defined]
        balances = [(a, s, str(av), str(fr)) for a, s, av, fr in self.book.touched()]
        delivered = list(self.delivered_pending)
        with self.db.atomic():
            sql.insert_many(self.db, "operation", ("op_id", "shard", "kind", "account_id", "fingerprint",
                                                   "result", "created_at"), ops)
            sql.insert_many(self.db, "posting", ("op_id", "leg", "shard", "asset", "debit_account",
                                                 "debit_bucket", "credit_account", "credit_bucket", "amount",
                                                 "created_at"), postings)
            sql.insert_many(self.db, "outbox", ("op_id", "source_op_id", "source_shard", "target_shard",
                                                "payload", "created_at"), outbox)
            sql.upsert_balances(self.db, balances)
            if delivered:
                self._mark_delivered(delivered, now)
        del self.delivered_pending[:len(delivered)]

    def _mark_delivered(self, op_ids: list[str], now: int) -> None:
        sql.execute_in(self.db, f"UPDATE outbox SET delivered_at = {self.db.param} WHERE delivered_at IS NULL "
                       "AND op_id", (now,), op_ids)

    def _reconnect(self) -> None:
        """After a failed commit the connection may be dead; give it back so the next batch gets a fresh one."""
        try:
            self.db.close()
        except Exception:  # noqa: BLE001 - a dead connection may fail to close; the pool drops it
            log.debug("closing a failed connection", exc_info=True)
        # No eager reconnect: while the database is down it would raise here; peewee reconnects on next use.

    def _after_commit(self, commands: Sequence[MoneyCommand], fingerprints: list[str],
                      planned: list[tuple[int, _Planned]], replies: list[OpResult | WalletError]) -> BatchOutcome:
        credits: list[tuple[int, CrossShardCredit]] = []
        acks: dict[int, list[str]] = collections.defaultdict(list)
        now = time.monotonic()
        for i, plan in planned:
            cmd = plan.command
            self._remember(cmd.op_id, fingerprints[i], plan.result.to_json())
            if plan.outbox is not None:
                target = cmd.to_shard  # type: ignore[attr-defined]
                credits.append((target, plan.outbox))
                self.unacked[plan.outbox.op_id] = (plan.outbox, target, now, 1)
        # A credit from another shard is acknowledged whether it was applied now or was a replay.
        for cmd, reply in zip(commands, replies):
            if isinstance(cmd, CrossShardCredit) and isinstance(reply, OpResult):
                acks[cmd.source_shard].append(cmd.op_id)
        self.batches += 1
        self.last_batch_size = len(commands)
        return BatchOutcome(list(replies), credits, dict(acks))

    def _remember(self, op_id: str, fingerprint: str, result: str) -> None:
        self.recent[op_id] = (fingerprint, result)
        if len(self.recent) > RECENT_OPS_MAX:
            self.recent.popitem(last=False)

    # -- outbox --------------------------------------------------------------------------------------
    def delivered(self, op_ids: Sequence[str]) -> None:
        for op_id in op_ids:
            if self.unacked.pop(op_id, None) is not None:
                self.delivered_pending.append(op_id)

    def flush_delivered(self) -> None:
        """Write pending delivery marks when no batch is coming to carry them."""
        if self.delivered_pending:
            try:
                self._write([], [])
            except Exception:  # noqa: BLE001 - retried on the next tick
                log.warning("could not mark outbox rows delivered; will retry", exc_info=True)
                self._reconnect()

    def due_for_redelivery(self, now: float | None = None) -> list[tuple[int, CrossShardCredit]]:
        """Outbox credits not acknowledged in time (or left from before a restart), to send again.

        The interval doubles with every attempt (up to a bound), so a target that keeps refusing or is
        stuck is not flooded; past ALERT_AFTER_ATTEMPTS the money waiting in transit is raised to an
        operator, once per credit."""
        now = time.monotonic() if now is None else now
        due = []
        for credit, target, sent, attempts in list(self.unacked.values()):
            if now - sent < min(REDELIVER_AFTER_S * 2 ** max(attempts - 1, 0), REDELIVER_MAX_S):
                continue
            due.append((target, credit))
            self.unacked[credit.op_id] = (credit, target, now, attempts + 1)
            if attempts + 1 == ALERT_AFTER_ATTEMPTS:
                log.critical("cross-shard credit still not acknowledged; money waits in transit",
                             extra={"shard": self.shard_id, "op_id": credit.op_id, "target_shard": target,
                                    "attempts": attempts + 1})
        return due
