"""Treasury moves (DESIGN.md "Treasury"): sweeps of deposit addresses into the hot wallet (ETH, or a token after
an exact gas top-up from the gas wallet) and moves of the hot wallet's surplus to cold storage. Their signed
transactions are `tx_attempt` rows (purpose sweep | gas_topup | cold, ref_id = the sweep); the two new switches
pause sweeps and cold moves apart from withdrawals.

A frozen copy of the table as it was at this migration, independent of storage/models.py.
"""

import peewee

from storage.fields import AmountField


def up(migrator, db):
    class Sweep(peewee.Model):
        id = peewee.BigAutoField()
        kind = peewee.CharField(max_length=8)  # eth | token | cold
        asset = peewee.CharField(max_length=16)
        from_address = peewee.CharField(max_length=42)  # the lane that sends the main transaction
        to_address = peewee.CharField(max_length=42)
        amount = AmountField()  # base units of `asset` moved (an ETH sweep: the winning attempt's value)
        deposit_upto = peewee.BigIntegerField(null=True)  # the newest credited deposit this sweep covers
        status = peewee.CharField(max_length=16)  # topup | signed | broadcast | confirmed | failed
        nonce = peewee.BigIntegerField(null=True)  # of the main transaction, once signed
        topup_amount = AmountField(default=0)  # wei the gas wallet sent first (token sweeps)
        tx_hash = peewee.CharField(max_length=66, null=True)  # the winning main attempt, once final
        block_number = peewee.BigIntegerField(null=True)
        gas_paid = AmountField(null=True)  # wei burnt by the top-up and the main transaction, booked to fees
        needs_operator = peewee.BooleanField(default=False)
        operator_reason = peewee.CharField(max_length=255, null=True)
        created_at = peewee.BigIntegerField()
        updated_at = peewee.BigIntegerField()

        class Meta:
            database = db
            table_name = "sweep"
            indexes = ((("status", "id"), False), (("from_address", "asset", "status"), False),
                       (("from_address", "nonce"), True))

    db.create_tables([Sweep])
    Switch = peewee.Table("operator_switch", ("name", "engaged", "changed_by", "changed_at")).bind(db)
    Switch.insert([{"name": "sweeps_paused", "engaged": False, "changed_at": 0},
                   {"name": "cold_paused", "engaged": False, "changed_at": 0}]).execute()
