"""A free TCP port on the loopback interface (the demo's servers, tests and benchmarks)."""

from __future__ import annotations

import socket
import threading

# Ports handed out by this process. The port is free when returned but not bound until its server starts, so
# the kernel may hand the same one out again to the next call: two listeners of one process (API and ops) then
# collide. Bounded: far more than a test run uses, far fewer than the ephemeral range.
_GIVEN_MAX = 4096
_given: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A port free now and not returned before by this process (while fewer than _GIVEN_MAX were)."""
    with _lock:
        if len(_given) >= _GIVEN_MAX:
            _given.clear()
        while True:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port
