"""core/wire.py: every message and reply type survives a round trip through JSON exactly; anything off
schema is refused."""

from __future__ import annotations

import dataclasses
import json
import types
import typing

import pytest

from core import errors
from core import messages as m
from core import wire

BIG = 10**64 + 7  # the largest amounts the service holds must not lose a digit


def _sample(hint, depth=0):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return True
    if hint is int:
        return BIG - depth
    if hint is str:
        return f"s\u00e9-{depth}\"'"
    if hint is float:
        return 1.25
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)), depth + 1)
    if origin is tuple and args[-1] is Ellipsis:
        return (_sample(args[0], depth + 1), _sample(args[0], depth + 2))
    if origin is tuple:
        return tuple(_sample(a, depth + 1) for a in args)
    return _instance(hint, depth + 1)


def _instance(cls, depth=0):
    hints = typing.get_type_hints(cls, vars(m))
    return cls(**{f.name: _sample(hints[f.name], depth) for f in dataclasses.fields(cls)})


def test_every_message_dataclass_is_registered():
    declared = {obj for obj in vars(m).values() if isinstance(obj, type) and dataclasses.is_dataclass(obj)}
    assert declared - set(wire.WIRE_TYPES) == set()


@pytest.mark.parametrize("cls", wire.WIRE_TYPES, ids=lambda c: c.__name__)
def test_round_trip_is_exact(cls):
    message = _instance(cls)
    raw = wire.encode(message)
    back = wire.decode(raw)
    assert back == message and type(back) is cls
    assert str(BIG) not in raw or f'"{BIG}"' in raw  # integers travel as strings of digits


def test_optional_fields_round_trip_as_none():
    result = m.OpResult("op-1", "completed")
    assert wire.decode(wire.encode(result)) == result
    assert wire.decode(wire.encode(None)) is None


def test_amount_travels_as_decimal_string():
    raw = wire.encode(m.Credit("d-1", 7, "ETH", BIG))
    assert json.loads(raw)["f"]["amount"] == str(BIG)


@pytest.mark.parametrize("raw, reason", [
    ('{"t": "Exec", "f": {}}', "unknown message type"),
    ('{"t": "Credit", "f": {"op_id": "x", "account_id": "1", "asset": "ETH", "amount": "5", "evil": 1}}',
     "unknown fields"),
    ('{"t": "Credit", "f": {"op_id": "x", "account_id": "1", "asset": "ETH"}}', "missing field"),
    ('{"t": "Credit", "f": {"op_id": "x", "account_id": "1", "asset": "ETH", "amount": 5.0}}', "decimal digits"),
    ('{"t": "Credit", "f": {"op_id": "x", "account_id": "1", "asset": "ETH", "amount": "1e5"}}', "decimal digits"),
    ('{"t": "Credit", "f": {"op_id": 3, "account_id": "1", "asset": "ETH", "amount": "5"}}', "expected str"),
    ('{"t": "Credit", "f": {}, "x": 1}', "a message is"),
    ('[1]', "not a JSON object"),
    ('\x80', "not JSON"),
])
def test_off_schema_is_refused(raw, reason):
    with pytest.raises(wire.WireError, match=reason):
        wire.decode(raw)


def test_unregistered_object_is_not_encoded():
    with pytest.raises(wire.WireError):
        wire.encode({"t": "Credit"})


def test_errors_come_back_as_their_class():
    back = wire.decode_error(wire.encode_error(errors.InsufficientFunds("not enough", asset="ETH", need=BIG)))
    assert type(back) is errors.InsufficientFunds and back.detail == "not enough"
    assert back.extra == {"asset": "ETH", "need": str(BIG)} and back.status == 422
    bug = wire.decode_error(wire.encode_error(KeyError("secret")))
    assert type(bug) is wire.RemoteFailure and "secret" not in bug.detail
    newer = wire.decode_error('{"code": "from_the_future", "detail": "d", "extra": {}}')
    assert newer.code == "from_the_future"
