"""The console's forms (Flask-WTF): each carries a CSRF token kept in the server-side session."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length, Regexp

from core.limits import CONSOLE_REASON_MAX_LEN, STAFF_PASSWORD_MAX_LEN, TOTP_DIGITS


class LoginForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=STAFF_PASSWORD_MAX_LEN)])
    code = StringField("Code", validators=[DataRequired(), Regexp(rf"^[0-9]{{{TOTP_DIGITS}}}$")])


class ReasonForm(FlaskForm):
    """A staff action on one subject (release a hold, retry a credit): the reason goes to the staff log."""

    reason = StringField("Reason", validators=[DataRequired(), Length(max=CONSOLE_REASON_MAX_LEN)])


class EmptyForm(FlaskForm):
    """Logout: nothing but the CSRF token."""
