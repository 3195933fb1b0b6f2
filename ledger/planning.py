"""A shard's planning, pure: a money command becomes balanced legs against the shard's current view.

Nothing here reads the database or the clock: the view (system accounts, which accounts are known and which
are on hold) is passed in. One planner per command type, in one table; a command type with no planner is a
programmer error (a test checks every MoneyCommand subclass has one).
"""

from __future__ import annotations

from typing import Callable, Protocol

from core.errors import (
    AccountOnHold, InvalidAmount, SelfTransfer, UnknownAccount, ValidationError, WalletError, WrongShard,
)
from core.limits import BOUNCE_OP_PREFIX, CREDIT_OP_PREFIX, OP_ID_MAX_LEN
from core.messages import (
    OUTBOX_CREDITS, ApproveWithdrawal, BookSweepGas, CancelWithdrawal, ClaimRedPacket, CreateRedPacket, Credit, CrossShardCredit,
    Debit, ExpireRedPacket, MoneyCommand, OpResult, RejectWithdrawal, ReturnCredit, SettleWithdrawal, Transfer,
)
from core.money import AssetRegistry, check_amount
from ledger import redpackets, withdrawals
from ledger.book import AVAILABLE, Leg
from ledger.effects import Planned


def credit_op_id(transfer_op_id: str) -> str:
    return CREDIT_OP_PREFIX + transfer_op_id


def return_op_id(transfer_op_id: str) -> str:
    return BOUNCE_OP_PREFIX + transfer_op_id


REFUSED_CREDIT_KIND = "xrefused"  # the operation a target records for a credit it refused for good: no postings


class ShardView(withdrawals.WithdrawalView, Protocol):
    """What planning may know of the shard: its system accounts, its user accounts, its open withdrawals."""

    # For red packets (ledger/redpackets.py PacketView): the batch's wall-clock time, a random source, packets.
    now_ms: int
    rng: redpackets.RandomSource

    def packet_by_code(self, code: str) -> redpackets.Packet | None: ...

    def packet(self, packet_id: str) -> redpackets.Packet | None: ...


class Planner:
    def __init__(self, assets: AssetRegistry, shard_of: Callable[[int], int] | None = None) -> None:
        self.assets = assets
        # Where an account lives (the Directory): checks a cross-shard recipient before any money leaves.
        self.shard_of = shard_of
        self.table: dict[type[MoneyCommand], Callable[[MoneyCommand, ShardView], Planned]] = {
            Transfer: self._transfer,
            CrossShardCredit: self._cross_shard_credit,
            Credit: self._credit,
            Debit: self._debit,
            ReturnCredit: self._return_credit,
            CreateRedPacket: self._create_red_packet,
            ClaimRedPacket: self._claim_red_packet,
            ExpireRedPacket: self._expire_red_packet,
            BookSweepGas: self._book_sweep_gas,
            **withdrawals.PLANNERS,
        }
        # Commands whose fields are not (asset, amount) of a known account of this shard: their planner checks them.
        self.own_checks: frozenset[type[MoneyCommand]] = frozenset({ClaimRedPacket, ExpireRedPacket, BookSweepGas})

    def plan(self, cmd: MoneyCommand, view: ShardView) -> Planned:
        planner = self.table.get(type(cmd))
        if planner is None:
            raise ValidationError(f"unsupported command {type(cmd).__name__}")
        if type(cmd) in self.own_checks:
            _check_op_id(cmd.op_id, OP_ID_MAX_LEN)
        else:
            self._validate_common(cmd, view)
        return planner(cmd, view)

    # -- one planner per command ------------------------------------------------------------------
    def _transfer(self, cmd: Transfer, view: ShardView) -> Planned:
        if cmd.to_account == cmd.account_id:
            raise SelfTransfer("cannot transfer to the same account")
        _check_not_held(cmd.account_id, view)
        if cmd.to_shard == view.shard_id:
            if not view.is_known(cmd.to_account):
                raise UnknownAccount(f"no account {cmd.to_account}")
            leg = Leg(cmd.asset, cmd.account_id, AVAILABLE, cmd.to_account, AVAILABLE, cmd.amount)
            return Planned(cmd, (leg,), OpResult(cmd.op_id, "completed"))
        if cmd.to_shard < 0 or (self.shard_of is not None and self.shard_of(cmd.to_account) != cmd.to_shard):
            # Money sent to the wrong shard would wait in transit for ever: refuse before it leaves.
            raise WrongShard(f"account {cmd.to_account} does not live on shard {cmd.to_shard}")
        leg = Leg(cmd.asset, cmd.account_id, AVAILABLE, view.system["transit"], AVAILABLE, cmd.amount)
        credit = CrossShardCredit(op_id=credit_op_id(cmd.op_id), account_id=cmd.to_account,
                                  source_op_id=cmd.op_id, source_shard=view.shard_id,
                                  from_account=cmd.account_id, asset=cmd.asset, amount=cmd.amount)
        return Planned(cmd, (leg,), OpResult(cmd.op_id, "in_transit"), outbox=credit, outbox_target=cmd.to_shard)

    def _cross_shard_credit(self, cmd: CrossShardCredit, view: ShardView) -> Planned:
        return _done(cmd, Leg(cmd.asset, view.system["transit"], AVAILABLE, cmd.account_id, AVAILABLE, cmd.amount))

    def _return_credit(self, cmd: ReturnCredit, view: ShardView) -> Planned:
        return _done(cmd, Leg(cmd.asset, view.system["transit"], AVAILABLE, cmd.account_id, AVAILABLE, cmd.amount))

    def refused_credit(self, cmd: CrossShardCredit, error: WalletError, view: ShardView) -> Planned:
        """A cross-shard credit this shard refuses for good (`error`, from planning or applying it): recorded
        under its op id with no postings (a redelivery replays the refusal, never applies it later), and
        the money goes back: a ReturnCredit to the sender's shard, owed by this shard's outbox."""
        back = ReturnCredit(op_id=return_op_id(cmd.source_op_id), account_id=cmd.from_account,
                            source_op_id=cmd.op_id, source_shard=view.shard_id, from_account=cmd.account_id,
                            asset=cmd.asset, amount=cmd.amount, reason=error.code)
        return Planned(cmd, (), OpResult(cmd.op_id, "returned"), outbox=back, outbox_target=cmd.source_shard,
                       kind=REFUSED_CREDIT_KIND)

    def _credit(self, cmd: Credit, view: ShardView) -> Planned:
        return _done(cmd, Leg(cmd.asset, view.system["world"], AVAILABLE, cmd.account_id, AVAILABLE, cmd.amount))

    def _debit(self, cmd: Debit, view: ShardView) -> Planned:
        return _done(cmd, Leg(cmd.asset, cmd.account_id, AVAILABLE, view.system["world"], AVAILABLE, cmd.amount))

    def _book_sweep_gas(self, cmd: BookSweepGas, view: ShardView) -> Planned:
        """Gas a treasury move burnt: fees → world, in ETH (custody moves change no user's balance)."""
        if not isinstance(cmd.amount, int) or isinstance(cmd.amount, bool):
            raise InvalidAmount("gas must be an integer number of wei")
        check_amount(cmd.amount)
        return _done(cmd, Leg("ETH", view.system["fees"], AVAILABLE, view.system["world"], AVAILABLE, cmd.amount))

    def _create_red_packet(self, cmd: CreateRedPacket, view: ShardView) -> Planned:
        return _of_packet(cmd, redpackets.plan_create(cmd, view))

    def _claim_red_packet(self, cmd: ClaimRedPacket, view: ShardView) -> Planned:
        return _of_packet(cmd, redpackets.plan_claim(cmd, view, self.shard_of))

    def _expire_red_packet(self, cmd: ExpireRedPacket, view: ShardView) -> Planned:
        return _of_packet(cmd, redpackets.plan_expire(cmd, view))

    # -- checks -------------------------------------------------------------------------------------
    def _validate_common(self, cmd: MoneyCommand, view: ShardView) -> None:
        # A credit's id is derived from its transfer's ("x:" + id, "r:" + id), so it may be that much longer.
        longest = OP_ID_MAX_LEN + len(CREDIT_OP_PREFIX) if isinstance(cmd, OUTBOX_CREDITS) else OP_ID_MAX_LEN
        if not isinstance(cmd.op_id, str) or not 0 < len(cmd.op_id) <= longest:
            raise ValidationError(f"operation id must be 1..{OP_ID_MAX_LEN} characters")
        if type(cmd) not in _WITHOUT_AMOUNT:
            self.assets.get(cmd.asset)  # type: ignore[attr-defined]
            amount = cmd.amount  # type: ignore[attr-defined]
            if not isinstance(amount, int) or isinstance(amount, bool):
                raise InvalidAmount("amount must be an integer number of base units")
            check_amount(amount)
        if not view.is_known(cmd.account_id):
            raise UnknownAccount(f"account {cmd.account_id} is not on shard {view.shard_id}")


# Commands about a withdrawal that already holds its asset and amount.
_WITHOUT_AMOUNT = frozenset({ApproveWithdrawal, RejectWithdrawal, CancelWithdrawal, SettleWithdrawal})


def _of_packet(cmd: MoneyCommand, plan: redpackets.PlannedPacket) -> Planned:
    return Planned(cmd, plan.legs, plan.result, outbox=plan.outbox, outbox_target=plan.outbox_target,
                   red_packet=plan.change)


def _check_op_id(op_id: object, longest: int) -> None:
    if not isinstance(op_id, str) or not 0 < len(op_id) <= longest:
        raise ValidationError(f"operation id must be 1..{OP_ID_MAX_LEN} characters")


def _done(cmd: MoneyCommand, leg: Leg) -> Planned:
    return Planned(cmd, (leg,), OpResult(cmd.op_id, "completed"))


def _check_not_held(account_id: int, view: ShardView) -> None:
    if view.is_held(account_id):
        raise AccountOnHold("the account is on hold for an operator")
