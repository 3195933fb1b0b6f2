"""Who may see and do what in the console. Deny by default:

- Every console request that carries an `Authorization` header is refused (401): the console knows only its
  own session cookie, never a user's (or anyone's) bearer token.
- Every view needs a logged-in staff member, except those marked `anonymous` (the login page).
- GET shows a page to any staff role. A POST needs the view to name the roles that may make it
  (`action("operator")`); a view that names none refuses every POST. Then its CSRF token must be valid
  (Flask-WTF, kept in the server-side session). A refusal changes nothing: it happens before the view runs.
- Login: name + password (argon2id) + TOTP code, each failure counted; CONSOLE_LOGIN_FAILURES_MAX in a row
  lock the staff member out for CONSOLE_LOCKOUT_MS (the lock itself is a staff log row, by the service). A
  code's time step is accepted once (storage/admins.py claim_totp_step). Every refusal answers the same words,
  so the page does not tell which part was wrong, nor whether the name exists.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar
from urllib.parse import urlsplit

import flask
from flask_wtf.csrf import validate_csrf
from werkzeug.exceptions import BadRequest, Forbidden, Unauthorized
from wtforms import ValidationError as CsrfInvalid

from core import messages as m
from core.limits import CONSOLE_LOCKOUT_MS, CONSOLE_LOGIN_FAILURES_MAX
from storage import admins, stafflog
from storage.models import AdminUser
from web.console.sessions import ConsoleSession
from web.console.state import console
from web.security import verify_secret

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)
ALL_ROLES = frozenset(admins.ROLES)
LOGIN_ENDPOINT = "console.login"


class NotLoggedIn(Exception):
    """No live staff session: the browser is sent to the login page (saying so if the session expired)."""


def anonymous(view: F) -> F:
    """Reachable without a staff session (the login page). `public` tells the user API's bearer check
    (web/auth.py) to leave the request to the console's own guard."""
    view.public = True  # type: ignore[attr-defined]
    view.console_anonymous = True  # type: ignore[attr-defined]
    return view


def page(view: F) -> F:
    """A page any logged-in staff member may see (GET only)."""
    view.public = True  # type: ignore[attr-defined]
    return view


def action(*roles: str) -> Callable[[F], F]:
    """A view whose POST only these roles may make."""
    assert roles and set(roles) <= ALL_ROLES, roles

    def mark(view: F) -> F:
        view.public = True  # type: ignore[attr-defined]
        view.console_roles = frozenset(roles)  # type: ignore[attr-defined]
        return view
    return mark


def staff() -> m.StaffRef:
    """The logged-in staff member of this request (set by `guard` before any non-anonymous view)."""
    return flask.g.staff


def guard() -> None:
    """The blueprint's before_request (see the module docstring)."""
    request = flask.request
    if request.endpoint is None:
        return
    if "Authorization" in request.headers:
        raise Unauthorized("The console does not accept bearer tokens: log in with your staff name, password and "
                           "code.")
    view = flask.current_app.view_functions[request.endpoint]
    if not getattr(view, "console_anonymous", False):
        flask.g.staff = _logged_in()
        if request.method not in ("GET", "HEAD"):
            roles = getattr(view, "console_roles", frozenset())
            if flask.g.staff.role not in roles:
                log.warning("console action refused for the role", extra={"endpoint": request.endpoint,
                                                                           "admin": flask.g.staff.name,
                                                                           "role": flask.g.staff.role})
                raise Forbidden(f"A {flask.g.staff.role} may not do this.")
    if request.method not in ("GET", "HEAD"):
        try:
            validate_csrf(request.form.get("csrf_token"))
        except CsrfInvalid as exc:
            log.warning("console form refused: CSRF check failed", extra={"endpoint": request.endpoint})
            raise BadRequest(f"The form was refused ({exc}). Reload the page and try again.") from None


def _logged_in() -> m.StaffRef:
    session: ConsoleSession = flask.session  # type: ignore[assignment]
    if session.admin_id is None:
        raise NotLoggedIn(session.expired)
    admin = AdminUser.get_or_none(AdminUser.id == session.admin_id)
    if admin is None:  # removed while logged in
        raise NotLoggedIn(False)
    return m.StaffRef(admin.id, admin.name, admin.role)


def to_login(exc: NotLoggedIn) -> flask.Response:
    args = {"expired": "1"} if exc.args and exc.args[0] else {}
    if flask.request.method == "GET":
        args["next"] = flask.request.full_path.rstrip("?")
    return flask.redirect(flask.url_for(LOGIN_ENDPOINT, **args))


def safe_next(target: str | None) -> str:
    """Where to go after login: a console path only (never another site: no open redirect)."""
    default = flask.url_for("console.health")
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin/") or target.startswith("//") \
            or "\\" in target:
        return default
    return target


# -- login -----------------------------------------------------------------------------------------------


def check_login(name: str, password: str, code: str) -> AdminUser | None:
    """The staff member these credentials prove, or None (the failure counted and logged)."""
    state = console()
    now = state.clock()
    admin = AdminUser.get_or_none(AdminUser.name == name)
    if admin is not None and admins.is_locked(admin, now):
        verify_secret(None, password)  # the same work as any other attempt
        return _refused(admin, "locked out", count=False)
    if not verify_secret(admin.password_hash if admin is not None else None, password):
        return _refused(admin, "wrong name or password")
    secret = admins.totp_secret(admin, state.ring) if state.ring is not None else None
    step = admins.matching_totp_step(secret, code, now) if secret else None
    if step is None:
        return _refused(admin, "wrong code")
    if not admins.claim_totp_step(admin.id, step):
        return _refused(admin, "code already used (replayed)")
    return admin


def _refused(admin: AdminUser | None, why: str, count: bool = True) -> None:
    log.warning("console login refused", extra={"admin": admin.name if admin else None, "reason": why})
    if admin is None or not count:
        return None
    db = AdminUser._meta.database
    with db.atomic():
        if admins.record_failure(admin.id, console().clock()):
            stafflog.append(db, stafflog.SERVICE, "console.lockout", f"admin:{admin.id}",
                            {"name": admin.name, "failures": CONSOLE_LOGIN_FAILURES_MAX,
                             "locked_ms": CONSOLE_LOCKOUT_MS})
            log.warning("staff member locked out after repeated failed logins", extra={"admin": admin.name})
    return None
