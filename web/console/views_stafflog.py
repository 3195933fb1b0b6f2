"""The staff log, newest first, and its hash chain verified on every view (storage/stafflog.py verify: one
indexed pass over the table, in pages)."""

from __future__ import annotations

import flask

from core.limits import CONSOLE_PAGE_ROWS
from storage import stafflog
from storage.stafflog import StaffAction
from web.console import auth
from web.console.blueprint import bp


@bp.get("/staff-log")
@auth.page
def staff_log():
    before = flask.request.args.get("before", type=int)
    query = StaffAction.select()
    if before is not None:
        query = query.where(StaffAction.id < before)
    rows = list(query.order_by(StaffAction.id.desc()).limit(CONSOLE_PAGE_ROWS + 1))
    more = len(rows) > CONSOLE_PAGE_ROWS
    rows = rows[:CONSOLE_PAGE_ROWS]
    problems = stafflog.verify()
    total = StaffAction.select().count()
    return flask.render_template("console/staff_log.html", rows=rows, problems=problems, total=total,
                                 next_before=rows[-1].id if more else None)
