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
    # "completed" | "in_transit" (cross-shard transfer, credit owed by the outbox) | "returned" (a cross-shard
    # credit its target refused for good: recorded there, and a ReturnCredit goes back to the sender)
    status: str
    replayed: bool = False
    ref: int | None = None  # the row the operation created or changed (a withdrawal's id)
    # What the shard decided, for the operations that decide something: a red packet's id and code (its
    # creation), the amount of a claim. Stored with the result, so a replay answers the same.
    red_packet_id: str | None = None
    code: str | None = None
    amount: int | None = None

    def to_json(self) -> str:
        # The bytes of json.dumps({"op_id": ..., "status": ..., [the optional fields]}), built directly: it runs
        # for every operation.
        raw = '{"op_id": ' + _json_str(self.op_id) + ', "status": ' + _json_str(self.status)
        if self.ref is not None:
            raw += f', "ref": {int(self.ref)}'
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
        return cls(op_id=data["op_id"], status=data["status"], replayed=replayed, ref=data.get("ref"),
                   red_packet_id=data.get("red_packet_id"), code=data.get("code"),
                   amount=None if amount is None else int(amount))


class MoneyCommand:
    """Base of the commands a shard applies in a batch. Subclasses are frozen dataclasses."""

    op_id: str
    account_id: int
    kind: str = "money"

    def fingerprint(self) -> str:
        """Hash of the content (everything but the op id and `server_fields`): a replay with other content is
        a conflict.

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
    """A command class's fields but the op id and what the service itself decided for the first request
    (`server_fields`), sorted (the order json.dumps(sort_keys=True) uses)."""
    skipped = {"op_id", *getattr(cls, "server_fields", ())}
    return tuple(sorted(f.name for f in dataclasses.fields(cls) if f.name not in skipped))


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
class ReturnCredit(MoneyCommand):
    """A cross-shard credit its target refused for good (an amount the recipient cannot hold, an account or
    asset it does not know), coming back to the sender: written by the target with its refusal, delivered
    from the target's outbox to the sender's shard, applied there from transit under its own op id
    (BOUNCE_OP_PREFIX + the transfer's op id). A refused return is not bounced again: it waits in transit
    for an operator (`wallet audit` reports transit older than TRANSIT_AGE_MAX_MS)."""

    op_id: str
    account_id: int  # the transfer's sender; owned by the receiving shard
    source_op_id: str  # the refused credit's op id
    source_shard: int  # the shard that refused it (and sends this)
    from_account: int  # the recipient that could not be credited
    asset: str
    amount: int
    reason: str  # the refusal's code, e.g. "balance_overflow"
    kind = "xreturn"


# What a shard's outbox carries to another shard (the relay, its rows and acknowledgements treat them alike).
OUTBOX_CREDITS = (CrossShardCredit, ReturnCredit)


@dataclasses.dataclass(frozen=True, slots=True)
class BookSweepGas(MoneyCommand):
    """The signer: a treasury move (sweep or cold move, treasury/sweeps.py) is final; the gas it burnt, in wei
    of ETH, leaves the shard's `fees` system account for `world`. No user account is touched: `account_id` is
    0 and the command goes to shard 0. The op id "sw:" + sweep id makes it once only."""

    op_id: str
    account_id: int
    sweep_id: int
    amount: int
    kind = "sweep.gas"


# -- withdrawals (DESIGN.md "Withdrawals"): every transition of a withdrawal that touches money or races
# with one goes through the owning shard, so its mailbox orders them (cancel against approve, ...) ---------


@dataclasses.dataclass(frozen=True, slots=True)
class RequestWithdrawal(MoneyCommand):
    """Check rule 1, freeze amount + fee and write the withdrawal, in one transaction. `fee` was quoted by the
    front and is fixed here. Answers OpResult(status=reviewing|approved, ref=withdrawal id)."""

    op_id: str
    account_id: int
    asset: str
    to_address: str  # EIP-55
    amount: int
    fee: int
    speed: str  # slow | standard | fast
    kind = "withdraw"
    # The fee is the service's quote at the first request: a retry under the same Idempotency-Key gets the first
    # answer whatever the market quotes now, so the fee is not part of what must match.
    server_fields = ("fee",)


@dataclasses.dataclass(frozen=True, slots=True)
class ApproveWithdrawal(MoneyCommand):
    """A reviewer's approval; the last one needed moves the withdrawal to approved."""

    op_id: str
    account_id: int  # the withdrawal's owner (routes to its shard)
    withdrawal_id: int
    admin_id: int
    admin_name: str
    kind = "w.approve"


@dataclasses.dataclass(frozen=True, slots=True)
class RejectWithdrawal(MoneyCommand):
    """A reviewer's rejection while reviewing: unfreezes amount + fee at once."""

    op_id: str
    account_id: int
    withdrawal_id: int
    admin_id: int
    admin_name: str
    reason: str
    kind = "w.reject"


@dataclasses.dataclass(frozen=True, slots=True)
class CancelWithdrawal(MoneyCommand):
    """The owner's cancel while reviewing: unfreezes amount + fee at once."""

    op_id: str
    account_id: int
    withdrawal_id: int
    kind = "w.cancel"


@dataclasses.dataclass(frozen=True, slots=True)
class SettleWithdrawal(MoneyCommand):
    """BlockWatch: one attempt's receipt has `confirmations` on the canonical chain. `succeeded` 1: confirmed,
    frozen amount + fee leave; 0 (reverted): failed, amount + fee back to available, flagged. Either way the
    gas the hot wallet paid (in ETH) is booked from `fees`."""

    op_id: str
    account_id: int
    withdrawal_id: int
    tx_hash: str
    succeeded: int
    gas_paid: int
    block_number: int
    kind = "w.settle"


@dataclasses.dataclass(frozen=True, slots=True)
class WithdrawalsApproved:
    """Shard → signer (blockout_req): these withdrawals are approved and committed; sign them. The database is
    the truth: the signer also finds approved withdrawals there on every tick."""

    withdrawal_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class WatchTransactions:
    """Signer → BlockWatch (blockout_ctx): hashes of attempts just committed; watch each until one is final."""

    tx_hashes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RunSigner:
    """Run the signer's tick now (tests, operators): sign, resend, follow up. Answers SignerStats."""


@dataclasses.dataclass(frozen=True, slots=True)
class RunReconcile:
    """Reconcile now (tests, operators) instead of at the next interval. Answers ReconcileSummary."""


@dataclasses.dataclass(frozen=True, slots=True)
class ReconcileSummary:
    reconciliation_id: int | None  # None: nothing to reconcile yet (no block recorded, or no node answered)
    block_number: int | None
    clean: bool
    drift: tuple[tuple[str, int], ...]  # (asset, holdings - expected) of the assets that drifted
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HotWalletQuery:
    """Ask the signer about the hot wallet (GET /admin/api/v1/hot-wallet). Answers HotWallet."""


@dataclasses.dataclass(frozen=True, slots=True)
class HotWallet:
    address: str
    gas_wallet: str | None
    balances: tuple[tuple[str, int], ...]  # (asset, base units) on chain, latest block
    next_nonce: int | None  # the lane's next nonce (None before the first signature)
    in_flight_count: int  # signed withdrawals whose nonce is not mined yet
    in_flight_eth: int  # the most they may still cost in wei (value + gas limit × max fee)
    in_flight_tokens: tuple[tuple[str, int], ...]
    paused: bool
    waiting_for_funds: int
    gas_balances: tuple[tuple[str, int], ...] = ()  # the gas wallet's, on chain (ETH only: it pays gas)


@dataclasses.dataclass(frozen=True, slots=True)
class SignerStats:
    signed: int
    broadcasts: int
    replacements: int
    rebroadcasts: int
    flagged: int
    waiting_for_funds: int
    paused: bool
    last_error: str | None
    # treasury (treasury/sweeps.py): moves signed and final since the start, and the low marks crossed
    sweeps_signed: int = 0
    sweeps_confirmed: int = 0
    cold_signed: int = 0
    treasury_flagged: int = 0
    hot_low: tuple[str, ...] = ()


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
class StaffRef:
    """Who on the staff asked for a change (the admin console): the actor appends it to the staff log in the
    transaction of the change. Travels inside messages; never a message itself."""

    admin_id: int
    name: str
    role: str


@dataclasses.dataclass(frozen=True, slots=True)
class SetAccountHold:
    """BlockWatch → Allocator (the writer of account rows): put an account on hold, or release it (an
    operator). Answers after the row is written and the owning shard holds it. With `by` (a staff member),
    the hold must be the other way round before (else ValidationError, nothing changes), and the change is
    appended to the staff log in its transaction."""

    account_id: int
    on_hold: bool
    reason: str = ""
    by: StaffRef | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RetryDepositCredit:
    """Console → BlockWatch (the writer of deposits): set a credit_failed deposit back to pending, so the next
    step credits it. Appended to the staff log in the same transaction. Answers CreditRetried."""

    deposit_id: int
    reason: str
    by: StaffRef


@dataclasses.dataclass(frozen=True, slots=True)
class CreditRetried:
    deposit_id: int
    account_id: int
    status: str  # "pending"


@dataclasses.dataclass(frozen=True, slots=True)
class SetHold:
    """Allocator → shard: a held account may not transfer or freeze (ShardLedger.set_hold)."""

    account_id: int
    on_hold: bool


# Types that only travel back as answers; every other message type here has a handler in some actor
# (tests/actors/test_dispatch.py).
REPLY_TYPES = (OpResult, Pong, AssetBalance, Balances, ShardStats, NodeStats, WatcherStats, Registered,
               PoolStatusReply, ScanReport, HotWallet, SignerStats, ReconcileSummary,
               CreditRetried, StaffRef)  # StaffRef: a value inside messages, not sent alone
