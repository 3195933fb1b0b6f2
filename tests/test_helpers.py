"""`wait_until`: what it returns, what it lets through, and what it says when it gives up."""

from __future__ import annotations

import itertools

import pytest

from tests.helpers import wait_until


def test_returns_the_first_truthy_value():
    calls = itertools.count(1)
    assert wait_until(lambda: next(calls) >= 3 and "ready", timeout_s=10, interval_s=0.001) == "ready"
    assert next(calls) == 4  # polled three times, no more


def test_a_timeout_names_what_it_waited_for_and_the_last_value_seen():
    calls = itertools.count(1)
    seen = []

    def not_yet():
        seen.append(Falsy(f"reading {next(calls)}"))
        return seen[-1]

    with pytest.raises(AssertionError) as failure:
        wait_until(not_yet, timeout_s=0.05, what="the queue filled")
    assert str(failure.value) == f"timed out after 0.05 s waiting for the queue filled; last value: {seen[-1]!r}"
    assert len(seen) > 1


def test_a_long_last_value_is_cut_to_300_characters():
    with pytest.raises(AssertionError) as failure:
        wait_until(lambda: Falsy("z" * 1000), timeout_s=0.05)
    assert str(failure.value).split("last value: ", 1)[1] == "<" + "z" * 299 + "..."


class Falsy:
    def __init__(self, text: str) -> None:
        self.text = text

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<{self.text}>"


def test_an_exception_propagates_at_once_unless_ignored():
    calls = itertools.count(1)

    def refused():
        next(calls)
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        wait_until(refused, timeout_s=10)
    assert next(calls) == 2  # not retried

    with pytest.raises(AssertionError) as failure:
        wait_until(refused, timeout_s=0.05, what="the server", ignore=(ConnectionError,))
    assert str(failure.value) == ("timed out after 0.05 s waiting for the server; last value: none (every call "
                                  "raised); last exception: ConnectionError('refused')")


def test_an_ignored_exception_that_stops_lets_the_value_through():
    attempts = iter([ConnectionError("starting"), ConnectionError("starting"), None, 200])

    def probe():
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert wait_until(probe, timeout_s=10, interval_s=0.001, ignore=(ConnectionError,)) == 200


def test_detail_is_appended_only_on_timeout_and_cannot_hide_it():
    asked = []
    assert wait_until(lambda: True, timeout_s=10, detail=lambda: asked.append(1) or "log") is True
    assert asked == []
    with pytest.raises(AssertionError) as failure:
        wait_until(lambda: 0, timeout_s=0.05, what="progress", detail=lambda: "log line 1\nlog line 2")
    assert str(failure.value) == "timed out after 0.05 s waiting for progress; last value: 0\nlog line 1\nlog line 2"
    with pytest.raises(AssertionError) as failure:
        wait_until(lambda: 0, timeout_s=0.05, detail=lambda: 1 / 0)
    assert "last value: 0\n(detail failed: ZeroDivisionError(" in str(failure.value)


@pytest.mark.parametrize("interval_s", [0, -1, 1.5])
def test_the_poll_interval_is_bounded(interval_s):
    with pytest.raises(AssertionError):
        wait_until(lambda: True, interval_s=interval_s)
