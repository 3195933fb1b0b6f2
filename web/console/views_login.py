"""Login (name + password + TOTP code) and logout. Both are staff log rows, appended in the transaction that
creates or deletes the session row."""

from __future__ import annotations

import flask

from core.limits import CONSOLE_LOCKOUT_MS
from storage import admins, stafflog
from storage.models import AdminUser
from web.auth import client_ip
from web.console import auth
from web.console.blueprint import bp
from web.console.forms import EmptyForm, LoginForm
from web.console.sessions import session_interface

REFUSED = (f"Login refused: wrong name, password or code, or too many failed attempts (then wait "
           f"{CONSOLE_LOCKOUT_MS // 60_000} minutes).")


@bp.route("/login", methods=["GET", "POST"])
@auth.anonymous
def login():
    form = LoginForm()
    status = 200
    if form.is_submitted():
        admin = auth.check_login(form.name.data or "", form.password.data or "", form.code.data or "") \
            if form.validate() else None
        if admin is not None:
            _start_session(admin)
            return flask.redirect(auth.safe_next(flask.request.args.get("next")))
        status = 401
    expired = flask.request.args.get("expired") == "1" and not form.is_submitted()
    return flask.render_template("console/login.html", form=form, expired=expired,
                                 refused=REFUSED if status == 401 else None), status


def _start_session(admin: AdminUser) -> None:
    db = AdminUser._meta.database
    with db.atomic():
        admins.record_success(admin.id)
        session_interface().start(flask.session, admin.id)
        stafflog.append(db, stafflog.Actor(admin.id, admin.name, admin.role), "console.login", f"admin:{admin.id}",
                        {"ip": client_ip()})


@bp.post("/logout")
@auth.action(*auth.ALL_ROLES)  # ends one's own session: no role is kept from it, an auditor included
def logout():
    EmptyForm()  # the guard has checked its CSRF token
    me = auth.staff()
    db = AdminUser._meta.database
    with db.atomic():
        session_interface().end(flask.session)
        stafflog.append(db, stafflog.Actor(me.admin_id, me.name, me.role), "console.logout", f"admin:{me.admin_id}")
    return flask.redirect(flask.url_for("console.login"))
