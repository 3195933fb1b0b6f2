"""Messages between actors: immutable, serialisable frozen dataclasses of plain values, so a shard can
later live in another process behind the same router.

Money commands carry an `op_id`; applying one twice is a no-op that answers the first result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json


@dataclasses.dataclass(frozen=True, slots=True)
class OpResult:
    op_id: str
    status: str  # "completed" | "in_transit" (cross-shard transfer, credit owed by the outbox)
    replayed: bool = False

    def to_json(self) -> str:
        return json.dumps({"op_id": self.op_id, "status": self.status})

    @classmethod
    def from_json(cls, raw: str, replayed: bool) -> OpResult:
        data = json.loads(raw)
        return cls(op_id=data["op_id"], status=data["status"], replayed=replayed)


class MoneyCommand:
    """Base of the commands a shard applies in a batch. Subclasses are frozen dataclasses."""

    op_id: str
    account_id: int
    kind: str = "money"

    def fingerprint(self) -> str:
        """Hash of the content (everything but the op id): a replay with other content is a conflict."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "op_id"}  # type: ignore[arg-type]
        raw = json.dumps([type(self).__name__, fields], sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Transfer(MoneyCommand):
    op_id: str
    account_id: int  # the sender; owned by the receiving shard
    to_account: int
    to_shard: int
    asset: str
    amount: int
    kind = "transfer"


@dataclasses.dataclass(frozen=True, slots=True)
class Credit(MoneyCommand):
    """Credit from outside the ledger (a confirmed deposit; the op id is the deposit id)."""

    op_id: str
    account_id: int
    asset: str
    amount: int
    kind = "credit"


@dataclasses.dataclass(frozen=True, slots=True)
class Debit(MoneyCommand):
    """Money leaves the ledger from available (operator correction)."""

    op_id: str
    account_id: int
    asset: str
    amount: int
    kind = "debit"


@dataclasses.dataclass(frozen=True, slots=True)
class Freeze(MoneyCommand):
    """Reserve amount + fee for a withdrawal: available → frozen."""

    op_id: str
    account_id: int
    asset: str
    amount: int
    fee: int = 0
    kind = "freeze"


@dataclasses.dataclass(frozen=True, slots=True)
class Unfreeze(MoneyCommand):
    """Release a reservation (rejected or failed withdrawal): frozen → available."""

    op_id: str
    account_id: int
    asset: str
    amount: int
    kind = "unfreeze"


@dataclasses.dataclass(frozen=True, slots=True)
class Settle(MoneyCommand):
    """A withdrawal confirmed on chain: frozen amount → world, frozen fee → fees."""

    op_id: str
    account_id: int
    asset: str
    amount: int
    fee: int = 0
    kind = "settle"


@dataclasses.dataclass(frozen=True, slots=True)
class CrossShardCredit(MoneyCommand):
    """Second half of a cross-shard transfer, delivered from the source shard's outbox."""

    op_id: str
    account_id: int  # the recipient; owned by the receiving shard
    source_op_id: str
    source_shard: int
    from_account: int
    asset: str
    amount: int
    kind = "xcredit"


# -- events and queries (not batched money) ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxDelivered:
    """Target shard → source shard: these outbox credits are committed on the target."""

    op_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class AccountOpened:
    """Allocator → shard: a new account is bound to this shard."""

    account_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class AddressAssigned:
    """Allocator → BlockWatch: a pool address now belongs to an account; watch it for deposits."""

    account_id: int
    address: str


@dataclasses.dataclass(frozen=True, slots=True)
class GetBalances:
    account_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Self-scheduled timer event (outbox redelivery, chain polling)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """Readiness probe: every actor answers "pong" once it has loaded its state."""


@dataclasses.dataclass(frozen=True, slots=True)
class GetStats:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Register:
    username: str
    password_hash: str
    pay_password_hash: str


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    account_id: int
    username: str
    shard: int
    deposit_address: str


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStatus:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStatusReply:
    total: int
    assigned: int
    remaining: int
    low: bool


@dataclasses.dataclass(frozen=True, slots=True)
class RefillPool:
    count: int
