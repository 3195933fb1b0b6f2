"""Authentication of requests (deny by default) and the pay-password check of money-moving requests."""

from __future__ import annotations

from typing import Callable, TypeVar

import flask

from storage import sql
from storage.models import Account
from web.errors import WrongPayPassword
from web.security import Session, verify_secret
from web.state import front

F = TypeVar("F", bound=Callable)


def public(view: F) -> F:
    """Mark a view as reachable without a bearer token. Every other view requires one."""
    view.public = True  # type: ignore[attr-defined]
    return view


def authenticate() -> None:
    """before_request hook: resolve the bearer token unless the matched view is public.

    Unmatched routes (404/405) and automatic OPTIONS answers carry no data, so they need no token."""
    request = flask.request
    if request.endpoint is None or request.method == "OPTIONS":
        return
    view = flask.current_app.view_functions[request.endpoint]
    if getattr(view, "public", False):
        return
    flask.g.session = front().sessions.resolve(request.headers.get("Authorization"))


def client_ip() -> str:
    """The peer address. Behind reverse proxies, WALLET_TRUSTED_PROXIES=N wraps the app in werkzeug's
    ProxyFix (X-Forwarded-For only, N hops; web/app.py) so this is the client and not the proxy;
    X-Forwarded-For is never trusted by default."""
    return flask.request.remote_addr or "unknown"


def check_pay_password(session: Session, pay_password: str) -> None:
    """Memo hit: a constant-time HMAC compare. Otherwise: count the attempt (over the limit: 429), then one
    argon2id verify; a correct pay password gives its attempt back."""
    state = front()
    if state.pay_memo.matches(session, pay_password, lambda: _stored_pay_hash(session.account_id)):
        return
    subjects = [(state.limits.pay_account, str(session.account_id)), (state.limits.pay_ip, client_ip())]
    state.failures.admit(subjects)
    generation = state.pay_memo.generation()
    stored = _stored_pay_hash(session.account_id)
    if not verify_secret(stored, pay_password):
        raise WrongPayPassword("the pay password is wrong")
    state.failures.forgive(subjects)
    state.pay_memo.remember(session, pay_password, stored, generation)


def _stored_pay_hash(account_id: int) -> str | None:
    """Hand-written: cluster gates read it for every memo each FRONT_RECHECK_MS."""
    row = sql.query_one(Account._meta.database, "SELECT pay_password_hash FROM account WHERE id = {p}", (account_id,))
    return None if row is None else row[0]
