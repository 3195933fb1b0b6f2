"""Waiting on a condition, and a clock a test moves by hand: shared by tests and benchmarks (which may not
import tests/). Never a bare sleep: every wait names what it waits for and fails with the last value seen."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

POLL_INTERVAL_MAX_S = 1.0
REPR_MAX_CHARS = 300  # of a value or exception in a timeout message
_NOTHING_SEEN = object()


class FakeClock:
    """Integer milliseconds that move only when a test says so: time-dependent logic takes a clock."""

    def __init__(self, now_ms: int = 0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> int:
        assert ms >= 0, "time does not go back"
        self.now_ms += ms
        return self.now_ms


def wait_until(predicate: Callable[[], T], timeout_s: float = 30.0, what: str = "condition", *,
               interval_s: float = 0.02, ignore: tuple[type[BaseException], ...] = (),
               detail: Callable[[], str] | None = None) -> T:
    """Poll `predicate` every `interval_s` until it returns something truthy, and return that.

    An exception from `predicate` propagates at once unless its type is in `ignore` (a server still
    starting refuses connections): a wait never passes over an error by accident. After `timeout_s` it
    fails with an AssertionError naming `what`, the last value seen, the last ignored exception, and
    `detail()` (a log tail, say), which runs only then.
    """
    assert timeout_s > 0 and 0 < interval_s <= POLL_INTERVAL_MAX_S, (timeout_s, interval_s)
    deadline = time.monotonic() + timeout_s
    last_value: object = _NOTHING_SEEN
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last_error = exc
        else:
            if value:
                return value
            last_value = value
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise AssertionError(_timeout_message(timeout_s, what, last_value, last_error, detail))
        time.sleep(min(interval_s, remaining_s))


def _timeout_message(timeout_s: float, what: str, last_value: object, last_error: BaseException | None,
                     detail: Callable[[], str] | None) -> str:
    seen = "none (every call raised)" if last_value is _NOTHING_SEEN else _cut(repr(last_value))
    message = f"timed out after {timeout_s:g} s waiting for {what}; last value: {seen}"
    if last_error is not None:
        message += f"; last exception: {_cut(repr(last_error))}"
    if detail is not None:
        try:
            message += "\n" + detail()
        except Exception as exc:  # noqa: BLE001 - the timeout is the failure to report, not this
            message += f"\n(detail failed: {_cut(repr(exc))})"
    return message


def _cut(text: str) -> str:
    return text if len(text) <= REPR_MAX_CHARS else text[:REPR_MAX_CHARS] + "..."
