"""The console's rules without a browser (Flask's test client over a real ledger on sqlite):
sign-in, sessions that end, CSRF on every form, one grant per rendered form, bad input refused
with a message and no effect, no open redirect, the security headers, the vendored chart."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from events.prices import CreditUnit
from functions.config import Settings
from functions.store import Store
from ledger_fn.app import create_app
from ledger_fn.console import ConsoleConfig
from ledger_fn.ledger import Ledger
from ledger_fn.plans import PlanGrant
from tests.console.browser import ROOT
from tests.trust import nobody

HTTPS = "https://console.test"  # the session cookie is Secure
TOKEN = "console-test-token"
PLANS = {"developer": PlanGrant("developer", "subscription", 20_000_000)}
EUR = CreditUnit(currency="EUR", decimals=2, per_unit=1_000_000)


@pytest.fixture
def ledger(sqlite_store: Store) -> Ledger:
    ledger = Ledger(sqlite_store)
    ledger.open_account("acme", {"name": "Acme Robotics", "plan": "developer"})
    ledger.execute("acme", "grant", {"amount": 5_000_000, "origin": "promotion"})
    return ledger


def _app(ledger: Ledger, token: str | None = TOKEN) -> FlaskClient:
    settings = Settings(store_url="unused", admin_token=token, sink=None, port=0)
    app = create_app(
        "ledger-admin",
        senders=nobody(),
        settings=settings,
        store=ledger.store,
        ledger=ledger,
        plans=PLANS,
        console=ConsoleConfig(credit=EUR),
    )
    return app.test_client()


@pytest.fixture
def client(ledger: Ledger) -> Iterator[FlaskClient]:
    yield _app(ledger)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert found, "no CSRF token in the form"
    return found.group(1)


def _sign_in(client: FlaskClient) -> None:
    token = _csrf(client.get("/console/login", base_url=HTTPS).text)
    answer = client.post(
        "/console/login", data={"csrf_token": token, "token": TOKEN}, base_url=HTTPS
    )
    assert answer.status_code == 302


def _account_form(client: FlaskClient) -> tuple[str, str]:
    html = client.get("/console/accounts/acme", base_url=HTTPS).text
    key = re.search(r'name="idempotency_key" type="hidden" value="([^"]+)"', html)
    assert key
    return _csrf(html), key.group(1)


def test_every_page_needs_a_session(client: FlaskClient) -> None:
    for path in ("/console/", "/console/accounts", "/console/accounts/acme", "/console/tiers"):
        answer = client.get(path, base_url=HTTPS)
        assert answer.status_code == 302 and "/console/login" in answer.headers["Location"]
    assert client.post("/console/accounts/acme/grants", base_url=HTTPS).status_code == 302


def test_a_wrong_token_is_refused_and_the_cookie_is_strict(client: FlaskClient) -> None:
    token = _csrf(client.get("/console/login", base_url=HTTPS).text)
    wrong = client.post(
        "/console/login", data={"csrf_token": token, "token": "guess"}, base_url=HTTPS
    )
    assert wrong.status_code == 401 and "not the admin token" in wrong.text
    right = client.post(
        "/console/login", data={"csrf_token": token, "token": TOKEN}, base_url=HTTPS
    )
    cookie = right.headers["Set-Cookie"]
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/console"):
        assert attribute in cookie


def test_sign_in_without_the_form_token_is_refused(client: FlaskClient) -> None:
    answer = client.post("/console/login", data={"token": TOKEN}, base_url=HTTPS)
    assert answer.status_code == 200 and "sid" not in answer.headers.get("Set-Cookie", "")
    assert client.get("/console/accounts", base_url=HTTPS).status_code == 302


def test_signing_out_ends_the_session_even_for_a_copied_cookie(
    client: FlaskClient, ledger: Ledger
) -> None:
    _sign_in(client)
    copied = client.get_cookie("tollgate_console", domain="console.test", path="/console")
    assert copied is not None
    token = _csrf(client.get("/console/accounts", base_url=HTTPS).text)
    client.post("/console/logout", data={"csrf_token": token}, base_url=HTTPS)
    other = _app(ledger)
    other.set_cookie(copied.key, copied.value, domain="console.test", path="/console", secure=True)
    assert other.get("/console/accounts", base_url=HTTPS).status_code == 302


def test_a_form_without_its_csrf_token_changes_nothing(client: FlaskClient, ledger: Ledger) -> None:
    _sign_in(client)
    _, key = _account_form(client)
    answer = client.post(
        "/console/accounts/acme/grants",
        data={"amount": "1000", "origin": "top-up", "idempotency_key": key},
        base_url=HTTPS,
        follow_redirects=True,
    )
    assert "did not come from this console" in answer.text
    assert ledger.balance("acme")["granted"] == 5_000_000


def test_one_rendered_grant_form_grants_once(client: FlaskClient, ledger: Ledger) -> None:
    _sign_in(client)
    token, key = _account_form(client)
    form = {"csrf_token": token, "idempotency_key": key, "amount": "1 000 000", "origin": "top-up"}
    for _ in range(3):
        sent = client.post("/console/accounts/acme/grants", data=form, base_url=HTTPS)
        assert sent.status_code == 302
    assert ledger.balance("acme")["granted"] == 6_000_000
    page = client.get("/console/accounts/acme", base_url=HTTPS).text
    assert "Granted 1,000,000 credits" in page and "1.00 EUR" in page
    # Another rendered form is another grant.
    token, key2 = _account_form(client)
    assert key2 != key
    form = {**form, "csrf_token": token, "idempotency_key": key2}
    client.post("/console/accounts/acme/grants", data=form, base_url=HTTPS)
    assert ledger.balance("acme")["granted"] == 7_000_000


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("0", "give a whole number of at least 1 credit"),
        ("1.5", "Not a valid integer"),
        ("", "required"),
    ],
)
def test_a_bad_amount_is_explained_and_grants_nothing(
    client: FlaskClient, ledger: Ledger, amount: str, message: str
) -> None:
    _sign_in(client)
    token, key = _account_form(client)
    answer = client.post(
        "/console/accounts/acme/grants",
        data={"csrf_token": token, "idempotency_key": key, "amount": amount, "origin": "top-up"},
        base_url=HTTPS,
    )
    assert message in answer.text
    assert ledger.balance("acme")["granted"] == 5_000_000


def test_creating_an_account_uses_the_admin_api_rules(client: FlaskClient, ledger: Ledger) -> None:
    _sign_in(client)
    token = _csrf(client.get("/console/accounts", base_url=HTTPS).text)
    made = client.post(
        "/console/accounts",
        data={
            "csrf_token": token,
            "account_id": "beta",
            "plan": "developer",
            "slice_ids": "s-1, s-2",
        },
        base_url=HTTPS,
    )
    assert made.headers["Location"].endswith("/console/accounts/beta")
    assert ledger.meta("beta").data["slice_ids"] == ["s-1", "s-2"]
    again = client.post(
        "/console/accounts",
        data={"csrf_token": token, "account_id": "beta"},
        base_url=HTTPS,
        follow_redirects=True,
    )
    assert "account beta already exists" in again.text
    bad = client.post(
        "/console/accounts",
        data={"csrf_token": token, "account_id": "no spaces allowed"},
        base_url=HTTPS,
        follow_redirects=True,
    )
    assert "String should match pattern" in bad.text
    taken = client.post(
        "/console/accounts",
        data={"csrf_token": token, "account_id": "gamma", "slice_ids": "s-1"},
        base_url=HTTPS,
        follow_redirects=True,
    )
    assert "slice s-1 is bound to account beta" in taken.text


def test_search_finds_by_id_or_name(client: FlaskClient, ledger: Ledger) -> None:
    ledger.open_account("zeta", {"name": "Zeta Logistics"})
    _sign_in(client)
    page = client.get("/console/accounts?q=robot", base_url=HTTPS).text
    assert ">acme</a>" in page and ">zeta</a>" not in page
    page = client.get("/console/accounts?q=ZET", base_url=HTTPS).text
    assert ">zeta</a>" in page and ">acme</a>" not in page
    assert "5,000,000" in client.get("/console/accounts?plan=developer", base_url=HTTPS).text


def test_an_unknown_account_is_a_404_page(client: FlaskClient) -> None:
    _sign_in(client)
    answer = client.get("/console/accounts/nobody", base_url=HTTPS)
    assert answer.status_code == 404 and "no account nobody" in answer.text
    assert answer.mimetype == "text/html"


def test_sign_in_never_redirects_off_the_console(client: FlaskClient) -> None:
    for target in ("https://evil.example/", "//evil.example/console/", "/elsewhere"):
        token = _csrf(client.get("/console/login", base_url=HTTPS).text)
        answer = client.post(
            f"/console/login?next={target}",
            data={"csrf_token": token, "token": TOKEN},
            base_url=HTTPS,
        )
        assert answer.headers["Location"] == "/console/accounts"


def test_pages_forbid_framing_caching_and_foreign_scripts(client: FlaskClient) -> None:
    _sign_in(client)
    answer = client.get("/console/accounts/acme", base_url=HTTPS)
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Cache-Control"] == "no-store"
    assert "<script>" not in answer.text  # no inline script: the chart reads a JSON block


def test_without_an_admin_token_the_console_is_disabled(ledger: Ledger) -> None:
    client = _app(ledger, token=None)
    for path in ("/console/login", "/console/accounts"):
        answer = client.get(path, base_url=HTTPS)
        assert answer.status_code == 503 and "TOLLGATE_ADMIN_TOKEN" in answer.text


def test_the_vendored_chart_is_the_pinned_npm_build() -> None:
    vendor = ROOT / "ledger_fn" / "console" / "static" / "vendor"
    npm = ROOT / "node_modules" / "chart.js"
    if not npm.is_dir():
        pytest.skip("node_modules not installed (make dynamodb-local)")
    assert (vendor / "chart.umd.min.js").read_bytes() == (
        npm / "dist" / "chart.umd.min.js"
    ).read_bytes(), "run make vendor"
    assert (vendor / "chart.js-LICENSE.md").read_text() == (npm / "LICENSE.md").read_text()


def test_the_package_ships_the_console_files() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["ledger_fn.console"]
    console = ROOT / "ledger_fn" / "console"
    shipped = {p for pattern in globs for p in console.glob(pattern)}
    for needed in ("templates/account.html", "static/console.js", "static/vendor/chart.umd.min.js"):
        assert console / needed in shipped
    assert all(p in shipped for p in console.rglob("*.*") if p.suffix in (".html", ".js", ".css"))
    assert Path(console / "static" / "vendor" / "chart.js-LICENSE.md") in shipped
