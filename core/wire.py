"""The JSON codec of every message and typed reply that crosses processes (cluster mode, actors/transport.py).

An explicit schema per type: REGISTRY maps a type name to its frozen dataclass, and each field is encoded
by its declared type. Integers (amounts above all) travel as strings of decimal digits, so no JSON reader
on the way turns them into floats; a nested dataclass travels as an object of its fields. Decoding refuses
an unknown type, a missing or unknown field, and a value of the wrong type (WireError). No pickle: a
message from the network can never run code.

Errors cross too: a WalletError is sent as its stable code, detail and plain extras, and comes back as the
same class (looked up by code among core.errors' classes).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from typing import Any, Callable

from core import errors
from core import messages as m


class WireError(errors.ValidationError):
    """A message that does not follow its schema (a bug or a foreign writer): refused, never guessed."""

    code = "bad_message"


class RemoteFailure(errors.WalletError):
    """The callee failed with something else than a WalletError (a bug on its side)."""

    code = "remote_failure"
    status = 500


# Every type that crosses: commands, events, queries and replies. A new message type is added here (the
# round-trip test walks core.messages and fails on a dataclass that is missing).
WIRE_TYPES: tuple[type, ...] = (
    m.OpResult, m.Transfer, m.Credit, m.Debit, m.CrossShardCredit, m.ReturnCredit,
    m.RequestWithdrawal, m.ApproveWithdrawal, m.RejectWithdrawal, m.CancelWithdrawal, m.SettleWithdrawal,
    m.WithdrawalsApproved, m.WatchTransactions, m.RunSigner, m.HotWalletQuery, m.HotWallet, m.SignerStats,
    m.CreateRedPacket, m.ClaimRedPacket, m.ExpireRedPacket, m.UpdateCredentials,
    m.OutboxDelivered, m.AccountOpened, m.AddressAssigned, m.GetBalances, m.AssetBalance, m.Balances,
    m.Tick, m.Ping, m.Pong, m.GetStats, m.ShardStats, m.NodeStats, m.WatcherStats,
    m.Register, m.Registered, m.PoolStatus, m.PoolStatusReply, m.RefillPool,
    m.ScanNow, m.ScanReport, m.StaffRef, m.SetAccountHold, m.RetryDepositCredit, m.CreditRetried, m.SetHold,
    m.BookSweepGas, m.RunReconcile, m.ReconcileSummary,
)
REGISTRY: dict[str, type] = {cls.__name__: cls for cls in WIRE_TYPES}
assert len(REGISTRY) == len(WIRE_TYPES), "two wire types share a name"

_INT = re.compile(r"-?[0-9]{1,80}\Z")
Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]  # (to JSON value, from JSON value)


# -- public ------------------------------------------------------------------------------------------------
def encode(message: Any) -> str:
    """One message or reply (a registered dataclass, or None) as JSON text."""
    if message is None:
        return '{"t": null}'
    name = type(message).__name__
    if REGISTRY.get(name) is not type(message):
        raise WireError(f"{name} is not a wire type")
    return json.dumps({"t": name, "f": _fields_codec(type(message))[0](message)}, separators=(",", ":"))


def decode(raw: str | bytes) -> Any:
    data = _load(raw)
    if set(data) != {"t", "f"} and data != {"t": None}:
        raise WireError("a message is {t, f}")
    if data["t"] is None:
        return None
    cls = REGISTRY.get(data["t"]) if isinstance(data["t"], str) else None
    if cls is None:
        raise WireError(f"unknown message type {data['t']!r}")
    return _fields_codec(cls)[1](data["f"])


def encode_error(exc: BaseException) -> str:
    if isinstance(exc, errors.WalletError):
        extra = {k: v for k, v in exc.extra.items() if isinstance(v, (str, int, bool)) or v is None}
        body = {"code": exc.code, "detail": exc.detail, "extra": {k: _plain(v) for k, v in extra.items()}}
    else:
        body = {"code": RemoteFailure.code, "detail": f"{type(exc).__name__} in the callee", "extra": {}}
    return json.dumps(body, separators=(",", ":"))


def decode_error(raw: str | bytes) -> errors.WalletError:
    data = _load(raw)
    if set(data) != {"code", "detail", "extra"} or not isinstance(data["code"], str) \
            or not isinstance(data["detail"], str) or not isinstance(data["extra"], dict):
        raise WireError("an error is {code, detail, extra}")
    cls = _error_classes().get(data["code"])
    if cls is None:
        exc = errors.WalletError(data["detail"], **data["extra"])
        exc.code = data["code"]  # unknown here (a newer peer): keep its code, answered as a generic 400
        return exc
    return cls(data["detail"], **data["extra"])


# -- schema ----------------------------------------------------------------------------------------------
def _load(raw: str | bytes) -> dict:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError("not a JSON object")
    return data


def _plain(value: Any) -> Any:
    return str(value) if type(value) is int else value


@functools.cache
def _error_classes() -> dict[str, type[errors.WalletError]]:
    found: dict[str, type[errors.WalletError]] = {RemoteFailure.code: RemoteFailure, WireError.code: WireError}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.WalletError):
            found.setdefault(value.code, value)
    return found


@functools.cache
def _fields_codec(cls: type) -> Codec:
    hints = typing.get_type_hints(cls, vars(m))
    fields = tuple((f.name, _codec(hints[f.name]), f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING) for f in dataclasses.fields(cls))
    names = frozenset(name for name, _, _ in fields)

    def to_json(obj: Any) -> dict:
        return {name: codec[0](getattr(obj, name)) for name, codec, _ in fields}

    def from_json(data: Any) -> Any:
        if not isinstance(data, dict):
            raise WireError(f"{cls.__name__}: fields must be an object")
        unknown = set(data) - names
        if unknown:
            raise WireError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        values = {}
        for name, codec, required in fields:
            if name in data:
                values[name] = codec[1](data[name])
            elif required:
                raise WireError(f"{cls.__name__}: missing field {name}")
        return cls(**values)

    return to_json, from_json


def _codec(hint: Any) -> Codec:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return _int_to, _int_from
    if hint is bool:
        return _check(bool), _check(bool)
    if hint is str:
        return _check(str), _check(str)
    if hint is float:
        return _float_to, _float_from
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _codec(next(a for a in args if a is not type(None)))
        return (lambda v: None if v is None else inner[0](v)), (lambda v: None if v is None else inner[1](v))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _codec(args[0])
        return (lambda v: [item[0](x) for x in v]), (lambda v: tuple(item[1](x) for x in _list(v)))
    if origin is tuple and args:
        items = tuple(_codec(a) for a in args)
        return (lambda v: [c[0](x) for c, x in zip(items, v)]), (lambda v: _fixed_tuple(items, v))
    if dataclasses.is_dataclass(hint) and REGISTRY.get(hint.__name__) is hint:
        return _fields_codec(hint)
    raise TypeError(f"no wire codec for {hint!r}")


def _int_to(value: Any) -> str:
    if type(value) is not int:
        raise WireError(f"expected an integer, got {type(value).__name__}")
    return str(value)


def _int_from(value: Any) -> int:
    if not isinstance(value, str) or not _INT.match(value):
        raise WireError("an integer travels as a string of decimal digits")
    return int(value)


def _float_to(value: Any) -> float:
    if type(value) not in (int, float):
        raise WireError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _float_from(value: Any) -> float:
    if type(value) not in (int, float):
        raise WireError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _check(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise WireError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value
    return check


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise WireError("expected a list")
    return value


def _fixed_tuple(items: tuple[Codec, ...], value: Any) -> tuple:
    if not isinstance(value, list) or len(value) != len(items):
        raise WireError(f"expected a list of {len(items)}")
    return tuple(c[1](x) for c, x in zip(items, value))
