"""Rows the front writes: login sessions and refused money requests. The front owns no money; these are
its only tables.

Only a hash of each bearer token is stored, so a copy of the database does not let anyone log in.
"""

from __future__ import annotations

import peewee

from storage.models import BaseModel, now_ms


class WebSession(BaseModel):
    token_hash = peewee.CharField(max_length=64, primary_key=True)  # sha256 hex of the bearer token
    account_id = peewee.BigIntegerField(index=True)
    created_at = peewee.BigIntegerField(default=now_ms)
    expires_at = peewee.BigIntegerField()
    revoked_at = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "web_session"


class IdempotencyFailure(BaseModel):
    """A money request the service refused for a business reason (insufficient funds, unknown recipient,
    ...): a retry under the same Idempotency-Key gets this answer again, or 422 with another body, until
    the retention has passed (then the row is ignored, and purged by created_at).
    Never the pay password: the fingerprint covers the operation's fields only."""

    account_id = peewee.BigIntegerField()
    key_hash = peewee.CharField(max_length=64)  # sha256 hex of "<op prefix>:<key>": keys are per operation kind
    fingerprint = peewee.CharField(max_length=64)  # sha256 hex of the canonical JSON of the operation's fields
    status = peewee.SmallIntegerField()
    problem = peewee.TextField()  # the problem details body, as answered the first time
    created_at = peewee.BigIntegerField(default=now_ms, index=True)  # ms; the retention counts from here

    class Meta:
        table_name = "idempotency_failure"
        primary_key = peewee.CompositeKey("account_id", "key_hash")


class RecoveryCode(BaseModel):
    """One of an account's ten recovery codes: only its SHA-256 (the codes are 80 random bits: a fast hash is
    enough, unlike a password). `used_at` set: spent."""

    account_id = peewee.BigIntegerField()
    code_hash = peewee.CharField(max_length=64)
    created_at = peewee.BigIntegerField(default=now_ms)
    used_at = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "web_recovery_code"
        primary_key = peewee.CompositeKey("account_id", "code_hash")


class TotpFactor(BaseModel):
    """An account's TOTP secret, sealed under the master key (associated data "totp:<account id>"). Active once
    confirmed with a code; `last_step` is the newest time step accepted, so a code is good once."""

    account_id = peewee.BigIntegerField(primary_key=True)
    ciphertext = peewee.BlobField()
    key_version = peewee.SmallIntegerField()
    created_at = peewee.BigIntegerField(default=now_ms)
    confirmed_at = peewee.BigIntegerField(null=True)
    last_step = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "web_totp"
