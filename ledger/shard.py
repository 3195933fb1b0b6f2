"""The logic of one transrv shard, without threads: apply a batch of money commands to the in-memory book,
write it in one transaction (group commit), and keep the outbox of cross-shard credits.

Three parts, each its own module: planning (ledger/planning.py, pure: a command becomes balanced legs),
persistence (ledger/persistence.py: loading and the batch's one transaction) and the outbox relay
(ledger/outbox.py). This class runs a batch through them and keeps memory equal to the database: a failed
commit undoes the batch in memory, and a commit of unknown outcome reloads the shard from the database.

The TransrvShard actor (actors/transrv_shard.py) is a thin shell over this class.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Callable, Sequence

import peewee

from core.errors import (
    BalanceOverflow, CommitFailed, InsufficientFunds, OperationConflict, Unavailable, UnknownAccount, WalletError,
    refused_for_good,
)
from core.limits import DAILY_WINDOW_MS, RECENT_OPS_MAX, RED_PACKET_CLOSED_CLAIMS_MAX, RED_PACKET_EXPIRE_BATCH_MAX
from core.messages import (
    OUTBOX_CREDITS, ClaimRedPacket, CrossShardCredit, ExpireRedPacket, MoneyCommand, OpResult, RequestWithdrawal,
    ReturnCredit,
)
from core.money import AssetRegistry
from ledger.accounts import SYSTEM_ACCOUNT_NAMES
from ledger.book import Book
from ledger.outbox import OutboxRelay
from ledger.persistence import BatchWrite, ShardStore
from ledger.effects import Planned
from ledger.planning import Planner
from ledger.redpackets import KeyedRandom, Packet, PacketBook, RandomSource, expire_op_id
from ledger.withdrawals import WithdrawalBook, WithdrawalRules
from storage.models import now_ms
from storage.fence import Fence

log = logging.getLogger(__name__)

__all__ = ["BatchOutcome", "ShardLedger"]


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclasses.dataclass
class BatchOutcome:
    """What a batch produced: one reply per command (an OpResult or a WalletError), and the messages
    to send now that it is durable."""

    replies: list[OpResult | WalletError]
    credits_to_send: list[tuple[int, CrossShardCredit | ReturnCredit]]  # (target shard, credit)
    acks_to_send: dict[int, list[str]]  # source shard -> credit op ids now committed here
    approved: list[int] = dataclasses.field(default_factory=list)  # withdrawals this batch moved to approved


class ShardLedger:
    def __init__(self, shard_id: int, db: peewee.Database, assets: AssetRegistry,
                 shard_of: Callable[[int], int] | None = None, clock_ms: Callable[[], int] = monotonic_ms,
                 rules: WithdrawalRules | None = None, wall_clock_ms: Callable[[], int] = now_ms,
                 rng: RandomSource | None = None, fence: Fence | None = None) -> None:
        self.shard_id = shard_id
        self.assets = assets
        self.rules = rules or WithdrawalRules({}, {}, {}, {})
        # Wall time (not monotonic): the 24 h withdrawal limit, rows' timestamps and red packets' expiries are
        # shown to users and outlive restarts. `now_ms` is fixed per batch (red packets read it).
        self.wall_ms = wall_clock_ms
        self.withdrawals = WithdrawalBook(shard_id)
        self._own: dict[str, bool] = {}  # addresses looked up for this batch's withdrawal requests
        self.planner = Planner(assets, shard_of)
        self.store = ShardStore(shard_id, db, fence)
        self.outbox = OutboxRelay(shard_id, clock_ms)
        self.stale = False  # a commit failed with an unknown outcome: reload from the database first
        self.book = Book()
        self.system: dict[str, int] = {}
        self.accounts: dict[int, bool] = {}  # user account id -> on hold
        # Bounded memory of applied op ids (fingerprint, result), so a quick retry needs no query; older ones
        # are found in the database (a batch queries the ids it does not remember anyway).
        self.recent: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self.batches = 0
        self.last_batch_size = 0
        # Red packets' codes and random shares come from a generator keyed by the OS's CSPRNG (tests may pass
        # their own).
        self.rng: RandomSource = rng if rng is not None else KeyedRandom()
        self.now_ms = 0
        self.packets = PacketBook(RED_PACKET_CLOSED_CLAIMS_MAX)

    @property
    def fenced_out(self) -> bool:
        """Cluster mode: another host has taken this shard; nothing this one writes can commit."""
        return self.store.fence is not None and self.store.fence.lost

    @property
    def shard_of(self) -> Callable[[int], int] | None:
        return self.planner.shard_of

    @shard_of.setter
    def shard_of(self, value: Callable[[int], int] | None) -> None:
        self.planner.shard_of = value

    # -- the view planning reads (ledger.planning.ShardView) --------------------------------------------
    def is_known(self, account_id: int) -> bool:
        """Known user account of this shard; a registration racing its AccountOpened is looked up."""
        if account_id in self.accounts:
            return True
        on_hold = self.store.user_account(account_id)
        if on_hold is not None:
            self.accounts[account_id] = on_hold
        return on_hold is not None

    def is_held(self, account_id: int) -> bool:
        return self.accounts.get(account_id, False)

    def is_own_address(self, address: str) -> bool:
        return self._own.get(address, False)

    def packet_by_code(self, code: str) -> Packet | None:
        return self.packets.by_code.get(code)

    def packet(self, packet_id: str) -> Packet | None:
        return self.packets.packet(packet_id)

    # -- loading -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Rebuild the shard's memory from the database (on start and after a crash)."""
        loaded = self.store.accounts()
        missing = [n for n in SYSTEM_ACCOUNT_NAMES if n not in loaded.system]
        if missing:
            raise RuntimeError(f"shard {self.shard_id} has no system accounts {missing}; run `wallet init`")
        self.system, self.accounts = loaded.system, loaded.users
        self.book.system_accounts = set(self.system.values())
        for account_id, asset, available, frozen in self.store.balances(set(self.accounts) | self.book.system_accounts):
            self.book.load(account_id, asset, available, frozen)
        self.outbox.load(self.store.undelivered_outbox())
        self.withdrawals.load(*self.store.open_withdrawals(self.wall_ms() - DAILY_WINDOW_MS),
                              highest_id=self.store.highest_withdrawal_id())
        for packet in self.store.open_packets():
            self.packets.add_loaded(packet)

    def reload(self) -> bool:
        """Rebuild the whole shard from the database; False (and still stale) if the database is down."""
        try:
            self.book, self.system, self.accounts = Book(), {}, {}
            self.withdrawals = WithdrawalBook(self.shard_id)
            self.recent.clear()
            self.outbox.clear()
            self.packets.clear()
            self.load()
        except Exception:  # noqa: BLE001 - retried before the next batch
            log.warning("shard reload failed; will retry before the next batch", extra={"shard": self.shard_id},
                        exc_info=True)
            self.store.reconnect()
            return False
        self.stale = False
        log.info("shard reloaded from the database", extra={"shard": self.shard_id})
        return True

    def account_opened(self, account_id: int) -> None:
        self.accounts.setdefault(account_id, False)

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
        self.now_ms = self.wall_ms()
        try:
            known = self._known_results(commands)
            self._own = self._own_addresses(commands)
            self._load_named_packets(commands)
        except Exception as exc:  # noqa: BLE001 - the database failed before anything was applied
            return self._fail_batch(commands, exc)
        replies: list[OpResult | WalletError | None] = [None] * len(commands)
        planned: list[tuple[Planned, str]] = []
        in_batch: dict[str, int] = {}  # op id -> index of its first occurrence in this batch
        depends_on_commit: list[int] = []
        for i, cmd in enumerate(commands):
            if cmd.op_id in known:
                replies[i] = _replay(cmd, fingerprints[i], *known[cmd.op_id])
                continue
            if cmd.op_id in in_batch:
                first = in_batch[cmd.op_id]
                replies[i] = _replay_in_batch(cmd, fingerprints[i], fingerprints[first], replies[first])
            else:
                try:
                    replies[i] = self._apply_in_memory(cmd, fingerprints[i], planned)
                except WalletError as exc:
                    if type(cmd) is CrossShardCredit and refused_for_good(exc):
                        # The money is already out of the sender's balance: it goes back, never waits for ever.
                        replies[i] = self._refuse_credit(cmd, fingerprints[i], exc, planned)
                        in_batch[cmd.op_id] = i
                    else:
                        replies[i] = exc
                        if not isinstance(exc, (InsufficientFunds, BalanceOverflow)):  # judged on uncommitted state
                            continue
                except Exception as exc:  # noqa: BLE001 - a lookup hit a failing database mid-batch
                    return self._fail_batch(commands, exc)
                else:
                    in_batch[cmd.op_id] = i
            depends_on_commit.append(i)
        try:
            self.store.write(BatchWrite(planned, self.book.touched(), list(self.outbox.marks_unwritten)))
        except Exception as exc:  # noqa: BLE001 - whatever broke the commit, memory must match the database
            return self._commit_failed(replies, depends_on_commit, exc)
        self.outbox.marks_written(len(self.outbox.marks_unwritten))
        self.book.commit_batch()
        self.withdrawals.commit()
        self.packets.commit_batch()
        return self._after_commit(commands, planned, replies)  # type: ignore[arg-type]

    def _apply_in_memory(self, cmd: MoneyCommand, fingerprint: str, planned: list[tuple[Planned, str]]) -> OpResult:
        plan = self.planner.plan(cmd, self)
        self.book.apply(plan.legs)
        for change in plan.then:
            change()
        if plan.red_packet is not None:  # after the legs: a refused leg leaves the packet as it was
            self.packets.apply(plan.red_packet)
        planned.append((plan, fingerprint))
        return plan.result

    def _refuse_credit(self, cmd: CrossShardCredit, fingerprint: str, error: WalletError,
                       planned: list[tuple[Planned, str]]) -> OpResult:
        plan = self.planner.refused_credit(cmd, error, self)
        planned.append((plan, fingerprint))
        return plan.result

    def _commit_failed(self, replies: list, depends_on_commit: list[int], exc: Exception) -> BatchOutcome:
        self._abandon_batch("shard batch commit failed; rolled back", exc)
        # If the connection died after COMMIT reached the server, the batch may be durable after all: memory
        # is rebuilt from the database (the truth) before anything else is applied or read. A retry of these
        # op ids then finds them committed (a replay) or absent (applied anew): never twice.
        self.stale = True
        self.reload()
        for i in depends_on_commit:
            replies[i] = CommitFailed("the operation may not have been applied; retry with the same id")
        return BatchOutcome(replies, [], {})

    def _fail_batch(self, commands: Sequence[MoneyCommand], exc: Exception) -> BatchOutcome:
        """The database failed while the batch was planned: undo it in memory, nothing was written."""
        self._abandon_batch("shard batch failed before its write", exc)
        failed: list[OpResult | WalletError] = [
            CommitFailed("the operation was not applied; retry with the same id") for _ in commands]
        return BatchOutcome(failed, [], {})

    def _abandon_batch(self, what: str, exc: Exception) -> None:
        log.error(what, extra={"shard": self.shard_id, "error": str(exc)})
        self.book.rollback_batch()
        self.withdrawals.rollback()
        self.packets.rollback_batch()
        self.store.reconnect()

    def _load_named_packets(self, commands: Sequence[MoneyCommand]) -> None:
        """Claims of codes memory does not hold (a closed packet it forgot, or no packet): one query for all."""
        codes = {cmd.code for cmd in commands if isinstance(cmd, ClaimRedPacket) and cmd.code not in self.packets.by_code}
        if codes:
            for packet in self.store.packets_by_code(sorted(codes)):
                self.packets.add_loaded(packet)

    def expire_due(self, limit: int = RED_PACKET_EXPIRE_BATCH_MAX) -> BatchOutcome | None:
        """Refund the rest of every open packet past its expiry (a bounded number per call), as one batch. The
        op id comes from the packet, so a refund is applied once, also across a restart."""
        due = self.packets.due_for_expiry(self.wall_ms(), limit)
        if not due:
            return None
        commands = [ExpireRedPacket(op_id=expire_op_id(p.id), account_id=p.sender, red_packet_id=p.id) for p in due]
        outcome = self.apply_batch(commands)
        for packet, reply in zip(due, outcome.replies):
            if isinstance(reply, WalletError):
                log.error("red packet expiry refused", extra={"shard": self.shard_id, "red_packet_id": packet.id,
                                                              "code": reply.code, "detail": reply.detail})
        return outcome

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
            known.update(self.store.known_results(list(unknown)))
        return known

    def _after_commit(self, commands: Sequence[MoneyCommand], planned: list[tuple[Planned, str]],
                      replies: list[OpResult | WalletError]) -> BatchOutcome:
        credits: list[tuple[int, CrossShardCredit | ReturnCredit]] = []
        approved: list[int] = []
        for plan, fingerprint in planned:
            self._remember(plan.command.op_id, fingerprint, plan.result.to_json())
            if plan.result.ref is not None and plan.result.status == "approved":
                approved.append(plan.result.ref)
            if plan.outbox is not None:
                credits.append((plan.outbox_target, plan.outbox))  # type: ignore[arg-type]
                self.outbox.owe(plan.outbox, plan.outbox_target)  # type: ignore[arg-type]
            if isinstance(plan.outbox, ReturnCredit):
                log.warning("cross-shard credit refused for good; its money goes back to the sender", extra={
                    "shard": self.shard_id, "op_id": plan.command.op_id, "code": plan.outbox.reason,
                    "return_op_id": plan.outbox.op_id, "to_shard": plan.outbox_target})
        # A credit from another shard (or its return) is acknowledged whether it was applied now, refused for
        # good (and returned), or a replay: the sender's relay may stop sending it.
        acks: dict[int, list[str]] = collections.defaultdict(list)
        for cmd, reply in zip(commands, replies):
            if isinstance(cmd, OUTBOX_CREDITS) and isinstance(reply, OpResult):
                acks[cmd.source_shard].append(cmd.op_id)
        self.batches += 1
        self.last_batch_size = len(commands)
        return BatchOutcome(list(replies), credits, dict(acks), approved)

    def _own_addresses(self, commands: Sequence[MoneyCommand]) -> dict[str, bool]:
        """Whether each withdrawal destination of the batch is one of ours: one query for the batch."""
        wanted = {cmd.to_address for cmd in commands if isinstance(cmd, RequestWithdrawal)
                  and isinstance(cmd.to_address, str)}
        if not wanted:
            return {}
        own = self.store.own_addresses(sorted(wanted))
        return {address: address in own for address in wanted}

    def _remember(self, op_id: str, fingerprint: str, result: str) -> None:
        self.recent[op_id] = (fingerprint, result)
        if len(self.recent) > RECENT_OPS_MAX:
            self.recent.popitem(last=False)

    # -- outbox --------------------------------------------------------------------------------------
    @property
    def outbox_undelivered(self) -> int:
        return len(self.outbox)

    def delivered(self, op_ids: Sequence[str]) -> None:
        self.outbox.delivered(op_ids)

    def flush_delivered(self) -> None:
        """Write pending delivery marks when no batch is coming to carry them."""
        marks = list(self.outbox.marks_unwritten)
        if not marks:
            return
        try:
            self.store.write(BatchWrite((), (), marks))
        except Exception:  # noqa: BLE001 - retried on the next tick
            log.warning("could not mark outbox rows delivered; will retry", exc_info=True)
            self.store.reconnect()
            return
        self.outbox.marks_written(len(marks))

    def due_for_redelivery(self) -> list[tuple[int, CrossShardCredit | ReturnCredit]]:
        return self.outbox.due()


def _replay(cmd: MoneyCommand, fingerprint: str, prior_fingerprint: str, prior_result: str) -> OpResult | WalletError:
    if fingerprint != prior_fingerprint:
        return OperationConflict(f"operation id {cmd.op_id!r} was used with different content")
    return OpResult.from_json(prior_result, replayed=True)


def _replay_in_batch(cmd: MoneyCommand, fingerprint: str, first_fingerprint: str,
                     first_reply: OpResult | WalletError | None) -> OpResult | WalletError:
    if fingerprint != first_fingerprint:
        return OperationConflict(f"operation id {cmd.op_id!r} was used with different content")
    if isinstance(first_reply, OpResult):
        return dataclasses.replace(first_reply, replayed=True)
    return first_reply  # type: ignore[return-value]
