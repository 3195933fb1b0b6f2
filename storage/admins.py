"""Operator identities: a name, a role, an API token that is shown once and stored only as a hash, and the
console's login (a password and a TOTP second factor).

The token carries 256 random bits, so a plain sha256 is enough to make a stolen database useless for
logging in (a slow password hash protects low-entropy secrets, which this is not). The password is hashed by
the caller (web/security.py's argon2id HASHER; this package sits below web/). The TOTP secret (RFC 6238,
160 random bits) is sealed with AES-GCM under the master key, bound to the staff member's name, so a copy of
the database alone gives no second factor. A code is accepted once: the time step it matched is remembered
and only a later step is accepted next (`claim_totp_step`, a conditional UPDATE, so two logins racing with
one code cannot both win).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets

import peewee
import pyotp

from core.errors import AdminNameTaken, ValidationError
from core.keys import KeyRing
from core.limits import CONSOLE_LOCKOUT_MS, CONSOLE_LOGIN_FAILURES_MAX, TOTP_DIGITS, TOTP_STEP_S, TOTP_WINDOW_STEPS
from storage import stafflog
from storage.models import AdminUser, BaseModel
from storage.sealed_secrets import staff_totp_aad

ROLES = ("reviewer", "operator", "auditor")
TOKEN_PREFIX = "wadm_"  # recognisable in a secret scanner, never in a log
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TOTP_ISSUER = "wallet console"
CLI = stafflog.Actor(None, "cli", "cli")  # whoever runs `wallet admin ...` on the host


@dataclasses.dataclass(frozen=True)
class NewAdmin:
    id: int
    name: str
    role: str
    token: str  # the only copy; the caller shows it once
    totp_secret: str | None = None  # base32; shown once beside the token

    @property
    def totp_uri(self) -> str | None:
        return totp_uri(self.name, self.totp_secret) if self.totp_secret else None


class AdminSession(BaseModel):
    """A console session (web/console/sessions.py): the cookie carries a random token, the row its SHA-256."""

    token_hash = peewee.CharField(max_length=64, primary_key=True)
    admin_id = peewee.BigIntegerField(null=True)  # None until login: the login form's CSRF token lives here
    data = peewee.TextField()
    created_at_ms = peewee.BigIntegerField()
    last_seen_ms = peewee.BigIntegerField()

    class Meta:
        table_name = "admin_session"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_admin(name: str, role: str, password_hash: str | None = None, ring: KeyRing | None = None,
                 by: stafflog.Actor | None = None) -> NewAdmin:
    """With a password hash (and the key ring that seals the TOTP secret), the staff member can also log in
    to the console. With `by`, the creation is appended to the staff log in the same transaction."""
    if not NAME_RE.match(name):
        raise ValidationError("an admin name is 1-64 letters, digits or _.@- and starts with a letter or digit")
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    secret = None
    fields = dict(name=name, role=role, token_hash=hash_token(token))
    if password_hash is not None:
        if ring is None:
            raise ValidationError("a console login needs the master key (WALLET_MASTER_KEY) to seal its TOTP secret")
        secret = pyotp.random_base32()
        sealed = ring.encrypt(_totp_aad(name), secret.encode())
        fields.update(password_hash=password_hash, totp_secret=sealed.ciphertext, totp_key_version=sealed.key_version)
    db = AdminUser._meta.database
    try:
        with db.atomic():
            admin_id = AdminUser.insert(**fields).execute()
            if by is not None:
                stafflog.append(db, by, "admin.create", f"admin:{admin_id}",
                                {"name": name, "role": role, "console_login": password_hash is not None})
    except peewee.IntegrityError:
        raise AdminNameTaken(f"an admin named {name!r} exists") from None
    return NewAdmin(admin_id, name, role, token, secret)


def reset_totp(name: str, ring: KeyRing, by: stafflog.Actor = CLI) -> NewAdmin:
    """A new TOTP secret (the old one stops working at once); the API token is unchanged and not shown."""
    admin = AdminUser.get_or_none(AdminUser.name == name)
    if admin is None:
        raise ValidationError(f"no admin named {name!r}")
    secret = pyotp.random_base32()
    sealed = ring.encrypt(_totp_aad(name), secret.encode())
    db = AdminUser._meta.database
    with db.atomic():
        AdminUser.update(totp_secret=sealed.ciphertext, totp_key_version=sealed.key_version, totp_last_step=None,
                         failed_logins=0, locked_until_ms=None).where(AdminUser.id == admin.id).execute()
        stafflog.append(db, by, "admin.reset_totp", f"admin:{admin.id}", {"name": name})
    return NewAdmin(admin.id, admin.name, admin.role, "", secret)


def admin_for_token(token: str) -> AdminUser | None:
    """The operator a bearer token belongs to, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    return AdminUser.get_or_none(AdminUser.token_hash == hash_token(token))


# -- TOTP ------------------------------------------------------------------------------------------------


def _totp_aad(name: str) -> str:
    return staff_totp_aad(name)  # storage/sealed_secrets.py: `wallet keys rotate` re-encrypts it from there


def totp_uri(name: str, secret: str) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S).provisioning_uri(
        name=name, issuer_name=TOTP_ISSUER)


def totp_secret(admin: AdminUser, ring: KeyRing) -> str | None:
    if admin.totp_secret is None:
        return None
    return ring.decrypt(_totp_aad(admin.name), bytes(admin.totp_secret), admin.totp_key_version).decode()


def totp_step(at_ms: int) -> int:
    return at_ms // 1000 // TOTP_STEP_S


def matching_totp_step(secret: str, code: str, at_ms: int) -> int | None:
    """The time step (within the drift window around `at_ms`) whose code is `code`, or None."""
    if not (len(code) == TOTP_DIGITS and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S)
    now = totp_step(at_ms)
    for step in range(now - TOTP_WINDOW_STEPS, now + TOTP_WINDOW_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def claim_totp_step(admin_id: int, step: int) -> bool:
    """Accept a code's time step once: False if this step (or a later one) was used already (a replay)."""
    claimed = (AdminUser.update(totp_last_step=step)
               .where((AdminUser.id == admin_id)
                      & (AdminUser.totp_last_step.is_null() | (AdminUser.totp_last_step < step))).execute())
    return claimed == 1


# -- lockout ---------------------------------------------------------------------------------------------


def is_locked(admin: AdminUser, at_ms: int) -> bool:
    return admin.locked_until_ms is not None and admin.locked_until_ms > at_ms


def record_failure(admin_id: int, at_ms: int) -> bool:
    """Count a failed login; True if it locks the staff member out (the count then starts again)."""
    AdminUser.update(failed_logins=AdminUser.failed_logins + 1).where(AdminUser.id == admin_id).execute()
    locked = (AdminUser.update(failed_logins=0, locked_until_ms=at_ms + CONSOLE_LOCKOUT_MS)
              .where((AdminUser.id == admin_id) & (AdminUser.failed_logins >= CONSOLE_LOGIN_FAILURES_MAX))
              .execute())
    return locked == 1


def record_success(admin_id: int) -> None:
    AdminUser.update(failed_logins=0, locked_until_ms=None).where(AdminUser.id == admin_id).execute()
