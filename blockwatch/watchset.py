"""The deposit addresses BlockWatch watches, kept compact enough for millions of them.

Each address is reduced to its first 8 bytes (an unsigned 64-bit prefix). Prefixes live in a sorted
`array('Q')` (8 bytes per address, searched by bisection) plus a small set of recent additions that is
merged into the array from time to time. A prefix hit is a candidate only: the caller confirms it
against the database (by full address) before recording anything. With 10^6 addresses a random
address collides with a stored prefix with odds of about 5e-14, so confirmations are rare work.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import sys
from array import array
from typing import Iterable

from core.limits import WATCHSET_RECENT_MAX



def address_prefix(address: str) -> int:
    """The first 8 bytes of a 0x-prefixed hex address as an int (case does not matter)."""
    return int(address[2:18], 16)


class WatchSet:
    def __init__(self, addresses: Iterable[str] = ()) -> None:
        self._sorted = array("Q")
        self._recent: set[int] = set()
        self.load(addresses)

    def load(self, addresses: Iterable[str]) -> None:
        """Add many addresses at once (start-up): one sort instead of many merges."""
        batch = array("Q", (address_prefix(a) for a in addresses))
        if not batch:
            return
        batch.extend(self._sorted)
        batch.extend(self._recent)
        self._recent.clear()
        self._sorted = array("Q", (prefix for prefix, _ in itertools.groupby(sorted(batch))))

    def add(self, address: str) -> None:
        prefix = address_prefix(address)
        if prefix in self._recent or self._in_sorted(prefix):
            return
        self._recent.add(prefix)
        if len(self._recent) >= WATCHSET_RECENT_MAX:
            self._merge()

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str) or len(address) != 42:
            return False
        prefix = address_prefix(address)
        return prefix in self._recent or self._in_sorted(prefix)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def memory_bytes(self) -> int:
        """Bytes held by the structure (the array's buffer, the set and its int objects)."""
        recent = sys.getsizeof(self._recent) + sum(sys.getsizeof(p) for p in self._recent)
        return sys.getsizeof(self._sorted) + recent

    def _in_sorted(self, prefix: int) -> bool:
        i = bisect.bisect_left(self._sorted, prefix)
        return i < len(self._sorted) and self._sorted[i] == prefix

    def _merge(self) -> None:
        # both inputs are sorted and disjoint (add() skips known prefixes): a streaming merge, no big list
        self._sorted = array("Q", heapq.merge(self._sorted, sorted(self._recent)))
        self._recent.clear()
