"""A shard's planning, pure: a money command becomes balanced legs against the shard's current view.

Nothing here reads the database or the clock: the view (system accounts, which accounts are known and which
are on hold) is passed in. One planner per command type, in one table; a command type with no planner is a
programmer error (a test checks every MoneyCommand subclass has one).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

from core.errors import AccountOnHold, InvalidAmount, SelfTransfer, UnknownAccount, ValidationError, WrongShard
from core.limits import AMOUNT_LIMIT, CREDIT_OP_PREFIX, OP_ID_MAX_LEN
from core.messages import (
    ClaimRedPacket, CreateRedPacket, Credit, CrossShardCredit, Debit, ExpireRedPacket, Freeze, MoneyCommand, OpResult,
    Settle, Transfer, Unfreeze,
)
from core.money import AssetRegistry, check_amount
from ledger import redpackets
from ledger.book import AVAILABLE, FROZEN, Leg


def credit_op_id(transfer_op_id: str) -> str:
    return CREDIT_OP_PREFIX + transfer_op_id


@dataclasses.dataclass(slots=True)
class Planned:
    command: MoneyCommand
    legs: tuple[Leg, ...]
    result: OpResult
    outbox: CrossShardCredit | None = None  # a credit owed to another shard, written with the debit
    outbox_target: int | None = None
    red_packet: redpackets.PacketChange | None = None  # rows of the shard's red packets, written with the legs


class ShardView(Protocol):
    """What planning may know of the shard: its system accounts and its user accounts."""

    shard_id: int
    system: dict[str, int]

    def is_known(self, account_id: int) -> bool: ...

    def is_held(self, account_id: int) -> bool: ...

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
            Freeze: self._freeze,
            Unfreeze: self._unfreeze,
            Settle: self._settle,
            CreateRedPacket: self._create_red_packet,
            ClaimRedPacket: self._claim_red_packet,
            ExpireRedPacket: self._expire_red_packet,
        }
        # Commands whose fields are not (asset, amount) of a known account of this shard: their planner checks them.
        self.own_checks: frozenset[type[MoneyCommand]] = frozenset({ClaimRedPacket, ExpireRedPacket})

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

    def _credit(self, cmd: Credit, view: ShardView) -> Planned:
        return _done(cmd, Leg(cmd.asset, view.system["world"], AVAILABLE, cmd.account_id, AVAILABLE, cmd.amount))

    def _debit(self, cmd: Debit, view: ShardView) -> Planned:
        return _done(cmd, Leg(cmd.asset, cmd.account_id, AVAILABLE, view.system["world"], AVAILABLE, cmd.amount))

    def _freeze(self, cmd: Freeze, view: ShardView) -> Planned:
        _check_fee(cmd.fee)
        _check_not_held(cmd.account_id, view)
        return _done(cmd, Leg(cmd.asset, cmd.account_id, AVAILABLE, cmd.account_id, FROZEN, cmd.amount + cmd.fee))

    def _unfreeze(self, cmd: Unfreeze, view: ShardView) -> Planned:
        return _done(cmd, Leg(cmd.asset, cmd.account_id, FROZEN, cmd.account_id, AVAILABLE, cmd.amount))

    def _settle(self, cmd: Settle, view: ShardView) -> Planned:
        _check_fee(cmd.fee)
        legs = [Leg(cmd.asset, cmd.account_id, FROZEN, view.system["world"], AVAILABLE, cmd.amount)]
        if cmd.fee:
            legs.append(Leg(cmd.asset, cmd.account_id, FROZEN, view.system["fees"], AVAILABLE, cmd.fee))
        return Planned(cmd, tuple(legs), OpResult(cmd.op_id, "completed"))

    def _create_red_packet(self, cmd: CreateRedPacket, view: ShardView) -> Planned:
        return _of_packet(cmd, redpackets.plan_create(cmd, view))

    def _claim_red_packet(self, cmd: ClaimRedPacket, view: ShardView) -> Planned:
        return _of_packet(cmd, redpackets.plan_claim(cmd, view, self.shard_of))

    def _expire_red_packet(self, cmd: ExpireRedPacket, view: ShardView) -> Planned:
        return _of_packet(cmd, redpackets.plan_expire(cmd, view))

    # -- checks -------------------------------------------------------------------------------------
    def _validate_common(self, cmd: MoneyCommand, view: ShardView) -> None:
        # A credit's id is derived from its transfer's ("x:" + id), so it may be that much longer.
        longest = OP_ID_MAX_LEN + len(CREDIT_OP_PREFIX) if isinstance(cmd, CrossShardCredit) else OP_ID_MAX_LEN
        if not isinstance(cmd.op_id, str) or not 0 < len(cmd.op_id) <= longest:
            raise ValidationError(f"operation id must be 1..{OP_ID_MAX_LEN} characters")
        self.assets.get(cmd.asset)  # type: ignore[attr-defined]
        amount = cmd.amount  # type: ignore[attr-defined]
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise InvalidAmount("amount must be an integer number of base units")
        check_amount(amount)
        if not view.is_known(cmd.account_id):
            raise UnknownAccount(f"account {cmd.account_id} is not on shard {view.shard_id}")


def _of_packet(cmd: MoneyCommand, plan: redpackets.PlannedPacket) -> Planned:
    return Planned(cmd, plan.legs, plan.result, outbox=plan.outbox, outbox_target=plan.outbox_target,
                   red_packet=plan.change)


def _check_op_id(op_id: object, longest: int) -> None:
    if not isinstance(op_id, str) or not 0 < len(op_id) <= longest:
        raise ValidationError(f"operation id must be 1..{OP_ID_MAX_LEN} characters")


def _done(cmd: MoneyCommand, leg: Leg) -> Planned:
    return Planned(cmd, (leg,), OpResult(cmd.op_id, "completed"))


def _check_fee(fee: int) -> None:
    if not isinstance(fee, int) or isinstance(fee, bool) or not 0 <= fee < AMOUNT_LIMIT:
        raise InvalidAmount("fee must be a non-negative integer")


def _check_not_held(account_id: int, view: ShardView) -> None:
    if view.is_held(account_id):
        raise AccountOnHold("the account is on hold for an operator")
