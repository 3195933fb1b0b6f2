"""Private keys: generated with libsecp256k1 (coincurve), stored only as envelopes (envelope encryption).

Each private key is encrypted under its own random 32-byte data key (AES-256-GCM, the key's address as
associated data), and the data key is wrapped under a master key (AES-256-GCM, associated data binding it
to the address, the key's purpose and the master key's version). The rows hold the ciphertext, the wrapped
data key and the master key's version; the master keys live only in the service's configuration
(WALLET_MASTER_KEY, WALLET_MASTER_KEYS_RETIRED).

Why two layers: a new master key re-wraps 60-byte data keys (`KeyRing.rewrap`) and never touches the key
ciphertexts, so a rotation is cheap, runs online (the running service opens both versions from its ring),
and a retired master key can be dropped once nothing is wrapped under it. Binding the address and purpose
means a ciphertext or wrapped data key copied to another row (another address, or the hot wallet's row)
fails to open instead of opening the wrong key.

A row written before envelopes (the legacy single layer: the private key encrypted directly under the
master key, the address as associated data) is a `SealedKey` with `wrapped_data_key=None`; it still opens,
and `KeyRing.to_envelope` (run by `wallet keys rotate`) converts it.

Nonces are 96 random bits. A data key encrypts one message; a master key wraps one data key per private
key, far below the 2**32 random-nonce encryptions NIST allows a GCM key.

Keystore v3 (scrypt) would take ~100 ms a key; a pool of 100,000 needs microseconds a key. Keys are never
logged or returned by any API: `SealedKey`'s repr shows the address and version only.
"""

from __future__ import annotations

import dataclasses
import os

from coincurve import PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

NONCE_BYTES = 12
KEY_BYTES = 32
TAG_BYTES = 16
SEALED_BYTES = NONCE_BYTES + KEY_BYTES + TAG_BYTES  # a ciphertext of a private key, and a wrapped data key
DEPOSIT_PURPOSE = "deposit"  # the pool's keys; the service's own wallets have theirs ("hot", "gas")
_WRAP_DOMAIN = b"wallet/data-key/v1"  # wrapped data keys never verify as legacy ciphertexts, nor the reverse


@dataclasses.dataclass(frozen=True)
class SealedKey:
    """A private key as stored. `ciphertext` = nonce || AES-GCM(data key, private key, aad=address);
    `wrapped_data_key` = nonce || AES-GCM(master key `master_version`, data key, aad=purpose, address, version),
    or None for a legacy row, whose ciphertext is under the master key itself."""

    address: str  # EIP-55
    ciphertext: bytes = dataclasses.field(repr=False)
    wrapped_data_key: bytes | None = dataclasses.field(repr=False)
    master_version: int
    purpose: str = DEPOSIT_PURPOSE

    @property
    def is_legacy(self) -> bool:
        return self.wrapped_data_key is None


@dataclasses.dataclass(frozen=True)
class EncryptedKey:
    """The legacy single layer (before envelopes): kept to read old rows and to write them in tests."""

    address: str  # EIP-55
    ciphertext: bytes = dataclasses.field(repr=False)  # nonce || AES-GCM(ciphertext + tag)
    key_version: int


class KeyRing:
    """Master keys by version. New envelopes are wrapped under the current version, which must be the highest
    (versions only go up: a version number never names two keys); every version in the ring opens."""

    def __init__(self, keys: dict[int, bytes], current: int | None = None) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one master key")
        for version, key in keys.items():
            if not isinstance(version, int) or version < 1:
                raise ValueError("master key versions are positive integers")
            if len(key) != KEY_BYTES:
                raise ValueError("master keys are 32 bytes")
        if len(set(keys.values())) != len(keys):
            raise ValueError("one master key is given under two versions")
        highest = max(keys)
        if current is not None and current != highest:
            raise ValueError(f"the current master key (version {current}) must have the highest version; "
                             f"the ring holds version {highest}")
        self._aead = {version: AESGCM(key) for version, key in keys.items()}
        self.current_version = highest

    @classmethod
    def single(cls, master_key: bytes, version: int = 1) -> KeyRing:
        return cls({version: master_key})

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._aead))

    def __repr__(self) -> str:
        return f"KeyRing(versions={self.versions}, current={self.current_version})"

    # -- envelopes -----------------------------------------------------------------------------------------

    def seal(self, address: str, private_key: bytes, purpose: str = DEPOSIT_PURPOSE) -> SealedKey:
        """The private key under a fresh data key, the data key wrapped under the current master key."""
        randomness = os.urandom(KEY_BYTES + 2 * NONCE_BYTES)  # one call: the pool seals 100,000 keys at a time
        data_key, key_nonce, wrap_nonce = (randomness[:KEY_BYTES], randomness[KEY_BYTES:KEY_BYTES + NONCE_BYTES],
                                           randomness[KEY_BYTES + NONCE_BYTES:])
        version = self.current_version
        ciphertext = key_nonce + AESGCM(data_key).encrypt(key_nonce, private_key, address.encode())
        wrapped = wrap_nonce + self._aead[version].encrypt(wrap_nonce, data_key, _wrap_aad(address, purpose, version))
        return SealedKey(address, ciphertext, wrapped, version, purpose)

    def open(self, sealed: SealedKey) -> bytes:
        """The private key. Raises cryptography's InvalidTag if anything was changed or moved, and KeyError
        naming the version if the ring lacks the master key it is wrapped under."""
        if sealed.wrapped_data_key is None:
            return self.decrypt(sealed.address, sealed.ciphertext, sealed.master_version)
        data_key = self._unwrap(sealed)
        return _decrypt(AESGCM(data_key), sealed.ciphertext, sealed.address.encode())

    def rewrap(self, sealed: SealedKey) -> SealedKey:
        """The same ciphertext with its data key wrapped under the current master key (a no-op if it is)."""
        if sealed.wrapped_data_key is None:
            raise ValueError(f"{sealed.address} is a legacy single-layer key: convert it with to_envelope")
        if sealed.master_version == self.current_version:
            return sealed
        data_key = self._unwrap(sealed)
        wrapped = self._wrap(data_key, sealed.address, sealed.purpose, self.current_version)
        return dataclasses.replace(sealed, wrapped_data_key=wrapped, master_version=self.current_version)

    def to_envelope(self, sealed: SealedKey) -> SealedKey:
        """A legacy row as an envelope under the current master key: the one case where the ciphertext changes
        (there was no data key to keep). An envelope is only re-wrapped."""
        if sealed.wrapped_data_key is not None:
            return self.rewrap(sealed)
        return self.seal(sealed.address, self.open(sealed), sealed.purpose)

    def is_current(self, sealed: SealedKey) -> bool:
        """True when nothing is left to do for this key in a rotation."""
        return sealed.wrapped_data_key is not None and sealed.master_version == self.current_version

    # -- the legacy single layer -----------------------------------------------------------------------------

    def encrypt(self, address: str, private_key: bytes) -> EncryptedKey:
        return EncryptedKey(address, _encrypt(self._master(self.current_version), private_key, address.encode()),
                            self.current_version)

    def decrypt(self, address: str, ciphertext: bytes, key_version: int) -> bytes:
        return _decrypt(self._master(key_version), ciphertext, address.encode())

    # -- internals -----------------------------------------------------------------------------------------

    def _master(self, version: int) -> AESGCM:
        try:
            return self._aead[version]
        except KeyError:
            raise KeyError(f"master key version {version} is not in the ring (versions {self.versions}): "
                           "give it in WALLET_MASTER_KEYS_RETIRED until `wallet keys rotate` has run") from None

    def _wrap(self, data_key: bytes, address: str, purpose: str, version: int) -> bytes:
        return _encrypt(self._master(version), data_key, _wrap_aad(address, purpose, version))

    def _unwrap(self, sealed: SealedKey) -> bytes:
        assert sealed.wrapped_data_key is not None
        return _decrypt(self._master(sealed.master_version), sealed.wrapped_data_key,
                        _wrap_aad(sealed.address, sealed.purpose, sealed.master_version))


def _wrap_aad(address: str, purpose: str, version: int) -> bytes:
    if not purpose.isalnum():
        raise ValueError(f"a key purpose is a word, got {purpose!r}")
    return b"|".join((_WRAP_DOMAIN, purpose.encode(), address.encode(), str(version).encode()))


def _encrypt(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def _decrypt(aead: AESGCM, sealed: bytes, aad: bytes) -> bytes:
    return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)


def address_of(private_key: PrivateKey) -> str:
    public = private_key.public_key.format(compressed=False)[1:]
    return to_checksum_address(keccak(public)[-20:])


def generate_sealed(ring: KeyRing, count: int = 1, purpose: str = DEPOSIT_PURPOSE) -> tuple[SealedKey, ...]:
    """`count` new private keys, each sealed in its own envelope under the ring's current master key."""
    sealed = []
    for _ in range(count):
        key = PrivateKey()
        sealed.append(ring.seal(address_of(key), key.secret, purpose))
    return tuple(sealed)


def generate_encrypted(ring: KeyRing) -> EncryptedKey:
    """A new key in the legacy single layer (for tests of legacy rows and the before/after benchmark)."""
    key = PrivateKey()
    return ring.encrypt(address_of(key), key.secret)
