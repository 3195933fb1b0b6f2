"""Rows the front writes: login sessions. The front owns no money; these are its only tables.

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
