"""Events and webhooks: the event outbox (written in the transaction of the state change it reports), the
operators' webhook endpoints, one delivery per (endpoint, event), and the log of every delivery attempt.

A frozen copy of the tables as they were at this migration, independent of storage/events.py and
storage/webhooks.py.
"""

import peewee


def up(migrator, db):
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Event(Base):
        id = peewee.BigAutoField()
        event_id = peewee.CharField(max_length=40, unique=True)
        kind = peewee.CharField(max_length=48)
        account_id = peewee.BigIntegerField(null=True)
        payload = peewee.TextField()
        created_at = peewee.BigIntegerField()
        fanned_at = peewee.BigIntegerField(null=True)
        published_at = peewee.BigIntegerField(null=True)

        class Meta:
            table_name = "event"
            indexes = ((("fanned_at", "id"), False), (("published_at", "id"), False), (("account_id", "id"), False))

    class WebhookEndpoint(Base):
        id = peewee.BigAutoField()
        url = peewee.CharField(max_length=2000)
        secret = peewee.CharField(max_length=80)
        created_at = peewee.BigIntegerField()
        disabled_at = peewee.BigIntegerField(null=True)

        class Meta:
            table_name = "webhook_endpoint"

    class WebhookDelivery(Base):
        id = peewee.BigAutoField()
        endpoint_id = peewee.BigIntegerField()
        event_pk = peewee.BigIntegerField()
        account_id = peewee.BigIntegerField()
        status = peewee.CharField(max_length=16)
        attempts = peewee.IntegerField()
        next_attempt_at = peewee.BigIntegerField()
        created_at = peewee.BigIntegerField()
        delivered_at = peewee.BigIntegerField(null=True)
        last_status = peewee.IntegerField(null=True)
        last_error = peewee.CharField(max_length=255, null=True)

        class Meta:
            table_name = "webhook_delivery"
            indexes = ((("endpoint_id", "event_pk"), True), (("status", "endpoint_id", "account_id", "id"), False))

    class WebhookAttempt(Base):
        id = peewee.BigAutoField()
        delivery_id = peewee.BigIntegerField(index=True)
        at_ms = peewee.BigIntegerField()
        status_code = peewee.IntegerField(null=True)
        error = peewee.CharField(max_length=255, null=True)
        duration_ms = peewee.IntegerField()

        class Meta:
            table_name = "webhook_attempt"

    db.create_tables([Event, WebhookEndpoint, WebhookDelivery, WebhookAttempt])
