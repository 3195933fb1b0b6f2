"""app/gate.py: a WSGI app that fails outside Flask's error handlers still gets its request answered, with a
problem-details 500 that closes the connection (built only then), and a working app's answer is passed on."""

from __future__ import annotations

import asyncio
import json

from app import gate as gate_module
from app.gate import Gate


def _answer_of(app) -> tuple[int, list[tuple[str, str]], bytes]:
    gate = Gate(app, threads=1)
    loop = asyncio.new_event_loop()
    try:
        gate.loop = loop
        done = loop.create_future()
        gate._run({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, done)  # on this thread: the view thread's job
        return loop.run_until_complete(asyncio.wait_for(done, timeout=5))
    finally:
        loop.close()


def test_an_app_failing_outside_its_handlers_is_answered_with_a_problem_500():
    def broken(environ, start_response):
        raise RuntimeError("a bug below Flask")

    status, headers, body = _answer_of(broken)
    assert status == 500 and ("connection", "close") in headers
    problem = json.loads(body)
    assert problem["code"] == "internal_error" and "bug" not in body.decode()


def test_a_working_app_is_answered_as_it_answered_and_no_problem_is_built(monkeypatch):
    built = []
    real = gate_module._problem
    monkeypatch.setattr(gate_module, "_problem", lambda *args: built.append(args) or real(*args))

    def hello(environ, start_response):
        start_response("201 Created", [("content-type", "text/plain")])
        return [b"made"]

    status, headers, body = _answer_of(hello)
    assert (status, body) == (201, b"made") and ("content-type", "text/plain") in headers
    assert built == []  # the fallback 500 is made only for a failed app
