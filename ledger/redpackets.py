"""Red packets on the sender's shard: the split rules, the packets a shard holds in memory, and the planners of
the three commands (create, claim, expire). Pure: nothing here reads the database or the clock; the shard
passes the batch's wall-clock time and a random source in the view (ledger/planning.py `ShardView`).

Money (double entry, per shard):
    create:            sender available  → escrow                       (the total)
    claim, same shard: escrow            → claimant available           (the share)
    claim, elsewhere:  escrow            → transit, then on the claimant's shard transit → claimant (outbox)
    expire:            escrow            → sender available             (what is left, once: op id "e:" + id)
So a shard's escrow balance is the sum of what its open packets have left (`wallet audit` checks it).

States: open → claimed_out (the last share taken) | expired (the rest refunded). The amount of each claim is
decided here, in arrival order, and stored in the operation's result, so a replayed claim answers the same.
Random mode is "double average": a share is uniform in [1, 2 × remaining / shares left] (and never so large
that a later share could not get 1 unit); the last share takes the rest. Equal mode gives total // shares to
each share and the remainder to the last.

Claiming one's own packet is allowed (as in a group chat: the sender may take a share too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from typing import Callable, Protocol

from core.errors import (
    AccountOnHold, AlreadyClaimed, ClaimedOut, InvalidRedPacket, RedPacketExpired, UnknownAccount, UnknownRedPacket,
    WrongShard,
)
from core.limits import CREDIT_OP_PREFIX, RED_PACKET_CODE_RANDOM_BITS, RED_PACKET_EXPIRES_S_MAX, RED_PACKET_SHARES_MAX
from core.messages import ClaimRedPacket, CreateRedPacket, CrossShardCredit, ExpireRedPacket, OpResult
from ledger.book import AVAILABLE, Leg

OPEN, CLAIMED_OUT, EXPIRED = "open", "claimed_out", "expired"
MODES = ("random", "equal")
EXPIRE_OP_PREFIX = "e:"


class RandomSource(Protocol):
    def randint(self, a: int, b: int) -> int: ...

    def getrandbits(self, k: int) -> int: ...


class KeyedRandom(random.Random):
    """A cryptographically strong generator that makes no system call per draw: SHA-256 of a secret 256-bit key
    (from the OS, once) and a counter, the key itself re-derived after each draw (a later key does not give away
    earlier draws). random.SystemRandom reads os.urandom on every draw, and that call releases the GIL: a
    shard thread drawing a share per claim then waited on the HTTP threads for the GIL after each one."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(32)
        self._counter = 0
        super().__init__()

    def seed(self, *args: object, **kwargs: object) -> None:  # random.Random.__init__ calls it; the key is the seed
        pass

    def getrandbits(self, k: int) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        blocks = bytearray()
        while len(blocks) * 8 < k:
            self._counter += 1
            blocks += hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()
        self._key = hashlib.sha256(b"next" + self._key).digest()
        return int.from_bytes(blocks, "big") >> (len(blocks) * 8 - k) if k else 0

    def random(self) -> float:
        return self.getrandbits(53) / (1 << 53)

    def randint(self, a: int, b: int) -> int:
        """Uniform in [a, b] up to a bias below 2**-64: one draw of 64 bits more than the range needs (the
        rejection loop of random.Random costs a draw and more per call, on a shard's hot path)."""
        span = b - a + 1
        if span < 1:
            raise ValueError(f"empty range [{a}, {b}]")
        return a + self.getrandbits(span.bit_length() + 64) % span

    def getstate(self):  # noqa: ANN201 - like SystemRandom: there is no state to hand out
        raise NotImplementedError("a keyed generator's state is its secret key")

    setstate = getstate


def packet_id_of(create_op_id: str) -> str:
    """A packet's id follows from its creation's op id: a replay names the same packet. It is not the code
    (which alone lets anyone claim), so the sender can show it around."""
    return "rp_" + hashlib.sha256(create_op_id.encode()).hexdigest()[:24]


def expire_op_id(packet_id: str) -> str:
    return EXPIRE_OP_PREFIX + packet_id


def new_code(shard: int, rng: RandomSource) -> str:
    """Two decimal digits naming the shard (so the front routes a claim without a lookup), then 160 random
    bits as 40 hex digits."""
    return f"{shard:02d}" + format(rng.getrandbits(RED_PACKET_CODE_RANDOM_BITS), f"0{RED_PACKET_CODE_RANDOM_BITS // 4}x")


def shard_of_code(code: str) -> int | None:
    """The shard a well-formed code names; None for anything that is not a code."""
    if len(code) != 2 + RED_PACKET_CODE_RANDOM_BITS // 4 or not code[:2].isdigit():
        return None
    if any(c not in "0123456789abcdef" for c in code[2:]):
        return None
    return int(code[:2])


def check_shape(total: int, shares: int, mode: str, expires_in_ms: int) -> None:
    """What makes a packet possible at all (the front checks the same before it asks)."""
    if mode not in MODES:
        raise InvalidRedPacket(f"mode must be one of {', '.join(MODES)}")
    if not isinstance(shares, int) or isinstance(shares, bool) or not 1 <= shares <= RED_PACKET_SHARES_MAX:
        raise InvalidRedPacket(f"shares must be 1..{RED_PACKET_SHARES_MAX}")
    if total < shares:
        raise InvalidRedPacket("the total must be at least one base unit per share")
    if (not isinstance(expires_in_ms, int) or isinstance(expires_in_ms, bool)
            or not 1_000 <= expires_in_ms <= RED_PACKET_EXPIRES_S_MAX * 1000):
        raise InvalidRedPacket(f"expires_in_s must be 1..{RED_PACKET_EXPIRES_S_MAX}")


def next_share(mode: str, total: int, shares: int, remaining: int, shares_left: int, rng: RandomSource) -> int:
    """The amount of the next claim. Every share gets at least 1 unit; the last takes the rest."""
    assert 1 <= shares_left <= shares and remaining >= shares_left
    if shares_left == 1:
        return remaining
    if mode == "equal":
        return total // shares
    high = min(2 * remaining // shares_left, remaining - (shares_left - 1))
    return rng.randint(1, high)


@dataclasses.dataclass(slots=True)
class Packet:
    """A packet as its shard holds it. `claimed` are the claimants' account ids."""

    id: str
    code: str
    sender: int
    asset: str
    total: int
    shares: int
    mode: str
    expires_at_ms: int
    remaining: int
    shares_left: int
    status: str = OPEN
    refunded: int = 0
    create_op_id: str = ""
    claimed: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True, slots=True)
class PacketChange:
    """What a command does to a packet; persistence writes it, the shard applies it to memory after the legs.

    `created` inserts the packet row; `claim` inserts a claim row (claimant, amount, op id); every change
    writes the packet's counters, status and refund as they are after it."""

    packet_id: str
    remaining: int
    shares_left: int
    status: str
    refunded: int = 0
    created: Packet | None = None
    claim: tuple[int, int, str, int] | None = None  # (claimant, amount, op id, position: 1 for the first claim)


@dataclasses.dataclass(slots=True)
class PlannedPacket:
    """A red-packet command's plan: the legs, the result, the change, and a credit owed to another shard."""

    legs: tuple[Leg, ...]
    result: OpResult
    change: PacketChange
    outbox: CrossShardCredit | None = None
    outbox_target: int | None = None


class PacketView(Protocol):
    shard_id: int
    system: dict[str, int]
    now_ms: int  # wall-clock time of the batch
    rng: RandomSource

    def is_known(self, account_id: int) -> bool: ...

    def is_held(self, account_id: int) -> bool: ...

    def packet_by_code(self, code: str) -> Packet | None: ...

    def packet(self, packet_id: str) -> Packet | None: ...


def plan_create(cmd: CreateRedPacket, view: PacketView) -> PlannedPacket:
    check_shape(cmd.amount, cmd.shares, cmd.mode, cmd.expires_in_ms)
    if view.is_held(cmd.account_id):
        raise AccountOnHold("the account is on hold for an operator")
    packet_id = packet_id_of(cmd.op_id)
    packet = Packet(id=packet_id, code=new_code(view.shard_id, view.rng), sender=cmd.account_id, asset=cmd.asset,
                    total=cmd.amount, shares=cmd.shares, mode=cmd.mode,
                    expires_at_ms=view.now_ms + cmd.expires_in_ms, remaining=cmd.amount, shares_left=cmd.shares,
                    create_op_id=cmd.op_id)
    leg = Leg(cmd.asset, cmd.account_id, AVAILABLE, view.system["escrow"], AVAILABLE, cmd.amount)
    change = PacketChange(packet_id, packet.remaining, packet.shares_left, OPEN, created=packet)
    return PlannedPacket((leg,), OpResult(cmd.op_id, "completed", red_packet_id=packet_id, code=packet.code), change)


def plan_claim(cmd: ClaimRedPacket, view: PacketView, shard_of: Callable[[int], int] | None) -> PlannedPacket:
    packet = view.packet_by_code(cmd.code)
    if packet is None:
        raise UnknownRedPacket("no red packet has this code")
    if cmd.account_id in packet.claimed:
        raise AlreadyClaimed("this account has claimed this red packet already")
    if packet.status == CLAIMED_OUT:
        raise ClaimedOut("every share of this red packet is taken")
    if packet.status == EXPIRED or view.now_ms >= packet.expires_at_ms:
        raise RedPacketExpired("this red packet has expired")
    elsewhere = cmd.claimant_shard != view.shard_id
    if elsewhere:
        if cmd.claimant_shard < 0 or (shard_of is not None and shard_of(cmd.account_id) != cmd.claimant_shard):
            raise WrongShard(f"account {cmd.account_id} does not live on shard {cmd.claimant_shard}")
    elif not view.is_known(cmd.account_id):
        raise UnknownAccount(f"account {cmd.account_id} is not on shard {view.shard_id}")
    amount = next_share(packet.mode, packet.total, packet.shares, packet.remaining, packet.shares_left, view.rng)
    remaining, shares_left = packet.remaining - amount, packet.shares_left - 1
    change = PacketChange(packet.id, remaining, shares_left, CLAIMED_OUT if shares_left == 0 else OPEN,
                          refunded=packet.refunded, claim=(cmd.account_id, amount, cmd.op_id, packet.shares - shares_left))
    escrow = view.system["escrow"]
    if not elsewhere:
        leg = Leg(packet.asset, escrow, AVAILABLE, cmd.account_id, AVAILABLE, amount)
        return PlannedPacket((leg,), OpResult(cmd.op_id, "completed", red_packet_id=packet.id, amount=amount), change)
    leg = Leg(packet.asset, escrow, AVAILABLE, view.system["transit"], AVAILABLE, amount)
    credit = CrossShardCredit(op_id=CREDIT_OP_PREFIX + cmd.op_id, account_id=cmd.account_id, source_op_id=cmd.op_id,
                              source_shard=view.shard_id, from_account=packet.sender, asset=packet.asset,
                              amount=amount)
    return PlannedPacket((leg,), OpResult(cmd.op_id, "in_transit", red_packet_id=packet.id, amount=amount), change,
                         outbox=credit, outbox_target=cmd.claimant_shard)


def plan_expire(cmd: ExpireRedPacket, view: PacketView) -> PlannedPacket:
    packet = view.packet(cmd.red_packet_id)
    if packet is None or packet.sender != cmd.account_id or cmd.op_id != expire_op_id(packet.id):
        raise UnknownRedPacket(f"no red packet {cmd.red_packet_id} of account {cmd.account_id}")
    if packet.status != OPEN or packet.remaining == 0:
        raise ClaimedOut("the red packet is closed already")
    if view.now_ms < packet.expires_at_ms:
        raise InvalidRedPacket("the red packet has not expired yet")
    leg = Leg(packet.asset, view.system["escrow"], AVAILABLE, packet.sender, AVAILABLE, packet.remaining)
    change = PacketChange(packet.id, 0, packet.shares_left, EXPIRED, refunded=packet.remaining)
    return PlannedPacket((leg,), OpResult(cmd.op_id, "completed", red_packet_id=packet.id, amount=packet.remaining),
                         change)


class PacketBook:
    """The packets of one shard: every open one (with its claimants), and recently closed ones within a bound
    (older ones are read back from the database on demand). Changes of a batch can be undone, as the Book's."""

    def __init__(self, closed_claims_max: int) -> None:
        self.open: dict[str, Packet] = {}  # id -> packet
        self.by_code: dict[str, Packet] = {}  # code -> packet, open and cached closed
        self.closed: dict[str, Packet] = {}  # id -> packet, oldest first (insertion order)
        self.closed_claims = 0
        self.closed_claims_max = closed_claims_max
        self._undo: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self.open)

    def packet(self, packet_id: str) -> Packet | None:
        return self.open.get(packet_id) or self.closed.get(packet_id)

    def add_loaded(self, packet: Packet) -> None:
        """A packet read from the database (committed state: nothing to undo)."""
        if packet.status == OPEN:
            self.open[packet.id] = packet
            self.by_code[packet.code] = packet
        else:  # evicted only between batches: a batch may need every closed packet it loaded
            self._cache_closed(packet, evict=False)

    def apply(self, change: PacketChange) -> None:
        if change.created is not None:
            packet = change.created
            self.open[packet.id] = packet
            self.by_code[packet.code] = packet
            self._undo.append(lambda: (self.open.pop(packet.id, None), self.by_code.pop(packet.code, None)))
            return
        packet = self.open[change.packet_id]
        before = (packet.remaining, packet.shares_left, packet.status, packet.refunded)

        def undo() -> None:
            packet.remaining, packet.shares_left, packet.status, packet.refunded = before
            if change.claim is not None:
                packet.claimed.discard(change.claim[0])
            if self.closed.pop(packet.id, None) is not None:
                self.closed_claims -= len(packet.claimed) + (1 if change.claim is not None else 0)
            self.open[packet.id] = packet
            self.by_code[packet.code] = packet

        packet.remaining, packet.shares_left = change.remaining, change.shares_left
        packet.status, packet.refunded = change.status, change.refunded
        if change.claim is not None:
            packet.claimed.add(change.claim[0])
        self._undo.append(undo)
        if packet.status != OPEN:
            del self.open[packet.id]
            self._cache_closed(packet, evict=False)

    def _cache_closed(self, packet: Packet, evict: bool = True) -> None:
        self.closed[packet.id] = packet
        self.by_code[packet.code] = packet
        self.closed_claims += len(packet.claimed)
        if evict:
            self.evict()

    def evict(self) -> None:
        """Forget the oldest closed packets beyond the bound (only between batches: nothing to undo then)."""
        while self.closed_claims > self.closed_claims_max and len(self.closed) > 1:
            oldest = self.closed.pop(next(iter(self.closed)))
            self.by_code.pop(oldest.code, None)
            self.closed_claims -= len(oldest.claimed)

    def due_for_expiry(self, now_ms: int, limit: int) -> list[Packet]:
        due = [p for p in self.open.values() if p.expires_at_ms <= now_ms and p.remaining > 0]
        due.sort(key=lambda p: p.expires_at_ms)
        return due[:limit]

    def commit_batch(self) -> None:
        self._undo.clear()
        self.evict()

    def rollback_batch(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def clear(self) -> None:
        self.open.clear()
        self.by_code.clear()
        self.closed.clear()
        self.closed_claims = 0
        self._undo.clear()
