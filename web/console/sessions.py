"""Server-side console sessions behind Flask's own `session` (so Flask-WTF keeps its CSRF token there and
`flash` works): the cookie carries 256 random bits, the admin_session row its SHA-256, the staff member's id
and the session's data.

- The cookie is HttpOnly, SameSite=Strict, limited to /admin, and Secure when the request came over TLS.
- A session ends CONSOLE_IDLE_MS after its last request, CONSOLE_SESSION_MAX_MS after login, or at logout
  (its row is deleted). Time is the console's clock (integer ms), so tests can move it. The row's last-seen
  time is written only when it is CONSOLE_SESSION_TOUCH_MS old (or the session changed): most page views are
  reads only.
- Login rotates the session: the anonymous one (which held the login form's CSRF token) is deleted and a new
  token is issued, so a token planted before login is worth nothing after it.
- Only console pages (/admin, not /admin/api) use this; every other request keeps Flask's own interface.
- Rows past their idle time are purged in bounded batches, at most once per CONSOLE_SESSION_PURGE_EVERY_MS.
"""

from __future__ import annotations

import hashlib
import secrets

import flask
from flask.json.tag import TaggedJSONSerializer
from flask.sessions import SecureCookieSession, SessionInterface

from core.limits import (
    CONSOLE_IDLE_MS, CONSOLE_SESSION_MAX_MS, CONSOLE_SESSION_PURGE_BATCH, CONSOLE_SESSION_PURGE_EVERY_MS,
    CONSOLE_SESSION_TOUCH_MS,
)
from storage.admins import AdminSession
from web.console.state import Console

COOKIE_NAME = "wallet_console"
COOKIE_PATH = "/admin"
_SERIALIZER = TaggedJSONSerializer()


def is_console_path(path: str) -> bool:
    """Console pages: /admin and below, but not the admin JSON API nor the stylesheet."""
    if path != "/admin" and not path.startswith("/admin/"):
        return False
    return not path.startswith(("/admin/api/", "/admin/static/"))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConsoleSession(SecureCookieSession):
    """Flask's dict-like session with the row it lives in."""

    def __init__(self, initial: dict | None = None, token_hash: str | None = None, admin_id: int | None = None,
                 created_at_ms: int | None = None, expired: bool = False, last_seen_ms: int | None = None) -> None:
        super().__init__(initial)
        self.last_seen_ms = last_seen_ms  # as read from its row
        self.token_hash = token_hash
        self.admin_id = admin_id
        self.created_at_ms = created_at_ms
        self.expired = expired  # a session idled out or ended at its maximum age: the login page says so
        self.new_token: str | None = None  # issued this request: the cookie to set
        self.ended = False  # logged out: the cookie to remove


class ConsoleSessionInterface(SessionInterface):
    def __init__(self, fallback: SessionInterface, console: Console) -> None:
        self.fallback = fallback
        self.console = console

    def open_session(self, app: flask.Flask, request: flask.Request):  # noqa: ANN201 - a session or the fallback's
        if not is_console_path(request.path):
            return self.fallback.open_session(app, request)
        token = request.cookies.get(COOKIE_NAME, "")
        if not token or len(token) > 128:
            return ConsoleSession()
        row = AdminSession.get_or_none(AdminSession.token_hash == _digest(token))
        if row is None:
            return ConsoleSession()
        now = self.console.clock()
        if now - row.last_seen_ms > CONSOLE_IDLE_MS or now - row.created_at_ms > CONSOLE_SESSION_MAX_MS:
            AdminSession.delete().where(AdminSession.token_hash == row.token_hash).execute()
            return ConsoleSession(expired=row.admin_id is not None)
        return ConsoleSession(_SERIALIZER.loads(row.data), row.token_hash, row.admin_id, row.created_at_ms,
                              last_seen_ms=row.last_seen_ms)

    def save_session(self, app: flask.Flask, session, response: flask.Response) -> None:  # noqa: ANN001
        if not isinstance(session, ConsoleSession):
            return self.fallback.save_session(app, session, response)
        now = self.console.clock()
        if session.ended:
            if session.token_hash is not None:
                AdminSession.delete().where(AdminSession.token_hash == session.token_hash).execute()
            response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="Strict",
                                   secure=flask.request.is_secure)
            return
        if session.token_hash is None:
            if not (session.modified and session):  # nothing to keep: no row, no cookie
                return
            self._insert(session, None, now)
        elif session.modified or session.last_seen_ms is None or now - session.last_seen_ms >= CONSOLE_SESSION_TOUCH_MS:
            fields = {AdminSession.last_seen_ms: now}
            if session.modified:
                fields[AdminSession.data] = _SERIALIZER.dumps(dict(session))
            AdminSession.update(fields).where(AdminSession.token_hash == session.token_hash).execute()
        if session.new_token is not None:
            response.set_cookie(COOKIE_NAME, session.new_token, path=COOKIE_PATH, httponly=True, samesite="Strict",
                                secure=flask.request.is_secure)
        response.vary.add("Cookie")

    # -- login and logout (called by the views, inside the transaction that logs them) ------------------
    def start(self, session: ConsoleSession, admin_id: int) -> None:
        """Rotate to a new session of `admin_id`: the old row goes, a new token is issued, the data is cleared
        (Flask-WTF makes a new CSRF token on the next form)."""
        if session.token_hash is not None:
            AdminSession.delete().where(AdminSession.token_hash == session.token_hash).execute()
        session.clear()
        flask.g.pop("csrf_token", None)
        now = self.console.clock()
        self._insert(session, admin_id, now)

    def end(self, session: ConsoleSession) -> None:
        if session.token_hash is not None:
            AdminSession.delete().where(AdminSession.token_hash == session.token_hash).execute()
        session.ended = True

    def _insert(self, session: ConsoleSession, admin_id: int | None, now: int) -> None:
        token = secrets.token_urlsafe(32)
        AdminSession.insert(token_hash=_digest(token), admin_id=admin_id, data=_SERIALIZER.dumps(dict(session)),
                            created_at_ms=now, last_seen_ms=now).execute()
        session.token_hash, session.admin_id, session.created_at_ms = _digest(token), admin_id, now
        session.new_token = token
        self._purge(now)  # rows are only ever added here, so stale ones are bounded here

    def _purge(self, now: int) -> None:
        if now - self.console.last_purge_ms < CONSOLE_SESSION_PURGE_EVERY_MS:
            return
        self.console.last_purge_ms = now
        stale = [h for (h,) in AdminSession.select(AdminSession.token_hash)
                 .where(AdminSession.last_seen_ms < now - CONSOLE_IDLE_MS)
                 .limit(CONSOLE_SESSION_PURGE_BATCH).tuples()]
        if stale:
            AdminSession.delete().where(AdminSession.token_hash.in_(stale)).execute()


def session_interface() -> ConsoleSessionInterface:
    return flask.current_app.session_interface
