"""``GET /accounts/<id>/sla?period=YYYY-MM``: a month's latency-SLA attainment and its service
credit (admin bearer), what ``tollgate sla report`` prints. Without ``period``: this month so
far."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from events.sla import PERIOD, period_of
from functions.errors import BadRequest
from functions.http import require_bearer
from ledger_fn.sla import ServiceCredits


def sla_blueprint(credits: ServiceCredits, admin_token: str | None) -> Blueprint:
    bp = Blueprint("sla", __name__)

    @bp.get("/accounts/<account_id>/sla")
    def report(account_id: str) -> Response:
        require_bearer(admin_token)
        period = request.args.get("period") or period_of(credits.clock())
        if not PERIOD.match(period):
            raise BadRequest(f"period must be a month as YYYY-MM (e.g. 2026-12): {period!r}")
        return jsonify(credits.report(account_id, period))

    return bp
