"""What the console holds for the app's lifetime: its clock (integer ms; tests move a FakeClock), the key ring
that opens the TOTP secrets, and the key that signs CSRF tokens. Views reach it with `console()`."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from typing import Callable

import flask

from core.config import Config
from core.keys import KeyRing
from storage.models import now_ms


@dataclasses.dataclass
class Console:
    clock: Callable[[], int]
    ring: KeyRing | None
    csrf_key: str
    last_purge_ms: int = 0

    @classmethod
    def build(cls, config: Config) -> Console:
        if config.master_key is None:  # no TOTP secret can be opened: nobody can log in, and CSRF keys are random
            return cls(clock=now_ms, ring=None, csrf_key=secrets.token_hex(32))
        # Derived, so every process of one deployment signs alike and a restart keeps open forms valid.
        csrf_key = hmac.new(config.master_key, b"wallet admin console csrf v1", hashlib.sha256).hexdigest()
        return cls(clock=now_ms, ring=config.key_ring(), csrf_key=csrf_key)


def console() -> Console:
    return flask.current_app.extensions["console"]
