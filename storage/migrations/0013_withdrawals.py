"""Withdrawals (DESIGN.md "Withdrawals"): the request rows the shards write with the freeze, reviewers'
approvals, the signer's nonce lanes and transaction attempts, operator switches (pause), and what BlockWatch
observes of our transactions on chain.

A frozen copy of the tables as they were at this migration, independent of storage/models.py.
"""

import peewee

from storage.fields import AmountField


def up(migrator, db):
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Withdrawal(Base):
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
        reason = peewee.CharField(max_length=255, null=True)
        needs_operator = peewee.BooleanField(default=False)
        operator_reason = peewee.CharField(max_length=255, null=True)
        lane = peewee.CharField(max_length=42, null=True)
        nonce = peewee.BigIntegerField(null=True)
        tx_hash = peewee.CharField(max_length=66, null=True)  # the winning attempt, once settled
        block_number = peewee.BigIntegerField(null=True)
        gas_paid = AmountField(null=True)
        created_at = peewee.BigIntegerField()
        updated_at = peewee.BigIntegerField()

        class Meta:
            table_name = "withdrawal"
            indexes = ((("account_id", "id"), False), (("status", "id"), False), (("shard", "status"), False),
                       (("lane", "nonce"), True), (("to_address", "id"), False))

    class WithdrawalApproval(Base):
        withdrawal_id = peewee.BigIntegerField()
        admin_id = peewee.BigIntegerField()
        admin_name = peewee.CharField(max_length=64)
        created_at = peewee.BigIntegerField()

        class Meta:
            table_name = "withdrawal_approval"
            primary_key = peewee.CompositeKey("withdrawal_id", "admin_id")

    class NonceLane(Base):
        address = peewee.CharField(max_length=42, primary_key=True)
        next_nonce = peewee.BigIntegerField()
        updated_at = peewee.BigIntegerField()

        class Meta:
            table_name = "nonce_lane"

    class TxAttempt(Base):
        id = peewee.BigAutoField()
        purpose = peewee.CharField(max_length=16)  # withdrawal | sweep | gas_topup | cold
        ref_id = peewee.BigIntegerField()  # the withdrawal (or sweep) it serves
        lane = peewee.CharField(max_length=42)
        nonce = peewee.BigIntegerField()
        tx_hash = peewee.CharField(max_length=66, unique=True)
        raw = peewee.BlobField()
        max_fee_per_gas = AmountField()
        max_priority_fee_per_gas = AmountField()
        gas_limit = peewee.BigIntegerField()
        value = AmountField()  # wei the transaction itself moves (0 for a token transfer)
        kind = peewee.CharField(max_length=16)  # original | replacement
        status = peewee.CharField(max_length=16)  # signed | broadcast | mined | replaced
        sends = peewee.IntegerField(default=0)
        last_sent_at = peewee.BigIntegerField(null=True)
        last_error = peewee.CharField(max_length=255, null=True)
        created_at = peewee.BigIntegerField()

        class Meta:
            table_name = "tx_attempt"
            indexes = ((("purpose", "ref_id"), False), (("lane", "nonce"), False), (("status", "id"), False))

    class OperatorSwitch(Base):
        name = peewee.CharField(max_length=32, primary_key=True)
        engaged = peewee.BooleanField()
        changed_by = peewee.CharField(max_length=64, null=True)
        changed_at = peewee.BigIntegerField()

        class Meta:
            table_name = "operator_switch"

    class TxObservation(Base):
        """A transaction of ours seen in a block BlockWatch verified."""

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
        created_at = peewee.BigIntegerField()

        class Meta:
            table_name = "tx_observation"
            indexes = ((("chain_id", "tx_hash", "block_hash"), True), (("orphaned", "settled", "block_number"), False))

    db.create_tables([Withdrawal, WithdrawalApproval, NonceLane, TxAttempt, OperatorSwitch, TxObservation])
    OperatorSwitch.insert_many([{"name": "signing_paused", "engaged": False, "changed_at": 0}]).execute()
