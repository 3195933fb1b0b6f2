"""The service's own wallets: the hot wallet (withdrawals are sent from it) and the gas wallet (it pays the gas
of token sweeps). One key per purpose, created once by provisioning (`wallet init`), sealed like the pool's
keys (core/keys.py envelopes, the purpose bound into the wrapped data key); only the signer opens them.

Addresses may be shown (logs, `wallet init`, the admin API); keys never are.
"""

from __future__ import annotations

import logging

import peewee
from cryptography.exceptions import InvalidTag

from core.errors import ConfigError
from core.keys import KeyRing, SealedKey, generate_sealed
from storage.models import ReserveSecret, WalletKey, now_ms

log = logging.getLogger(__name__)

WALLET_PURPOSES = ("hot", "gas")


def ensure_wallet_keys(db: peewee.Database, ring: KeyRing) -> dict[str, str]:
    """Create the wallet keys that are missing (idempotent); returns {purpose: address} for every purpose.

    Keys that exist are checked to open under `ring`: a wrong WALLET_MASTER_KEY stops here with a ConfigError,
    not at the first withdrawal."""
    addresses: dict[str, str] = {}
    for purpose in WALLET_PURPOSES:
        sealed = load_sealed(purpose)
        if sealed is None:
            sealed = _create(db, ring, purpose)
        else:
            _check_opens(ring, sealed)
        addresses[purpose] = sealed.address
    return addresses


def wallet_address(purpose: str) -> str | None:
    row = WalletKey.get_or_none(WalletKey.purpose == _checked(purpose))
    return None if row is None else row.address


def wallet_addresses() -> dict[str, str]:
    """{purpose: address} of the wallet keys that exist."""
    return dict(WalletKey.select(WalletKey.purpose, WalletKey.address).tuples())


def load_sealed(purpose: str) -> SealedKey | None:
    row = WalletKey.get_or_none(WalletKey.purpose == _checked(purpose))
    return None if row is None else sealed_wallet_key(row)


def sealed_wallet_key(row: WalletKey) -> SealedKey:
    return SealedKey(row.address, bytes(row.ciphertext), bytes(row.wrapped_data_key), row.master_version,
                     row.purpose)


# The proof-of-reserves salts' HMAC key (treasury/reserves.py) is an envelope like these keys, under a fixed name.
RESERVE_SECRET_NAME = "reserves-salt-secret"  # the envelope's associated data: no address, a fixed name
RESERVE_SECRET_PURPOSE = "reserves"


def sealed_reserve_secret(row: ReserveSecret) -> SealedKey:
    return SealedKey(RESERVE_SECRET_NAME, bytes(row.ciphertext), bytes(row.wrapped_data_key), row.master_version,
                     RESERVE_SECRET_PURPOSE)


def _create(db: peewee.Database, ring: KeyRing, purpose: str) -> SealedKey:
    (sealed,) = generate_sealed(ring, 1, purpose)
    try:
        with db.atomic():
            WalletKey.insert(purpose=purpose, address=sealed.address, ciphertext=sealed.ciphertext,
                             wrapped_data_key=sealed.wrapped_data_key, master_version=sealed.master_version,
                             created_at=now_ms()).execute()
    except peewee.IntegrityError:  # another provisioning created it meanwhile: that one is the key
        existing = load_sealed(purpose)
        if existing is None:
            raise
        return existing
    log.info("wallet key created", extra={"purpose": purpose, "address": sealed.address,
                                          "master_version": sealed.master_version})
    return sealed


def _check_opens(ring: KeyRing, sealed: SealedKey) -> None:
    try:
        ring.open(sealed)
    except KeyError as exc:
        raise ConfigError(f"the {sealed.purpose} wallet key is under a master key the ring lacks: "
                          f"{exc.args[0]}") from None
    except InvalidTag:
        raise ConfigError(f"the {sealed.purpose} wallet key ({sealed.address}) does not open with master key "
                          f"version {sealed.master_version}: is WALLET_MASTER_KEY (or a retired key) wrong?") from None


def _checked(purpose: str) -> str:
    if purpose not in WALLET_PURPOSES:
        raise ValueError(f"wallet key purpose must be one of {WALLET_PURPOSES}, got {purpose!r}")
    return purpose
