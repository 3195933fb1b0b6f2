"""The small secrets kept under the key ring, besides private keys: staff TOTP secrets (admin_user), users'
TOTP factors (web_totp) and webhook signing secrets (webhook_endpoint).

Each is one AES-256-GCM layer directly under a master key (`KeyRing.encrypt`, nonce || ciphertext || tag), with
the master key's version in a column beside it and associated data binding it to its row (a ciphertext copied
to another row does not open). Why one layer and not an envelope: a secret is a few dozen bytes, so a rotation
re-encrypting it costs what re-wrapping a data key would, and the row count is small (staff, enrolled users,
endpoints).

`SECRET_COLUMNS` describes where each kind lives, so storage/rotation.py rotates and counts them all by table
and column names. That is also why the users' factor is described here and not imported from web/ (a layer
above): web/totp.py takes its associated data from `user_totp_aad`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from core.keys import KeyRing

STAFF_TOTP, USER_TOTP, WEBHOOK = "staff_totp", "user_totp", "webhook"


def staff_totp_aad(name: str) -> str:
    return f"admin-totp:{name}"


def user_totp_aad(account_id: int) -> str:
    return f"totp:{account_id}"


def webhook_aad(endpoint_id: int, url: str) -> str:
    """Bound to the endpoint's id and URL: a sealed secret moved to another endpoint does not open."""
    return f"webhook-secret:{endpoint_id}:{url}"


@dataclasses.dataclass(frozen=True)
class SecretColumn:
    """One kind of sealed secret: its table, its key, the sealed and version columns, the columns its associated
    data is made of, and (webhooks, rows written before migration 0033) a legacy plaintext column that holds
    the secret until it is sealed; a row never has both."""

    kind: str
    table: str
    id_column: str
    sealed_column: str
    version_column: str
    aad_columns: tuple[str, ...]
    aad: Callable[..., str]
    plaintext_column: str | None = None

    def open(self, ring: KeyRing, sealed: bytes, version: int, aad_values: tuple) -> str:
        """The secret; KeyError if the ring lacks `version`, InvalidTag if the row was changed or moved."""
        return ring.decrypt(self.aad(*aad_values), bytes(sealed), version).decode()

    def seal(self, ring: KeyRing, secret: str, aad_values: tuple) -> tuple[bytes, int]:
        """(sealed bytes, master key version) of `secret` under the ring's current master key."""
        encrypted = ring.encrypt(self.aad(*aad_values), secret.encode())
        return encrypted.ciphertext, encrypted.key_version


SECRET_COLUMNS: tuple[SecretColumn, ...] = (
    SecretColumn(STAFF_TOTP, "admin_user", "id", "totp_secret", "totp_key_version", ("name",), staff_totp_aad),
    SecretColumn(USER_TOTP, "web_totp", "account_id", "ciphertext", "key_version", ("account_id",), user_totp_aad),
    SecretColumn(WEBHOOK, "webhook_endpoint", "id", "secret_sealed", "secret_key_version", ("id", "url"),
                 webhook_aad, plaintext_column="secret"),
)
SECRET_KINDS = tuple(column.kind for column in SECRET_COLUMNS)


def secret_column(kind: str) -> SecretColumn:
    (column,) = [c for c in SECRET_COLUMNS if c.kind == kind]
    return column
