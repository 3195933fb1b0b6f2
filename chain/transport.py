"""JSON-RPC over HTTP: one call, or one batch array, per HTTP request to the URL the caller names.

No retry and no knowledge of nodes' health: the caller (a NodeSession, or the node pool's health checks)
decides what a failure means for a node. What this module decides, once for everyone, is what kind of
failure it is: a JSON-RPC error whose code says the request itself is wrong (invalid request, unknown method,
invalid params, reverted) is a FatalChainError; anything else (no connection, timeout, HTTP error, a reply that
does not parse, a batch that lacks answers) is a RetriableChainError.

Connections are kept alive in `requests.Session`s, one per calling thread: requests does not promise that a
Session is thread-safe. Reads are sent as JSON-RPC batch arrays because web3's per-call formatting is too
slow for scanning full blocks.

URLs may carry API keys, so error messages show the transport's reason (urllib3's), never requests' own
message, which repeats the URL.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Sequence
from typing import Any

import requests

from chain.errors import ChainError, FatalChainError, RetriableChainError
from core.limits import RPC_CONNECT_TIMEOUT_MAX_S

# JSON-RPC error codes that say the request is wrong: any node, any time, gives the same answer.
_FATAL_CODES = {-32600, -32601, -32602, 3}  # invalid request, method not found, invalid params, reverted

# A dead host should fail fast even when reads may take long: connecting never waits longer than this.
_SHOWN_CHARS_MAX = 160


class Transport:
    """Sends JSON-RPC to any URL. Safe to share between threads; `close()` closes every thread's session."""

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s > 0 is required")
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)  # next() on a count is atomic in CPython: ids are unique across threads
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's requests.Session
        self._sessions: list[requests.Session] = []  # every thread's, to close them
        self._http_requests = 0

    @property
    def http_requests(self) -> int:
        """HTTP requests sent so far (a batch is one), answered or not."""
        return self._http_requests

    def request(self, url: str, method: str, params: list, timeout_s: float | None = None) -> Any:
        """One JSON-RPC call in one HTTP request; returns its result. `timeout_s` overrides the read timeout."""
        reply = self._post(url, {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params},
                           timeout_s, method)
        return _result(reply, url, method)

    def batch(self, url: str, calls: Sequence[tuple[str, list]]) -> list[Any]:
        """A JSON-RPC batch of (method, params) in one HTTP request; results in the order of `calls`. One failed
        call fails the whole batch: a caller never gets a partial answer to mistake for a complete one."""
        ids = [next(self._ids) for _ in calls]
        payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in zip(ids, calls)]
        method = calls[0][0]
        reply = self._post(url, payload, None, method)
        by_id = _replies_by_id(reply, len(calls), url, method)
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise RetriableChainError(f"batch reply lacks {len(missing)} of {len(ids)} answers", url=url,
                                      method=method)
        return [_result(by_id[i], url, m) for i, (m, _) in zip(ids, calls)]

    def batch_outcomes(self, url: str, calls: Sequence[tuple[str, list]]) -> list[Any]:
        """Like `batch`, but each call's own JSON-RPC error is its outcome (a ChainError in its place) instead
        of failing the batch: one node's answer per raw transaction sent. No answer at all still raises."""
        ids = [next(self._ids) for _ in calls]
        payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in zip(ids, calls)]
        method = calls[0][0]
        by_id = _replies_by_id(self._post(url, payload, None, method), len(calls), url, method)
        outcomes: list[Any] = []
        for i, (m, _) in zip(ids, calls):
            try:
                outcomes.append(_result(by_id.get(i), url, m))
            except ChainError as exc:
                outcomes.append(exc)
        return outcomes

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for http in sessions:
            http.close()

    def _post(self, url: str, payload: Any, timeout_s: float | None, method: str) -> Any:
        read_timeout = timeout_s or self.timeout_s
        connect_timeout = min(read_timeout, RPC_CONNECT_TIMEOUT_MAX_S)
        with self._lock:
            self._http_requests += 1
        try:
            response = self._http().post(url, data=json.dumps(payload), timeout=(connect_timeout, read_timeout))
        except requests.Timeout as exc:
            raise RetriableChainError(f"timeout after {read_timeout}s: {_transport_reason(exc)}", url=url,
                                      method=method) from exc
        except requests.RequestException as exc:
            raise RetriableChainError(f"request failed: {_transport_reason(exc)}", url=url, method=method) from exc
        try:
            reply = json.loads(response.content)
        except ValueError as exc:
            raise RetriableChainError(f"HTTP {response.status_code}, reply is not JSON: "
                                      f"{shorten(response.content)}", url=url, method=method) from exc
        if response.status_code != 200 and not _is_rpc_error(reply):
            # a JSON-RPC error sent with an HTTP error status is still the node's answer: classified by its code
            raise RetriableChainError(f"HTTP {response.status_code}: {shorten(reply)}", url=url, method=method)
        return reply

    def _http(self) -> requests.Session:
        http = getattr(self._local, "http", None)
        if http is None:
            http = requests.Session()
            http.headers.update({"Content-Type": "application/json"})
            self._local.http = http
            with self._lock:
                self._sessions.append(http)
        return http


def shorten(value: Any) -> str:
    """`value` as it may appear in an error message: its repr, cut short (a node may send megabytes)."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS_MAX else text[:_SHOWN_CHARS_MAX - 3] + "..."


def _replies_by_id(reply: Any, count: int, url: str, method: str) -> dict[Any, Any]:
    if isinstance(reply, dict):  # some nodes answer a whole batch with one error object
        _result(reply, url, method)
        raise RetriableChainError(f"batch of {count} answered with one object: {shorten(reply)}", url=url,
                                  method=method)
    if not isinstance(reply, list):
        raise RetriableChainError(f"batch reply is not a list: {shorten(reply)}", url=url, method=method)
    return {item.get("id"): item for item in reply if isinstance(item, dict)}


def _is_rpc_error(reply: Any) -> bool:
    return isinstance(reply, dict) and reply.get("error") is not None


def _result(reply: Any, url: str, method: str) -> Any:
    if not isinstance(reply, dict):
        raise RetriableChainError(f"reply is not an object: {shorten(reply)}", url=url, method=method)
    error = reply.get("error")
    if error is not None:
        raise _rpc_error(error, url, method)
    if "result" not in reply:
        raise RetriableChainError(f"reply has neither result nor error: {shorten(reply)}", url=url, method=method)
    return reply["result"]


def _rpc_error(error: Any, url: str, method: str) -> ChainError:
    code = error.get("code") if isinstance(error, dict) else None
    code = code if isinstance(code, int) else None
    message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
    kind = FatalChainError if code in _FATAL_CODES else RetriableChainError
    return kind(f"JSON-RPC error {code}: {shorten(message)}", url=url, method=method, code=code,
                rpc_message=message)


def _transport_reason(exc: requests.RequestException) -> str:
    # requests' own message repeats the URL path, which may hold an API key; urllib3's cause does not
    cause = exc.args[0] if exc.args else exc
    return f"{type(exc).__name__}: {getattr(cause, 'reason', cause)}"
