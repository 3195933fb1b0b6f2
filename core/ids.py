"""Ids that must be unique but need not be secret (request ids, lock tokens, correlation ids): a random
per-process prefix and a counter.

Not `uuid4` or `secrets` per id: both read `os.urandom`, a system call that releases the GIL, so under load
each such id may cost the thread a wait for the GIL behind the other threads. (An interleaved A/B of
bench/http.py found no difference beyond its noise: docs/BENCHMARKS.md, "Cluster mode". One helper instead of
three hand-made ones either way.) The prefix is drawn again in a forked child, so parent and child never share
ids. Nothing here is a secret: never use these where unpredictability matters (tokens, keys, codes).
"""

from __future__ import annotations

import itertools
import os

PREFIX_BYTES = 8


def _draw() -> None:
    global _prefix, _counter
    _prefix = os.urandom(PREFIX_BYTES).hex()
    _counter = itertools.count()


_prefix = ""
_counter = itertools.count()
_draw()
os.register_at_fork(after_in_child=_draw)


def unique_hex() -> str:
    """32 or more hex digits, unique in this process and (by the random prefix) across processes."""
    return f"{_prefix}{next(_counter):016x}"
