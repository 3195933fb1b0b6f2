"""The watch set: membership by address whatever its case, additions merged in, and the memory of a
million watched addresses."""

from __future__ import annotations

import os
import tracemalloc

from eth_utils import to_checksum_address

from blockwatch.watchset import WatchSet
from core.limits import WATCHSET_RECENT_MAX as RECENT_MAX

MIB = 2**20


def random_addresses(count: int) -> list[str]:
    raw = os.urandom(20 * count).hex()
    return ["0x" + raw[i * 40:(i + 1) * 40] for i in range(count)]


def test_membership_ignores_case_and_survives_merges():
    loaded, added, strangers = random_addresses(1000), random_addresses(RECENT_MAX + 10), random_addresses(1000)
    watch = WatchSet(loaded)
    for address in added + loaded[:10]:  # crosses a merge; re-adding a known address changes nothing
        watch.add(to_checksum_address(address))
    assert len(watch) == len(loaded) + len(added)
    assert all(a in watch for a in loaded + added)
    assert all(a.upper().replace("0X", "0x") in watch for a in loaded[:50])
    assert not any(a in watch for a in strangers)
    assert "not an address" not in watch and None not in watch


def test_a_million_addresses_take_well_under_150_mib():
    addresses = random_addresses(1_000_000)
    tracemalloc.start()
    try:
        watch = WatchSet(addresses)
        for address in random_addresses(RECENT_MAX - 1):  # a full set of recent additions on top
            watch.add(address)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(watch) == 1_000_000 + RECENT_MAX - 1
    assert current < 20 * MIB, f"{current / MIB:.1f} MiB held"
    assert peak < 150 * MIB, f"{peak / MIB:.1f} MiB at the peak of loading"
    assert watch.memory_bytes() < 20 * MIB
    assert all(a in watch for a in addresses[::997])
