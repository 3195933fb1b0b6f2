"""Operator identities: a name, a role, and an API token that is shown once and stored only as a hash.

The token carries 256 random bits, so a plain sha256 is enough to make a stolen database useless for
logging in (a slow password hash protects low-entropy secrets, which this is not).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets

import peewee

from storage.models import AdminUser
from core.errors import AdminNameTaken, ValidationError

ROLES = ("reviewer", "operator", "auditor")
TOKEN_PREFIX = "wadm_"  # recognisable in a secret scanner, never in a log
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class NewAdmin:
    id: int
    name: str
    role: str
    token: str  # the only copy; the caller shows it once


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_admin(name: str, role: str) -> NewAdmin:
    if not NAME_RE.match(name):
        raise ValidationError("an admin name is 1-64 letters, digits or _.@- and starts with a letter or digit")
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        admin_id = AdminUser.insert(name=name, role=role, token_hash=hash_token(token)).execute()
    except peewee.IntegrityError:
        raise AdminNameTaken(f"an admin named {name!r} exists") from None
    return NewAdmin(admin_id, name, role, token)


def admin_for_token(token: str) -> AdminUser | None:
    """The operator a bearer token belongs to, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    return AdminUser.get_or_none(AdminUser.token_hash == hash_token(token))
