"""Envelope encryption (core/keys.py) and the master keys' configuration (core/config.py): a key opens only
at its own address and purpose, under the master key version it is wrapped under; a re-wrap keeps the
ciphertext; legacy single-layer rows still open and convert; keys appear in no repr or error message."""

from __future__ import annotations

import dataclasses

import pytest
from coincurve import PrivateKey
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings, strategies as st

from core.config import Config
from core.errors import ConfigError
from core.keys import SEALED_BYTES, KeyRing, SealedKey, address_of, generate_encrypted, generate_sealed

K1, K2, K3 = (bytes([n]) * 32 for n in (1, 2, 3))


def test_a_sealed_key_opens_to_its_private_key_and_nothing_shows_it():
    ring = KeyRing.single(K1)
    (sealed,) = generate_sealed(ring)
    secret = ring.open(sealed)
    assert address_of(PrivateKey(secret)) == sealed.address
    assert len(sealed.ciphertext) == len(sealed.wrapped_data_key) == SEALED_BYTES
    assert sealed.master_version == 1 and sealed.purpose == "deposit" and not sealed.is_legacy
    assert secret not in sealed.ciphertext and secret not in sealed.wrapped_data_key
    shown = repr(sealed) + repr(ring)
    assert secret.hex() not in shown and sealed.ciphertext.hex() not in shown and K1.hex() not in shown
    assert sealed.address in repr(sealed)


def test_each_key_has_its_own_data_key():
    ring = KeyRing.single(K1)
    a = ring.seal("0x" + "a" * 40, b"\x07" * 32)
    b = ring.seal("0x" + "a" * 40, b"\x07" * 32)
    assert a.ciphertext != b.ciphertext and a.wrapped_data_key != b.wrapped_data_key
    data_key_a = ring._unwrap(a)  # noqa: SLF001 - the data keys themselves differ, not only the nonces
    assert data_key_a != ring._unwrap(b) and len(data_key_a) == 32


def test_an_envelope_moved_to_another_address_or_purpose_or_version_does_not_open():
    ring = KeyRing({1: K1, 2: K2})
    sealed = ring.seal("0x" + "a" * 40, b"\x07" * 32, purpose="hot")
    assert ring.open(sealed) == b"\x07" * 32
    for moved in (dataclasses.replace(sealed, address="0x" + "b" * 40),
                  dataclasses.replace(sealed, purpose="gas"),  # the deposit key cannot pass for the hot key
                  dataclasses.replace(sealed, master_version=1),
                  dataclasses.replace(sealed, ciphertext=sealed.ciphertext[:-1] + b"\x00"),
                  dataclasses.replace(sealed, wrapped_data_key=sealed.wrapped_data_key[:-1] + b"\x00")):
        with pytest.raises(InvalidTag):
            ring.open(moved)
    other = ring.seal("0x" + "b" * 40, b"\x08" * 32, purpose="hot")
    with pytest.raises(InvalidTag):  # another key's wrapped data key does not fit this row
        ring.open(dataclasses.replace(sealed, wrapped_data_key=other.wrapped_data_key))


def test_rewrap_keeps_the_ciphertext_and_moves_the_data_key_to_the_current_version():
    old_ring = KeyRing.single(K1)
    (sealed,) = generate_sealed(old_ring, purpose="gas")
    new_ring = KeyRing({1: K1, 2: K2})
    rewrapped = new_ring.rewrap(sealed)
    assert rewrapped.ciphertext == sealed.ciphertext and rewrapped.wrapped_data_key != sealed.wrapped_data_key
    assert (rewrapped.master_version, rewrapped.purpose, rewrapped.address) == (2, "gas", sealed.address)
    assert new_ring.open(rewrapped) == new_ring.open(sealed) == old_ring.open(sealed)
    assert new_ring.rewrap(rewrapped) is rewrapped and new_ring.is_current(rewrapped)
    assert KeyRing.single(K2, version=2).open(rewrapped) == old_ring.open(sealed)  # the retired key is not needed
    with pytest.raises(KeyError, match="version 2 is not in the ring"):
        old_ring.open(rewrapped)


def test_a_legacy_single_layer_key_opens_and_converts_to_an_envelope():
    ring = KeyRing({1: K1, 2: K2})
    legacy = generate_encrypted(KeyRing.single(K1))
    sealed = SealedKey(legacy.address, legacy.ciphertext, None, legacy.key_version)
    assert sealed.is_legacy and not ring.is_current(sealed)
    secret = ring.open(sealed)
    assert address_of(PrivateKey(secret)) == legacy.address
    with pytest.raises(ValueError, match="legacy"):
        ring.rewrap(sealed)
    envelope = ring.to_envelope(sealed)
    assert not envelope.is_legacy and envelope.master_version == 2 and ring.open(envelope) == secret
    with pytest.raises(InvalidTag):  # a legacy ciphertext never passes for a wrapped data key, nor the reverse
        ring.open(dataclasses.replace(sealed, wrapped_data_key=legacy.ciphertext))


def test_the_ring_refuses_a_current_key_below_a_retired_one_and_a_key_under_two_versions():
    with pytest.raises(ValueError, match="highest version"):
        KeyRing({1: K1, 3: K3}, current=1)
    with pytest.raises(ValueError, match="two versions"):
        KeyRing({1: K1, 2: K1})
    with pytest.raises(ValueError, match="32 bytes"):
        KeyRing({1: b"short"})
    assert KeyRing({1: K1, 3: K3}).current_version == 3


@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), version=st.integers(1, 32_767),
       purpose=st.sampled_from(["deposit", "hot", "gas"]))
def test_seal_then_open_is_the_identity(secret, version, purpose):
    ring = KeyRing.single(K3, version=version)
    sealed = ring.seal("0x" + "c" * 40, secret, purpose)
    assert sealed.master_version == version and ring.open(sealed) == secret


# -- configuration ---------------------------------------------------------------------------------------

def test_master_key_with_and_without_a_version_and_retired_keys():
    plain = Config.from_env({"WALLET_MASTER_KEY": K1.hex()})
    assert (plain.master_key, plain.master_key_version, plain.key_ring().versions) == (K1, 1, (1,))
    rotated = Config.from_env({"WALLET_MASTER_KEY": f"3:{K3.hex()}",
                               "WALLET_MASTER_KEYS_RETIRED": f"1:{K1.hex()}, 2:{K2.hex()}"})
    assert rotated.master_key == K3 and rotated.master_key_version == 3  # callers of master_key get the current
    ring = rotated.key_ring()
    assert ring.versions == (1, 2, 3) and ring.current_version == 3
    old = KeyRing.single(K1).seal("0x" + "d" * 40, b"\x09" * 32)
    assert ring.open(old) == b"\x09" * 32 and ring.rewrap(old).master_version == 3
    for text in (repr(rotated), repr(ring)):
        assert all(key.hex() not in text for key in (K1, K2, K3)) and "\\x03\\x03" not in text


@pytest.mark.parametrize(("env", "message"), [
    ({"WALLET_MASTER_KEY": "0:" + "ab" * 32}, "version before ':' must be 1-32767"),
    ({"WALLET_MASTER_KEY": "32768:" + "ab" * 32}, "version before ':' must be 1-32767"),
    ({"WALLET_MASTER_KEY": "x:" + "ab" * 32}, "version before ':' must be"),
    ({"WALLET_MASTER_KEY": "2:" + "ab" * 31}, "WALLET_MASTER_KEY must be 64 hex"),
    ({"WALLET_MASTER_KEY": "2:" + "zz" * 32}, "WALLET_MASTER_KEY must be hexadecimal"),
    ({"WALLET_MASTER_KEY": "2:" + "ab" * 32, "WALLET_MASTER_KEYS_RETIRED": "cd" * 32}, "needs its version"),
    ({"WALLET_MASTER_KEY": "2:" + "ab" * 32, "WALLET_MASTER_KEYS_RETIRED": "2:" + "cd" * 32}, "must be below"),
    ({"WALLET_MASTER_KEY": "2:" + "ab" * 32, "WALLET_MASTER_KEYS_RETIRED": "3:" + "cd" * 32}, "must be below"),
    ({"WALLET_MASTER_KEY": "3:" + "ab" * 32, "WALLET_MASTER_KEYS_RETIRED": f"1:{'cd' * 32},1:{'ef' * 32}"},
     "version 1 twice"),
    ({"WALLET_MASTER_KEY": "3:" + "ab" * 32, "WALLET_MASTER_KEYS_RETIRED": "1:" + "ab" * 32}, "two versions"),
    ({"WALLET_MASTER_KEY": "3:" + "ab" * 32, "WALLET_MASTER_KEYS_RETIRED": "1:" + "cd" * 30},
     "WALLET_MASTER_KEYS_RETIRED entry 1 must be 64 hex"),
    ({"WALLET_MASTER_KEYS_RETIRED": "1:" + "cd" * 32}, "WALLET_MASTER_KEY is not"),
])
def test_bad_master_keys_stop_the_start_and_never_echo_a_key(env, message):
    with pytest.raises(ConfigError, match=message) as caught:
        Config.from_env(env)
    for value in env.values():
        for part in value.replace(",", ":").split(":"):
            if len(part) >= 32:
                assert part not in caught.value.detail


def test_key_ring_needs_a_master_key():
    with pytest.raises(ConfigError, match="WALLET_MASTER_KEY is required"):
        Config().key_ring()
