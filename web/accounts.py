"""POST /api/v1/accounts: register (public). The allocator binds the account to a shard and gives it a
deposit address; the front only hashes the passwords first, so the allocator's thread never spends
time on argon2.

The answer carries ten one-time recovery codes, shown this once (web/account_security.py).

Registration is limited per client IP, and a taken username is refused before hashing: neither a flood
nor a taken name costs two argon2 hashes. The allocator still enforces uniqueness (two requests for one
free name may both pass the check here)."""

from __future__ import annotations

import flask

from core import messages as m
from storage.models import Account
from web.auth import client_ip, public
from web.io import parse_body, respond
from web.account_security import new_recovery_codes
from web.schemas import RegisteredOut, RegisterRequest
from web.security import hash_secret
from web.state import front
from core.errors import UsernameTaken

bp = flask.Blueprint("accounts", __name__, url_prefix="/api/v1")


@bp.post("/accounts")
@public
def register():
    body = parse_body(RegisterRequest)
    state = front()
    state.failures.admit([(state.limits.register_ip, client_ip())])  # counted whether or not it succeeds
    if Account.select().where(Account.username == body.username).exists():
        raise UsernameTaken(f"username {body.username!r} is taken")
    request = m.Register(username=body.username, password_hash=hash_secret(body.password),
                         pay_password_hash=hash_secret(body.pay_password))
    registered: m.Registered = state.router.ask_actor("allocator", request)
    codes = new_recovery_codes(registered.account_id)
    return respond(RegisteredOut(account_id=registered.account_id, username=registered.username,
                                 shard=registered.shard, deposit_address=registered.deposit_address,
                                 recovery_codes=codes), 201)
