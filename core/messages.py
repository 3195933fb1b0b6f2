"""Messages between actors: immutable, serialisable frozen dataclasses of plain values, so a shard can
later live in another process behind the same router.

Money commands carry an `op_id`; applying one twice is a no-op that answers the first result.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from json.encoder import encode_basestring_ascii as _json_str


@dataclasses.dataclass(frozen=True, slots=True)
class OpResult:
    op_id: str
    status: str  # "completed" | "in_transit" (cross-shard transfer, credit owed by the outbox)
    replayed: bool = False
    # What the shard decided, for the operations that decide something: a red packet's id and code (its
    # creation), the amount of a claim. Stored with the result, so a replay answers the same.
    red_packet_id: str | None = None
    code: str | None = None
    amount: int | None = None

    def to_json(self) -> str:
        # The bytes of json.dumps({"op_id": ..., "status": ...}), built directly: it runs for every operation.
        raw = '{"op_id": ' + _json_str(self.op_id) + ', "status": ' + _json_str(self.status)
        if self.red_packet_id is not None:
            raw += ', "red_packet_id": ' + _json_str(self.red_packet_id)
        if self.code is not None:
            raw += ', "code": ' + _json_str(self.code)
        if self.amount is not None:
            raw += ', "amount": "' + str(int(self.amount)) + '"'
        return raw + "}"

    @classmethod
    def from_json(cls, raw: str, replayed: bool) -> OpResult:
        data = json.loads(raw)
        amount = data.get("amount")
        return cls(op_id=data["op_id"], status=data["status"], replayed=replayed,
                   red_packet_id=data.get("red_packet_id"), code=data.get("code"),
                   amount=None if amount is None else int(amount))


class MoneyCommand:
    """Base of the commands a shard applies in a batch. Subclasses are frozen dataclasses."""

    op_id: str
    account_id: int
    kind: str = "money"

    def fingerprint(self) -> str:
        """Hash of the content (everything but the op id): a replay with other content is a conflict.

        The hashed text is json.dumps([class name, {field: value}], sort_keys=True, default=str); ints
        and strings (every field of a well-formed command) are written directly because this runs for
        every command of every batch, anything else goes through json.
        """
        parts = []
        for name in _content_fields(type(self)):
            value = getattr(self, name)
            if type(value) is int:
                parts.append(f'"{name}": {value}')
            elif type(value) is str:
                parts.append(f'"{name}": ' + _json_str(value))
            else:
                fields = {n: getattr(self, n) for n in _content_fields(type(self))}
                raw = json.dumps([type(self).__name__, fields], sort_keys=True, default=str)
                return hashlib.sha256(raw.encode()).hexdigest()
        raw = '["' + type(self).__name__ + '", {' + ", ".join(parts) + "}]"
        return hashlib.sha256(raw.encode()).hexdigest()


@functools.cache
def _content_fields(cls: type) -> tuple[str, ...]:
    """A command class's fields but the op id, sorted (the order json.dumps(sort_keys=True) uses)."""
    return tuple(sorted(f.name for f in dataclasses.fields(cls) if f.name != "op_id"))


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


@dataclasses.dataclass(frozen=True, slots=True)
class CreateRedPacket(MoneyCommand):
    """Escrow `amount` (the packet's total) from the sender's available into the shard's escrow account and
    open a packet of `shares` shares. The shard draws the packet's code and fixes its expiry (now +
    `expires_in_ms`); both are in the result, so a replay answers the same packet."""

    op_id: str
    account_id: int  # the sender; owned by the receiving shard
    asset: str
    amount: int  # the total, base units
    shares: int
    mode: str  # "random" | "equal"
    expires_in_ms: int
    kind = "red_packet"


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimRedPacket(MoneyCommand):
    """Claim one share of the packet with this code, on the sender's shard (the code names it). The shard
    decides the amount; a claimant on another shard is credited through the outbox."""

    op_id: str
    account_id: int  # the claimant; may live on another shard
    claimant_shard: int
    code: str
    kind = "red_packet_claim"


@dataclasses.dataclass(frozen=True, slots=True)
class ExpireRedPacket(MoneyCommand):
    """Refund what is left of an expired packet to its sender, once: the shard makes it on a tick, with the
    op id "e:" + packet id."""

    op_id: str
    account_id: int  # the sender
    red_packet_id: str
    kind = "red_packet_refund"


@dataclasses.dataclass(frozen=True, slots=True)
class UpdateCredentials:
    """Front → Allocator (the writer of account rows): a new password hash and/or pay password hash."""

    account_id: int
    password_hash: str | None = None
    pay_password_hash: str | None = None


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
class AssetBalance:
    asset: str
    available: int
    frozen: int


@dataclasses.dataclass(frozen=True, slots=True)
class Balances:
    """Reply to GetBalances: every configured asset, zero included."""

    account_id: int
    assets: tuple[AssetBalance, ...]

    def of(self, asset: str) -> tuple[int, int]:
        """(available, frozen) of one asset."""
        for entry in self.assets:
            if entry.asset == asset:
                return entry.available, entry.frozen
        raise KeyError(asset)

    def as_dict(self) -> dict[str, tuple[int, int]]:
        return {entry.asset: (entry.available, entry.frozen) for entry in self.assets}


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Self-scheduled timer event (outbox redelivery, chain polling)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """Readiness probe: every actor answers Pong once it has loaded its state."""


@dataclasses.dataclass(frozen=True, slots=True)
class Pong:
    actor: str  # e.g. "shard-2", "allocator", "blockwatch"


@dataclasses.dataclass(frozen=True, slots=True)
class GetStats:
    # False for a cheap answer (readiness probes): BlockWatch then skips its deposit counts, a GROUP BY
    # over the whole deposit table on its own thread.
    detailed: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class ShardStats:
    """Reply of a shard to GetStats."""

    shard: int
    accounts: int
    batches: int
    last_batch_size: int
    queue_depth: int
    outbox_undelivered: int


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStats:
    label: str  # "#0 https://host": never a URL that may carry an API key
    head: int | None
    healthy: bool


@dataclasses.dataclass(frozen=True, slots=True)
class WatcherStats:
    """Reply of BlockWatch to GetStats (deposit counts only when asked `detailed`)."""

    connected: bool
    chain_id: int | None
    tip: int | None
    head: int | None
    scan_lag_blocks: int | None
    ready: bool
    blocks_per_s: float
    blocks_scanned: int
    steps: int
    step_errors: int
    last_error: str | None
    reorgs: int
    reorg_depth_last: int
    reorg_depth_max: int
    deposits_recorded: int
    deposits_credited: int
    credit_failures: int
    credits_refused: int
    reorged_after_credit: int
    deposits_by_status: tuple[tuple[str, int], ...]
    watched_addresses: int
    nodes: tuple[NodeStats, ...]
    active_node: str | None
    node_switches: int

    def deposits_with_status(self, status: str) -> int:
        return dict(self.deposits_by_status).get(status, 0)


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


# -- BlockWatch ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ScanNow:
    """Ask BlockWatch to scan at once (tests, operators): up to `max_steps` steps, or until caught up.
    Answers a ScanReport."""

    max_steps: int = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class ScanReport:
    steps: int
    tip: int | None  # last block whose deposits are recorded
    head: int | None  # the active node's head at the last step
    blocks: int  # blocks recorded by these steps
    deposits: int  # deposits recorded (new or seen again)
    credited: int
    reorgs: int
    errors: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SetAccountHold:
    """BlockWatch → Allocator (the writer of account rows): put an account on hold, or release it (an
    operator). Answers after the row is written and the owning shard holds it."""

    account_id: int
    on_hold: bool
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class SetHold:
    """Allocator → shard: a held account may not transfer or freeze (ShardLedger.set_hold)."""

    account_id: int
    on_hold: bool


# Types that only travel back as answers; every other message type here has a handler in some actor
# (tests/actors/test_dispatch.py).
REPLY_TYPES = (OpResult, Pong, AssetBalance, Balances, ShardStats, NodeStats, WatcherStats, Registered,
               PoolStatusReply, ScanReport)
