"""Peewee models. Each table has one writer (see DESIGN.md "who owns what"):

- Allocator: Account, PoolKey
- TransrvShard: Balance, Operation, Posting, Outbox (rows of its own shard / accounts only)
- BlockWatch: ChainCursor, ChainBlock, Deposit

Timestamps are integer milliseconds since the epoch (portable, sortable, no timezone surprises).
The schema itself is created and changed only by migrations in storage/migrations/.
"""

from __future__ import annotations

import time

import peewee

from storage.db import database_proxy
from storage.fields import AmountField


def now_ms() -> int:
    return int(time.time() * 1000)


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Account(BaseModel):
    id = peewee.BigAutoField()
    username = peewee.CharField(max_length=64, unique=True)
    kind = peewee.CharField(max_length=8)  # "user" | "system"
    shard = peewee.SmallIntegerField(index=True)
    password_hash = peewee.CharField(max_length=255, null=True)
    pay_password_hash = peewee.CharField(max_length=255, null=True)
    deposit_address = peewee.CharField(max_length=42, unique=True, null=True)
    on_hold = peewee.BooleanField(default=False)
    hold_reason = peewee.CharField(max_length=255, null=True)
    created_at = peewee.BigIntegerField(default=now_ms)


class PoolKey(BaseModel):
    """A pre-generated deposit key. Only its envelope is stored (core/keys.py: ciphertext, wrapped data key)."""

    id = peewee.BigAutoField()
    address = peewee.CharField(max_length=42, unique=True)
    encrypted_key = peewee.BlobField()  # nonce (12 bytes) || ciphertext+tag, under the data key (core/keys.py)
    key_version = peewee.SmallIntegerField()  # the master key version wrapped_data_key is under
    wrapped_data_key = peewee.BlobField(null=True)  # None: legacy single layer, encrypted_key under the master key
    account_id = peewee.BigIntegerField(null=True, unique=True)
    created_at = peewee.BigIntegerField(default=now_ms)
    assigned_at = peewee.BigIntegerField(null=True)


class Balance(BaseModel):
    account_id = peewee.BigIntegerField()
    asset = peewee.CharField(max_length=16)
    available = AmountField(default=0)
    frozen = AmountField(default=0)

    class Meta:
        primary_key = peewee.CompositeKey("account_id", "asset")


class Operation(BaseModel):
    """One applied money operation. The primary key is the operation id: applying it twice is impossible."""

    op_id = peewee.CharField(max_length=100, primary_key=True)
    shard = peewee.SmallIntegerField()
    kind = peewee.CharField(max_length=24)
    account_id = peewee.BigIntegerField(index=True)
    fingerprint = peewee.CharField(max_length=64)
    result = peewee.TextField()  # JSON of the reply given to the first caller
    created_at = peewee.BigIntegerField(default=now_ms)


class Posting(BaseModel):
    """A journal line of the double-entry ledger: `amount` leaves (debit_account, debit_bucket) and
    enters (credit_account, credit_bucket). Every posting sums to zero by construction; buckets are
    "a" (available) and "f" (frozen)."""

    id = peewee.BigAutoField()
    op_id = peewee.CharField(max_length=100)
    leg = peewee.SmallIntegerField()
    shard = peewee.SmallIntegerField()
    asset = peewee.CharField(max_length=16)
    debit_account = peewee.BigIntegerField(index=True)
    debit_bucket = peewee.CharField(max_length=1)
    credit_account = peewee.BigIntegerField(index=True)
    credit_bucket = peewee.CharField(max_length=1)
    amount = AmountField()
    created_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        indexes = ((("op_id", "leg"), True),)


class Outbox(BaseModel):
    """A cross-shard credit owed by `source_shard` to `target_shard`, written with the debit."""

    id = peewee.BigAutoField()
    op_id = peewee.CharField(max_length=100, unique=True)  # the credit's op id on the target shard
    source_op_id = peewee.CharField(max_length=100)
    source_shard = peewee.SmallIntegerField()
    target_shard = peewee.SmallIntegerField()
    payload = peewee.TextField()  # JSON: to_account, asset, amount, from_account
    created_at = peewee.BigIntegerField(default=now_ms)
    delivered_at = peewee.BigIntegerField(null=True)

    class Meta:
        indexes = ((("source_shard", "delivered_at"), False),)


MONEY_CORE_MODELS = (Account, PoolKey, Balance, Operation, Posting, Outbox)


class RedPacket(BaseModel):
    """A red packet, owned by its sender's shard (only that shard writes it, in its batch transaction).

    Status: open → claimed_out | expired. `remaining` is what the shard's escrow still holds for it;
    total = sum of its claims + refunded + remaining."""

    id = peewee.CharField(max_length=32, primary_key=True)  # "rp_" + 24 hex of sha256(create op id)
    shard = peewee.SmallIntegerField()
    code = peewee.CharField(max_length=64, unique=True)
    sender_account = peewee.BigIntegerField()
    asset = peewee.CharField(max_length=16)
    total = AmountField()
    shares = peewee.IntegerField()
    mode = peewee.CharField(max_length=8)
    remaining = AmountField()
    shares_left = peewee.IntegerField()
    refunded = AmountField()
    status = peewee.CharField(max_length=16)
    created_at = peewee.BigIntegerField(default=now_ms)
    expires_at = peewee.BigIntegerField()
    closed_at = peewee.BigIntegerField(null=True)
    create_op_id = peewee.CharField(max_length=100, unique=True)

    class Meta:
        table_name = "red_packet"
        indexes = ((("shard", "status"), False), (("sender_account", "created_at"), False))


class RedPacketClaim(BaseModel):
    """One claim of a red packet: an account claims a packet once (the primary key)."""

    red_packet_id = peewee.CharField(max_length=32)
    account_id = peewee.BigIntegerField()
    amount = AmountField()
    position = peewee.IntegerField()  # 1, 2, ...: the order the shard served the claims in
    op_id = peewee.CharField(max_length=100)  # unique as the operation's primary key
    claimed_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "red_packet_claim"
        primary_key = peewee.CompositeKey("red_packet_id", "account_id")


RED_PACKET_MODELS = (RedPacket, RedPacketClaim)


class AdminUser(BaseModel):
    """An operator identity (`wallet admin create`). Only the sha256 of its API token is stored."""

    id = peewee.BigAutoField()
    name = peewee.CharField(max_length=64, unique=True)
    role = peewee.CharField(max_length=16)  # reviewer | operator | auditor
    token_hash = peewee.CharField(max_length=64, unique=True)
    created_at = peewee.BigIntegerField(default=now_ms)
    # The console's login (migration 0040, storage/admins.py): argon2id hash, TOTP secret sealed under the
    # master key, the last TOTP time step accepted, and the lockout after repeated failures.
    password_hash = peewee.CharField(max_length=255, null=True)
    totp_secret = peewee.BlobField(null=True)
    totp_key_version = peewee.SmallIntegerField(null=True)
    totp_last_step = peewee.BigIntegerField(null=True)
    failed_logins = peewee.IntegerField(default=0)
    locked_until_ms = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "admin_user"


class WalletKey(BaseModel):
    """The service's own keys, one per purpose: the hot wallet (withdrawals) and the gas wallet (gas for token
    sweeps), sealed like the pool's keys (core/keys.py). Written by provisioning; only the signer opens them."""

    id = peewee.BigAutoField()
    purpose = peewee.CharField(max_length=16, unique=True)  # hot | gas
    address = peewee.CharField(max_length=42, unique=True)
    ciphertext = peewee.BlobField()
    wrapped_data_key = peewee.BlobField()
    master_version = peewee.SmallIntegerField()
    created_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "wallet_key"


class ChainCursor(BaseModel):
    """BlockWatch's position on one chain: the highest block whose deposits are recorded, written in the
    same transaction as them. `start_height` is the first block it ever scanned (nothing below is read)."""

    chain_id = peewee.BigIntegerField(primary_key=True)
    height = peewee.BigIntegerField()
    block_hash = peewee.CharField(max_length=66, null=True)  # null until the first block is recorded
    start_height = peewee.BigIntegerField()
    updated_at = peewee.BigIntegerField(default=now_ms)


class ChainBlock(BaseModel):
    """A block BlockWatch has read. The rows not orphaned form its view of the canonical chain, against
    which each new block's parent hash is checked; a mismatch is a reorg."""

    id = peewee.BigAutoField()
    chain_id = peewee.BigIntegerField()
    number = peewee.BigIntegerField()
    block_hash = peewee.CharField(max_length=66)
    parent_hash = peewee.CharField(max_length=66)
    orphaned = peewee.BooleanField(default=False)
    seen_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        indexes = ((("chain_id", "block_hash"), True), (("chain_id", "number"), False))


class Deposit(BaseModel):
    """A transfer to a deposit address seen on chain, keyed by (chain, tx hash, log index); native ETH
    uses log index -1. Status: pending, confirmed (credited), orphaned, reorged_after_credit (flagged for
    an operator), below_minimum (recorded, never credited), credit_failed (the shard refused the credit for
    good: out of the due set until an operator sets it back to pending)."""

    id = peewee.BigAutoField()
    chain_id = peewee.BigIntegerField()
    tx_hash = peewee.CharField(max_length=66)
    log_index = peewee.IntegerField()
    account_id = peewee.BigIntegerField()
    address = peewee.CharField(max_length=42)
    asset = peewee.CharField(max_length=16)
    amount = AmountField()
    block_number = peewee.BigIntegerField()
    block_hash = peewee.CharField(max_length=66)
    status = peewee.CharField(max_length=24)
    credited_op_id = peewee.CharField(max_length=100, null=True)
    held_at = peewee.BigIntegerField(null=True)  # when the account hold for a reorged credit was applied
    created_at = peewee.BigIntegerField(default=now_ms)
    updated_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        indexes = (
            (("chain_id", "tx_hash", "log_index"), True),
            (("account_id", "id"), False),
            (("status", "block_number"), False),
        )


CHAIN_MODELS = (ChainCursor, ChainBlock, Deposit)


# -- withdrawals (storage/migrations/0013_withdrawals.py) ----------------------------------------------------
# Writers: the owning shard (rows, every status change that touches money or races with one: reviewing →
# approved | rejected | cancelled, signed | broadcast → confirmed | failed); the signer (approved → signed →
# broadcast with its lane and nonce, the needs_operator flag, nonce lanes, attempts); BlockWatch
# (observations). Each status change is a conditional UPDATE (`WHERE id = ? AND status IN (...)`).

WITHDRAWAL_STATUSES = ("reviewing", "approved", "signed", "broadcast", "confirmed", "failed", "rejected",
                       "cancelled")
WITHDRAWAL_FINAL = ("confirmed", "failed", "rejected", "cancelled")


class Withdrawal(BaseModel):
    id = peewee.BigAutoField()
    op_id = peewee.CharField(max_length=100, unique=True)
    account_id = peewee.BigIntegerField()
    shard = peewee.SmallIntegerField()
    asset = peewee.CharField(max_length=16)
    to_address = peewee.CharField(max_length=42)
    amount = AmountField()
    fee = AmountField()
    speed = peewee.CharField(max_length=8)
    status = peewee.CharField(max_length=16)
    approvals_needed = peewee.SmallIntegerField()
    reason = peewee.CharField(max_length=255, null=True)  # a rejection's
    needs_operator = peewee.BooleanField(default=False)
    operator_reason = peewee.CharField(max_length=255, null=True)
    lane = peewee.CharField(max_length=42, null=True)  # the sending address, once signed
    nonce = peewee.BigIntegerField(null=True)
    tx_hash = peewee.CharField(max_length=66, null=True)  # the winning attempt, once settled
    block_number = peewee.BigIntegerField(null=True)
    gas_paid = AmountField(null=True)
    created_at = peewee.BigIntegerField(default=now_ms)
    updated_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "withdrawal"


class WithdrawalApproval(BaseModel):
    withdrawal_id = peewee.BigIntegerField()
    admin_id = peewee.BigIntegerField()
    admin_name = peewee.CharField(max_length=64)
    created_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "withdrawal_approval"
        primary_key = peewee.CompositeKey("withdrawal_id", "admin_id")


class NonceLane(BaseModel):
    """The next nonce of one sending address: in the database, never in Redis (rule 9)."""

    address = peewee.CharField(max_length=42, primary_key=True)
    next_nonce = peewee.BigIntegerField()
    updated_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "nonce_lane"


class TxAttempt(BaseModel):
    """One signed transaction (original or replacement), committed before it is first sent (rule 4)."""

    id = peewee.BigAutoField()
    purpose = peewee.CharField(max_length=16)
    ref_id = peewee.BigIntegerField()
    lane = peewee.CharField(max_length=42)
    nonce = peewee.BigIntegerField()
    tx_hash = peewee.CharField(max_length=66, unique=True)
    raw = peewee.BlobField()
    max_fee_per_gas = AmountField()
    max_priority_fee_per_gas = AmountField()
    gas_limit = peewee.BigIntegerField()
    value = AmountField()
    kind = peewee.CharField(max_length=16)
    status = peewee.CharField(max_length=16)
    sends = peewee.IntegerField(default=0)
    last_sent_at = peewee.BigIntegerField(null=True)
    last_error = peewee.CharField(max_length=255, null=True)
    created_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "tx_attempt"


class Sweep(BaseModel):
    """A treasury move: a deposit address swept into the hot wallet, or the hot wallet's surplus sent cold."""

    id = peewee.BigAutoField()
    kind = peewee.CharField(max_length=8)  # eth | token | cold
    asset = peewee.CharField(max_length=16)
    from_address = peewee.CharField(max_length=42)
    to_address = peewee.CharField(max_length=42)
    amount = AmountField()
    deposit_upto = peewee.BigIntegerField(null=True)
    status = peewee.CharField(max_length=16)
    nonce = peewee.BigIntegerField(null=True)
    topup_amount = AmountField(default=0)
    tx_hash = peewee.CharField(max_length=66, null=True)
    block_number = peewee.BigIntegerField(null=True)
    gas_paid = AmountField(null=True)
    needs_operator = peewee.BooleanField(default=False)
    operator_reason = peewee.CharField(max_length=255, null=True)
    created_at = peewee.BigIntegerField(default=now_ms)
    updated_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "sweep"


class OperatorSwitch(BaseModel):
    name = peewee.CharField(max_length=32, primary_key=True)  # signing_paused, ...
    engaged = peewee.BooleanField()
    changed_by = peewee.CharField(max_length=64, null=True)
    changed_at = peewee.BigIntegerField()

    class Meta:
        table_name = "operator_switch"


class TxObservation(BaseModel):
    id = peewee.BigAutoField()
    chain_id = peewee.BigIntegerField()
    tx_hash = peewee.CharField(max_length=66)
    block_number = peewee.BigIntegerField()
    block_hash = peewee.CharField(max_length=66)
    succeeded = peewee.BooleanField()
    gas_used = peewee.BigIntegerField()
    effective_gas_price = AmountField()
    orphaned = peewee.BooleanField(default=False)
    settled = peewee.BooleanField(default=False)
    created_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "tx_observation"


# -- reconciliation and proof of reserves (storage/migrations/0055_reserves.py) --------------------------------
# Writers: the reconciler (reconciliation rows), `wallet reserves snapshot` / the reserves builder (the rest).


class Reconciliation(BaseModel):
    """One comparison of the ledger with the chain at one block; `lines` is JSON, one object per asset."""

    id = peewee.BigAutoField()
    block_number = peewee.BigIntegerField()
    block_hash = peewee.CharField(max_length=66)
    clean = peewee.BooleanField()
    lines = peewee.TextField()
    trigger = peewee.CharField(max_length=16)  # interval | cli | admin
    created_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "reconciliation"


class ReserveSecret(BaseModel):
    """The salts' HMAC key, sealed like a private key (core/keys.py, purpose "reserves"). One row, id 1."""

    id = peewee.SmallIntegerField(primary_key=True)
    ciphertext = peewee.BlobField()
    wrapped_data_key = peewee.BlobField()
    master_version = peewee.SmallIntegerField()
    created_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "reserve_secret"


class ReserveSnapshot(BaseModel):
    id = peewee.BigAutoField()
    asset = peewee.CharField(max_length=16)
    block_number = peewee.BigIntegerField(null=True)
    root = peewee.CharField(max_length=64)  # hex, no 0x
    total = AmountField()
    leaf_count = peewee.IntegerField()
    created_at = peewee.BigIntegerField(default=now_ms)

    class Meta:
        table_name = "reserve_snapshot"


class ReserveLeaf(BaseModel):
    snapshot_id = peewee.BigIntegerField()
    position = peewee.IntegerField()
    account_id = peewee.BigIntegerField()
    balance = AmountField()

    class Meta:
        table_name = "reserve_leaf"
        primary_key = peewee.CompositeKey("snapshot_id", "position")
