"""Private keys: generated with libsecp256k1 (coincurve), encrypted at rest with AES-256-GCM under the
master key. Only ciphertext is stored; the address is bound into the ciphertext as associated data, so a
ciphertext moved to another row fails to decrypt. Keys are never logged or returned by any API.

Keystore v3 (scrypt) would take ~100 ms a key; a pool of 100,000 needs microseconds a key.
"""

from __future__ import annotations

import dataclasses
import os

from coincurve import PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

NONCE_BYTES = 12


@dataclasses.dataclass(frozen=True)
class EncryptedKey:
    address: str  # EIP-55
    ciphertext: bytes  # nonce || AES-GCM(ciphertext + tag)
    key_version: int


class KeyRing:
    """Master keys by version. New ciphertexts use the newest; old versions stay readable for rotation."""

    def __init__(self, keys: dict[int, bytes]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one master key")
        for key in keys.values():
            if len(key) != 32:
                raise ValueError("master keys are 32 bytes")
        self._aead = {version: AESGCM(key) for version, key in keys.items()}
        self.current_version = max(keys)

    @classmethod
    def single(cls, master_key: bytes) -> KeyRing:
        return cls({1: master_key})

    def encrypt(self, address: str, private_key: bytes) -> EncryptedKey:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.current_version].encrypt(nonce, private_key, address.encode())
        return EncryptedKey(address, nonce + sealed, self.current_version)

    def decrypt(self, address: str, ciphertext: bytes, key_version: int) -> bytes:
        nonce, sealed = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
        return self._aead[key_version].decrypt(nonce, sealed, address.encode())


def address_of(private_key: PrivateKey) -> str:
    public = private_key.public_key.format(compressed=False)[1:]
    return to_checksum_address(keccak(public)[-20:])


def generate_encrypted(ring: KeyRing) -> EncryptedKey:
    key = PrivateKey()
    return ring.encrypt(address_of(key), key.secret)
