"""The ops console in a real browser (headless Chromium) against `tollgate up` with the real
model: sign in with the admin token, see the demo account, issue a key and see it once, grant
credits through the form and see the balance and the chart change, double-submit the grant form
and see one grant, see a cluster turn warm after a request, see network events and dead letters,
sign out and be refused. Each page is screenshotted at 1366x768 (and whole) into SCREENSHOTS and
checked with axe-core: no serious or critical violation. Tests run in file order on one
platform."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from events import types
from functions.cloudevent import make_event, to_binary
from infra.local.demo import ACCOUNT, CREDITS
from infra.local.platform import free_port
from infra.template.load import load_template
from infra.template.policies import broker_audience
from tests.console.browser import ROOT, axe_violations, chromium, screenshot
from tests.e2e.conftest import issuer as platform_issuer
from tests.events import payloads
from tests.up.test_up import tollgate_up

pytestmark = [pytest.mark.model, pytest.mark.slow]

SCREENSHOTS = ROOT / "build" / "console-screenshots"
ADMIN = "console-admin-token"
CAMARA = "console-camara-token"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("console") / "state"
    env = {"TOLLGATE_ADMIN_TOKEN": ADMIN, "TOLLGATE_CAMARA_TOKEN": CAMARA}
    with tollgate_up(state, free_port(), env) as endpoints:
        yield endpoints


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


def page(browser: webdriver.Chrome, name: str) -> None:
    """Screenshot the page as it is now and check it with axe-core."""
    screenshot(browser, SCREENSHOTS, name)
    assert axe_violations(browser) == [], f"{name}: serious accessibility violations"


def text(browser: webdriver.Chrome) -> str:
    return str(browser.find_element(By.TAG_NAME, "body").text)


def card(browser: webdriver.Chrome, title: str) -> int:
    """The credits a balance card on the account page shows (e.g. 20,000,000)."""
    for element in browser.find_elements(By.CSS_SELECTOR, ".card"):
        if element.find_element(By.TAG_NAME, "h2").text.strip().lower() == title.lower():
            return int(element.find_element(By.CSS_SELECTOR, ".num").text.replace(",", ""))
    raise AssertionError(f"no {title} card")


def chart_points(browser: webdriver.Chrome) -> int:
    points: int = browser.execute_script(
        "return Chart.getChart('burn-down').data.datasets[0].data.length"
    )
    return points


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def submit(browser: webdriver.Chrome, button: WebElement) -> None:
    """Click a form's button and wait for the page it leads to: ``click()`` returns once the
    click is dispatched, before the POST and its redirect have replaced the page. The old page
    is marked and the wait is for a complete document without the mark; asking the old page's
    elements instead (``staleness_of``) races the navigation, and Chromium then answers with
    errors other than "stale" ("Node ... does not belong to the document")."""
    browser.execute_script("window.tollgateOldPage = true")
    button.click()
    WebDriverWait(browser, 60, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script(
            "return window.tollgateOldPage === undefined && document.readyState === 'complete'"
        )
    )


def grant_form(browser: webdriver.Chrome, amount: str) -> None:
    browser.find_element(By.ID, "amount").send_keys(amount)


def test_sign_in_and_see_the_demo_account(
    platform: dict[str, Any], browser: webdriver.Chrome
) -> None:
    browser.get(platform["console"])
    assert "/console/login" in browser.current_url  # nothing without signing in
    page(browser, "01-login")
    browser.find_element(By.ID, "token").send_keys("not the token")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]"))
    assert "That is not the admin token." in text(browser)
    browser.find_element(By.ID, "token").send_keys(ADMIN)
    submit(browser, browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]"))
    assert browser.current_url.rstrip("/").endswith("/console/accounts"), text(browser)
    cookie = browser.get_cookie("tollgate_console")
    assert cookie is not None
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    row = browser.find_element(By.XPATH, f"//tbody/tr[th/a[text()='{ACCOUNT}']]")
    assert f"{CREDITS:,}" in row.text and "20.00 EUR" in row.text
    page(browser, "02-accounts")


def test_a_key_is_shown_once_and_works(platform: dict[str, Any], browser: webdriver.Chrome) -> None:
    browser.get(f"{platform['console']}/accounts/{ACCOUNT}")
    assert card(browser, "Available") == CREDITS
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Issue a new key']"))
    key = browser.find_element(By.ID, "new-key").text
    assert key.startswith("tg_")
    page(browser, "03-account-new-key")
    models = requests.get(
        platform["ingress"] + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert models.status_code == 200
    browser.get(f"{platform['console']}/accounts/{ACCOUNT}")
    assert key not in browser.page_source  # once only
    platform["key"] = key


def test_a_grant_through_the_form_changes_balance_and_chart(
    platform: dict[str, Any], browser: webdriver.Chrome
) -> None:
    browser.get(f"{platform['console']}/accounts/{ACCOUNT}")
    before, points = card(browser, "Available"), chart_points(browser)
    grant_form(browser, "1,234,567")
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Grant credits']"))
    assert "Granted 1,234,567 credits" in text(browser)
    assert card(browser, "Available") == before + 1_234_567
    assert chart_points(browser) == points + 1
    page(browser, "04-account-after-grant")


def test_a_double_submitted_grant_grants_once(
    platform: dict[str, Any], browser: webdriver.Chrome
) -> None:
    browser.get(f"{platform['console']}/accounts/{ACCOUNT}")
    before = card(browser, "Available")
    grant_form(browser, "7000")
    # A double click: the same rendered form (one idempotency key) sent twice, both requests
    # reaching the console before either answer comes back.
    statuses = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const form = document.querySelector(\"form[action$='/grants']\");"
        "const send = () => fetch(form.action, {method: 'POST', body: new FormData(form),"
        " redirect: 'manual', credentials: 'same-origin'});"
        "Promise.all([send(), send()]).then(r => done(r.map(x => x.type)));"
    )
    assert len(statuses) == 2
    browser.get(f"{platform['console']}/accounts/{ACCOUNT}")
    assert card(browser, "Available") == before + 7000
    grants = [
        row.text
        for row in browser.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=lots-title] tr")
        if "7,000" in row.text
    ]
    assert len(grants) == 1, grants


def test_a_cluster_turns_warm_after_a_request(
    platform: dict[str, Any], browser: webdriver.Chrome
) -> None:
    def warmth(cluster: str) -> str:
        browser.get(f"{platform['console']}/tiers")
        site = browser.find_element(By.XPATH, f"//article[h3[text()='{cluster}']]")
        return str(site.find_element(By.XPATH, ".//tbody/tr[1]/td[2]").text)

    eventually(lambda: "cold" in warmth("cloud-frankfurt-1"), "the prober's first reading")
    page(browser, "05-tiers-cold")
    r = requests.post(
        platform["ingress"] + "/v1/chat/completions",
        json={
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 4,
        },
        headers={"Authorization": f"Bearer {platform['key']}", "x-tollgate-tier": "cloud"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    eventually(lambda: "warm" in warmth("cloud-frankfurt-1"), "the cloud tier to turn warm")

    def decided() -> bool:
        # The route-decision log is written in batches (every 0.25 s), so reload until it shows.
        browser.get(f"{platform['console']}/tiers")
        decisions = browser.find_element(
            By.CSS_SELECTOR, "section[aria-labelledby=decisions-title]"
        )
        return "cloud-frankfurt-1" in decisions.text and "pinned to tier cloud" in decisions.text

    eventually(decided, "the route decision to be listed")
    page(browser, "06-tiers-warm")


def test_network_events_and_dead_letters_are_shown(
    platform: dict[str, Any], browser: webdriver.Chrome
) -> None:
    degraded = payloads.network_quality(packetDelayBudget=payloads.UNABLE)
    degraded["id"] = f"ci-{uuid.uuid4().hex}"
    sent = requests.post(
        f"{platform['events']}/quality-edge-lyon-5g-1",
        json=degraded,
        headers={"Authorization": f"Bearer {CAMARA}"},
        timeout=10,
    )
    assert sent.status_code == 204
    # A grant for an account that does not exist, from the operator's BSS (the template's
    # producer allowed to send grants): refused (404), so the broker dead-letters it.
    event = make_event(
        types.CREDITS_GRANT,
        "/tests/console",
        {"account_id": "nobody", "amount": 5},
        id=f"dl-{uuid.uuid4().hex}",
    )
    message = to_binary(event)
    audience = broker_audience(load_template(ROOT / "template.yaml"))
    bss = {"Authorization": f"Bearer {platform_issuer(platform).mint('operator-bss', audience)}"}
    posted = requests.post(
        platform["broker"], data=message.body, headers={**message.headers, **bss}, timeout=10
    )
    assert posted.ok

    def shown() -> bool:
        browser.get(f"{platform['console']}/events")
        body = text(browser)
        return "published" in body and "io.tollgate.credits.grant.v1" in body

    eventually(shown, "the network event and the dead letter")
    network = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=network-title]")
    assert "network.site.degraded.v1 for edge-lyon-5g-1" in network.text
    dead = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=dead-title]")
    assert "404" in dead.text and "no account nobody" in dead.text  # the error, decoded
    page(browser, "07-events")


def test_the_price_book_shows_the_current_version_and_its_history(
    platform: dict[str, Any], browser: webdriver.Chrome
) -> None:
    browser.get(f"{platform['console']}/prices")
    body = text(browser)
    published = requests.get(platform["ingress"] + "/v1/prices", timeout=10).json()
    assert f"In effect: version {published['current_version']}" in body
    assert "1 credit = 0.000001 EUR" in body and "3,130,000" in body
    assert all(v["version"] in body for v in published["versions"])
    page(browser, "08-prices")


def test_sign_out_and_be_refused(platform: dict[str, Any], browser: webdriver.Chrome) -> None:
    browser.get(f"{platform['console']}/accounts")
    copied = browser.get_cookie("tollgate_console")
    assert copied is not None
    submit(browser, browser.find_element(By.XPATH, "//button[text()='Sign out']"))
    assert "/console/login" in browser.current_url and "Signed out." in text(browser)
    browser.get(f"{platform['console']}/accounts/{ACCOUNT}")
    assert "/console/login" in browser.current_url
    # Even the session cookie from before signing out no longer opens anything.
    browser.add_cookie({k: copied[k] for k in ("name", "value", "path", "secure", "httpOnly")})
    browser.get(f"{platform['console']}/accounts")
    assert "/console/login" in browser.current_url
    page(browser, "09-signed-out")
