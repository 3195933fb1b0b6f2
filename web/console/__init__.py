"""The admin console (/admin): server-rendered pages for staff (Jinja2, no JavaScript), on a session cookie of
their own (web/console/sessions.py), guarded by role and CSRF token (web/console/auth.py).

Its pages: login and logout (views_login), the review queue and a withdrawal's page with approve, reject and
the operator's flag clearing (views_withdrawals), the treasury with the signing pause (views_treasury), flagged deposits and the failed-credit retry (views_deposits),
accounts (lookup, balances, holds, history) and the hold release (views_accounts), the staff log with its
hash-chain check (views_stafflog), and the system's health (views_health). The JSON admin API under
/admin/api/v1 is another blueprint; this one never serves /admin/api.

Every staff action is appended to the staff log in the transaction of its change: by the actor that owns the
rows (the Allocator for holds, BlockWatch for deposits; the message carries the staff member), or here for the
console's own rows (sessions).
"""

from __future__ import annotations

from web.console.blueprint import bp

__all__ = ["bp"]
