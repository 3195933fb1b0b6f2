"""core/ports.free_port: a port is never handed out twice by one process, even when the kernel offers it again
before anyone bound it (an API and an ops listener of one test collided that way in a CI run)."""

from __future__ import annotations

import socket

from core import ports


def test_a_port_the_kernel_offers_again_is_not_handed_out_twice(monkeypatch):
    offered = iter([40001, 40001, 40001, 40002])

    class Probe:
        def __init__(self, *args):
            self.port = next(offered)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(ports, "_given", set())
    monkeypatch.setattr(socket, "socket", Probe)
    assert [ports.free_port(), ports.free_port()] == [40001, 40002]


def test_free_ports_are_distinct_and_bindable():
    got = [ports.free_port() for _ in range(50)]
    assert len(set(got)) == 50
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", got[-1]))
