"""The ops console's pages, server-rendered (Jinja) with plain forms; served by ledger-admin at
``/console`` behind the admin token (see sessions.py).

Every change goes through the same functions as the admin API (ledger_fn.admin), so the console
can do nothing the API would refuse; every form carries a CSRF token; the grant form carries an
idempotency key, so a double click grants once."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from pydantic import ValidationError
from werkzeug.wrappers import Response as BaseResponse
from wtforms.fields.choices import SelectChoice

from events.activity import NETWORK_EVENTS, ROUTE_DECISIONS
from events.network import SLICE_BOOKED
from events.prices import CreditUnit, PriceBook
from functions.accounts import read_profile
from functions.apikeys import ApiKeys
from functions.deadletters import DeadLetters
from functions.errors import FunctionError
from functions.recent import RecentLog
from ledger_fn.admin import (
    AccountChange,
    NewAccount,
    NewGrant,
    change_account,
    create_account,
    grant_credits,
)
from ledger_fn.console import readmodel
from ledger_fn.console.forms import (
    GrantForm,
    IssueKeyForm,
    LoginForm,
    LogoutForm,
    NewAccountForm,
    RevokeKeyForm,
    SlicesForm,
    split_ids,
)
from ledger_fn.console.sessions import ConsoleSessions, configure
from ledger_fn.console.tiers import read_tiers
from ledger_fn.ledger import Ledger
from ledger_fn.plans import Plans

PAGE_SIZE = 50
JOURNAL_SHOWN = 20
RECENT_SHOWN = 50
SECURITY_HEADERS = {
    # Everything the console needs is its own: no inline script, no other origin, no framing.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # a key is shown once: never from a cache
}


@dataclass(frozen=True)
class ConsoleConfig:
    """What the console shows beyond the ledger: money (the template's credit), the price book
    and where the router's live view is (the route function)."""

    credit: CreditUnit | None = None
    price_book: PriceBook | None = None
    route_url: str | None = None


def console_blueprint(
    ledger: Ledger,
    plans: Plans,
    keys: ApiKeys,
    dead_letters: DeadLetters,
    admin_token: str | None,
    config: ConsoleConfig,
) -> Blueprint:
    bp = Blueprint(
        "console",
        __name__,
        url_prefix="/console",
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    sessions = ConsoleSessions(ledger.store, ledger.clock)
    decisions = RecentLog(ledger.store, ROUTE_DECISIONS, clock=ledger.clock)
    network = RecentLog(ledger.store, NETWORK_EVENTS, clock=ledger.clock)
    credit = config.credit

    if admin_token is not None:
        token = admin_token
        bp.record_once(lambda state: configure(state.app, token))

    @bp.app_template_filter("credits")
    def credits_filter(value: int | None) -> str:
        return "—" if value is None else f"{value:,}"

    @bp.app_template_filter("money")
    def money_filter(value: int | None) -> str:
        return "" if value is None or credit is None else credit.money(value)

    @bp.app_template_filter("when")
    def when_filter(value: int | None) -> str:
        return readmodel.when(value)

    @bp.context_processor
    def common() -> dict[str, Any]:
        signed_in = g.get("console_signed_in", False)
        return {"logout_form": LogoutForm() if signed_in else None, "credit": credit}

    @bp.before_request
    def signed_in() -> BaseResponse | tuple[str, int] | None:
        if request.endpoint in ("console.login", "console.static"):
            return None
        if admin_token is None:
            return _disabled()
        if not sessions.valid(session.get("sid")):
            session.pop("sid", None)
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        g.console_signed_in = True
        return None

    @bp.after_request
    def headers(response: Response) -> Response:
        if request.endpoint != "console.static":
            response.headers.update(SECURITY_HEADERS)
        return response

    @bp.errorhandler(FunctionError)
    def function_error(exc: FunctionError) -> tuple[str, int]:
        return render_template("error.html", status=exc.status, message=exc.message), exc.status

    # -- signing in and out --------------------------------------------------------------------

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> BaseResponse | str | tuple[str, int]:
        if admin_token is None:
            return _disabled()
        form = LoginForm()
        if form.validate_on_submit():
            if hmac.compare_digest(str(form.token.data).encode(), admin_token.encode()):
                session.clear()
                session.permanent = True
                session["sid"] = sessions.start()
                return redirect(_safe_next(request.args.get("next")))
            form.token.errors = ["That is not the admin token."]
            return render_template("login.html", form=form), 401
        _csrf_problem(form)
        return render_template("login.html", form=form)

    @bp.post("/logout")
    def logout() -> BaseResponse:
        if LogoutForm().validate_on_submit():
            sessions.end(session.get("sid"))
            session.clear()
            flash("Signed out.", "info")
            return redirect(url_for("console.login"))
        abort(400)

    # -- accounts ------------------------------------------------------------------------------

    @bp.get("/")
    def home() -> BaseResponse:
        return redirect(url_for("console.accounts"))

    @bp.route("/accounts", methods=["GET", "POST"])
    def accounts() -> BaseResponse | str:
        form = NewAccountForm()
        form.plan.choices = [SelectChoice("", "No plan"), *map(SelectChoice, sorted(plans.plans))]
        if request.method == "POST":
            if form.validate_on_submit():
                created = _apply(
                    lambda: create_account(ledger, plans, _new_account(form)),
                    f"Account {form.account_id.data} created.",
                )
                if created:
                    return redirect(url_for("console.account", account_id=form.account_id.data))
            else:
                _form_problems(form)
        query = request.args.get("q", "").strip().lower()
        plan = request.args.get("plan", "")
        page_arg = request.args.get("page", "1")
        page = max(int(page_arg), 1) if page_arg.isdigit() else 1
        matching = [a for a in _profiles(ledger) if _matches(a, query, plan)]
        shown = matching[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        now = int(ledger.clock())
        rows = [readmodel.account_row(ledger, a["account_id"], now) for a in shown]
        return render_template(
            "accounts.html",
            rows=rows,
            form=form,
            query=request.args.get("q", ""),
            plan=plan,
            plans=sorted(plans.plans),
            page=page,
            pages=max(1, -(-len(matching) // PAGE_SIZE)),
            total=len(matching),
        )

    @bp.get("/accounts/<account_id>")
    def account(account_id: str) -> str:
        return _account_page(account_id)

    @bp.post("/accounts/<account_id>/grants")
    def grant(account_id: str) -> BaseResponse | str:
        form = GrantForm()
        if not form.validate_on_submit():
            _form_problems(form)
            return _account_page(account_id, grant_form=form)
        key = str(form.idempotency_key.data or "")
        result: dict[str, Any] = {}

        def do() -> None:
            result.update(grant_credits(ledger, account_id, _new_grant(form), key or None))

        if _apply(do, ""):
            flash(
                f"Granted {result['amount']:,} credits as {result['origin']} lot "
                f"{result['lot_id']} (form {key[:8]}: submitting it again grants nothing more).",
                "success",
            )
        return redirect(url_for("console.account", account_id=account_id))

    @bp.post("/accounts/<account_id>/keys")
    def issue_key(account_id: str) -> BaseResponse | str:
        form = IssueKeyForm()
        if not form.validate_on_submit():
            _form_problems(form)
            return redirect(url_for("console.account", account_id=account_id))
        ledger.meta(account_id)  # 404 for an unknown account
        issued = keys.issue(account_id)
        # Rendered in this answer only (never stored, never redirected through a cookie).
        return _account_page(account_id, new_key=issued)

    @bp.post("/accounts/<account_id>/keys/revoke")
    def revoke_key(account_id: str) -> BaseResponse:
        form = RevokeKeyForm()
        if form.validate_on_submit():
            key_id = str(form.key_id.data)
            _apply(lambda: keys.revoke(account_id, key_id), f"Key {key_id} revoked.")
        else:
            _form_problems(form)
        return redirect(url_for("console.account", account_id=account_id))

    @bp.post("/accounts/<account_id>/slices")
    def bind(account_id: str) -> BaseResponse:
        form = SlicesForm()
        if form.validate_on_submit():
            profile = ledger.meta(account_id).data
            slices = sorted({*profile.get("slice_ids", []), *split_ids(form.slice_ids.data)})
            _apply(
                lambda: change_account(
                    ledger, plans, account_id, AccountChange.model_validate({"slice_ids": slices})
                ),
                f"Slices bound: {', '.join(slices)}.",
            )
        else:
            _form_problems(form)
        return redirect(url_for("console.account", account_id=account_id))

    def _account_page(
        account_id: str,
        *,
        grant_form: GrantForm | None = None,
        new_key: dict[str, Any] | None = None,
    ) -> str:
        now = int(ledger.clock())
        state = ledger.state(account_id)  # 404 for an unknown account
        profile = ledger.meta(account_id).data
        history = readmodel.entries(ledger, account_id)
        series = readmodel.burn_down(history, now)
        lots = sorted(state.lots.values(), key=lambda lot: lot.seq, reverse=True)
        return render_template(
            "account.html",
            account_id=account_id,
            profile=profile,
            state=state,
            burn=readmodel.burn(history, state.available, now),
            series=json.dumps(series),
            points=len(series),
            journal=readmodel.journal_rows(ledger.keys, history, JOURNAL_SHOWN),
            lots=[lot for lot in lots if lot.remaining > 0],
            sla_lots=[lot for lot in lots if lot.origin == "sla-credit"],
            holds=sorted(state.holds.values(), key=lambda h: h.seq, reverse=True),
            keys=sorted(keys.list(account_id), key=lambda k: k["created"], reverse=True),
            next_grant=plans.next_grant(account_id)["next_grant"],
            grant_form=grant_form or GrantForm(formdata=None),
            key_form=IssueKeyForm(formdata=None),
            revoke_form=RevokeKeyForm(formdata=None),
            slices_form=SlicesForm(formdata=None),
            new_key=new_key,
        )

    # -- tiers, events, prices -------------------------------------------------------------------

    @bp.get("/tiers")
    def tiers() -> str:
        view = read_tiers(config.route_url)
        return render_template(
            "tiers.html", view=view, decisions=decisions.read(RECENT_SHOWN), now=ledger.clock()
        )

    @bp.get("/events")
    def events() -> str:
        received = network.read(RECENT_SHOWN)
        effects = {
            i: [
                readmodel.slice_grant(ledger, str(e["data"].get("slice_id")))
                for e in record.get("events", [])
                if e.get("type") == SLICE_BOOKED
            ]
            for i, record in enumerate(received)
        }
        dead = [
            {**d, "error": readmodel.dead_letter_error(d.get("extensions", {}))}
            for d in dead_letters.list(limit=RECENT_SHOWN)
        ]
        return render_template(
            "events.html",
            dead=dead,
            received=received,
            effects=effects,
        )

    @bp.get("/prices")
    def prices() -> str:
        book = config.price_book
        now = ledger.clock()
        return render_template(
            "prices.html",
            book=book,
            current=book.in_effect(now) if book else None,
            status=(lambda v: book.status(v, now)) if book else None,
        )

    return bp


# -- helpers -------------------------------------------------------------------------------------


def _disabled() -> tuple[str, int]:
    message = "The console is disabled: set TOLLGATE_ADMIN_TOKEN to enable it."
    return render_template("error.html", status=503, message=message), 503


def _safe_next(target: str | None) -> str:
    """Only a console path: never an open redirect to another site."""
    if target and target.startswith("/console/") and not urlsplit(target).netloc:
        return target
    return url_for("console.accounts")


def _csrf_problem(form: Any) -> None:
    if request.method == "POST" and "csrf_token" in form.errors:
        flash("The form had expired or did not come from this console: please send it again.")


def _form_problems(form: Any) -> None:
    _csrf_problem(form)
    for name, errors in form.errors.items():
        if name != "csrf_token":
            label = getattr(getattr(form, name, None), "label", None)
            flash(f"{label.text if label else name}: {'; '.join(errors)}", "error")


def _apply(change: Callable[[], Any], success: str) -> bool:
    """Run a change; its refusal (bad input, conflict) is shown to the person, not raised."""
    try:
        change()
    except FunctionError as exc:
        flash(exc.message, "error")
        return False
    except ValidationError as exc:
        flash("; ".join(str(e["msg"]) for e in exc.errors()), "error")
        return False
    if success:
        flash(success, "success")
    return True


def _new_account(form: NewAccountForm) -> NewAccount:
    data: dict[str, Any] = {
        "account_id": (form.account_id.data or "").strip(),
        "slice_ids": split_ids(form.slice_ids.data),
    }
    if form.name.data:
        data["name"] = form.name.data.strip()
    if form.plan.data:
        data["plan"] = form.plan.data
    return NewAccount.model_validate(data)


def _new_grant(form: GrantForm) -> NewGrant:
    data: dict[str, Any] = {"amount": form.amount.data, "origin": form.origin.data}
    if form.expires.data:
        # The end of the chosen day, UTC: "expires 30 June" keeps the credits through 30 June.
        data["expires_at"] = datetime.combine(form.expires.data, time.max, UTC).isoformat()
    if form.reference.data:
        data["reference"] = form.reference.data.strip()
    return NewGrant.model_validate(data)


def _profiles(ledger: Ledger) -> list[dict[str, Any]]:
    out = []
    for account_id in ledger.accounts():
        profile = read_profile(ledger.store, account_id)
        if profile is not None:
            out.append({"account_id": account_id, **profile})
    return out


def _matches(profile: dict[str, Any], query: str, plan: str) -> bool:
    if plan and profile.get("plan") != plan:
        return False
    text = f"{profile['account_id']} {profile.get('name') or ''}".lower()
    return not query or query in text
