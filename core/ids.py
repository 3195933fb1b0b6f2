"""Ids that must be unique (request ids, lock tokens, correlation ids): a counter, hashed with BLAKE2b under a
random per-process key, so an id says nothing a client could use (not which process made it, nor how many
requests it has served).

Not `uuid4` or `secrets` per id: both read `os.urandom`, a system call that releases the GIL, so under load
each such id may cost the thread a wait for the GIL behind the other threads. (An interleaved A/B of
bench/http.py found no difference beyond its noise: docs/BENCHMARKS.md, "Cluster mode". One helper instead of
three hand-made ones either way.) The key is drawn again in a forked child, so parent and child never share
ids. Not for secrets (tokens, keys, codes): those come from `secrets`.
"""

from __future__ import annotations

import hashlib
import itertools
import os

KEY_BYTES = 32
ID_BYTES = 16


def _draw() -> None:
    global _key, _counter
    _key = os.urandom(KEY_BYTES)
    _counter = itertools.count()


_key = b""
_counter = itertools.count()
_draw()
os.register_at_fork(after_in_child=_draw)


def unique_hex() -> str:
    """32 hex digits: distinct counters give distinct ids under one key, and keys differ between processes
    (a collision of 128-bit BLAKE2b outputs is not a concern at any rate this service reaches)."""
    return hashlib.blake2b(next(_counter).to_bytes(8, "big"), key=_key, digest_size=ID_BYTES).hexdigest()
