"""One error path for every function: OpenAI's error shape, whatever failed and wherever; a 500
tells the caller an error id, never the exception."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from flask import Blueprint, Flask
from prometheus_client import REGISTRY

from events import wire
from functions.app import create_app
from functions.auth.senders import Senders
from functions.auth.tokens import TokenFile
from functions.cloudevent import Incoming
from functions.config import Settings
from functions.errors import FunctionError
from functions.store import Store
from infer_fn.app import create_app as infer_app
from infer_fn.config import InferConfig
from infer_fn.engines.base import Engine
from ledger_fn.app import create_app as ledger_app
from router_fn.ingress_app import create_app as ingress_app
from router_fn.ledger_client import LedgerClient
from router_fn.route_app import create_app as route_app
from tests.infer.fakes import FaultyEngine, ScriptedEngine
from tests.router.helpers import topology
from tests.trust import CapabilityKeys, TestIssuer

SECRET = "password=hunter2 at /srv/tollgate/db"
FIELDS = {"message", "type", "param", "code"}


def _settings() -> Settings:
    return Settings(store_url="unused", admin_token="adm", sink=None, port=0)


AUDIENCE = "serving.knative.dev/service/tollgate/probe"
App = Callable[[Store, TestIssuer, CapabilityKeys], Flask]


def _senders(issuer: TestIssuer) -> Senders:
    return issuer.senders(AUDIENCE, {"prober": ()})


def _ingress(store: Store, issuer: TestIssuer, keys: CapabilityKeys) -> Flask:
    nowhere = "http://127.0.0.1:9"
    token = TokenFile(keys.directory / "no-token")
    ledger = LedgerClient(nowhere, None, authorize_token=token, refund_token=token)
    return ingress_app(
        topology(), store, ledger, senders=_senders(issuer), signing_key=keys.signing
    )


def _infer(keys: CapabilityKeys, issuer: TestIssuer, engine: Engine) -> Flask:
    config = InferConfig(model_name="scripted", idle_seconds=0, cluster="test-1")
    return infer_app(config, senders=_senders(issuer), capability_keys=keys.verify, engine=engine)


def _ledger(function: str) -> App:
    return lambda store, issuer, _: ledger_app(
        function, senders=_senders(issuer), settings=_settings(), store=store
    )


FUNCTIONS: dict[str, App] = {
    "ledger": _ledger("ledger"),
    "authorize": _ledger("authorize"),
    "ledger-admin": _ledger("ledger-admin"),
    "route": lambda store, issuer, _: route_app(topology(), store, senders=_senders(issuer)),
    "ingress": _ingress,
    "infer": lambda _, issuer, keys: _infer(keys, issuer, ScriptedEngine(["w"])),
}


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_answers_errors_in_openai_shape(
    function: str, sqlite_store: Store, issuer: TestIssuer, cap_keys: CapabilityKeys
) -> None:
    client = FUNCTIONS[function](sqlite_store, issuer, cap_keys).test_client()
    signed = issuer.bearer("prober", AUDIENCE)
    answers = {
        "no such route": client.get("/no/such/route"),
        "wrong method": client.put("/healthz"),
        "not a CloudEvent": client.post(
            "/", data=b"{}", content_type="application/json", headers=signed
        ),
        "over the body limit": client.post("/", data=b"x" * (2 << 20), headers=signed),
    }
    for what, answer in answers.items():
        assert 400 <= answer.status_code < 500, (what, answer.status_code)
        error = answer.get_json()["error"]
        assert set(error) >= FIELDS, (what, error)
        assert error["type"] == "invalid_request_error", (what, error)
        assert error["message"] and error["code"], (what, error)
    assert answers["over the body limit"].get_json()["error"]["code"] == "request_too_large"


def _failing_app(failure: Exception, issuer: TestIssuer) -> Flask:
    def handler(event: Incoming) -> None:
        raise failure

    broken = Blueprint("broken", __name__)

    @broken.get("/broken")
    def view() -> str:
        raise failure

    return create_app(
        "probe", senders=_senders(issuer), handlers={"t.fail": handler}, blueprints=[broken]
    )


def test_a_500_names_an_error_id_and_keeps_the_exception_in_the_log(
    caplog: pytest.LogCaptureFixture, issuer: TestIssuer
) -> None:
    client = _failing_app(RuntimeError(SECRET), issuer).test_client()
    with caplog.at_level(logging.ERROR, logger="functions.app"):
        answer = client.get("/broken")
    assert answer.status_code == 500
    error = answer.get_json()["error"]
    assert set(error) == FIELDS
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert "hunter2" not in answer.get_data(as_text=True)
    error_id = error["message"].rsplit(" ", 1)[-1]
    assert len(error_id) == 32
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info is not None and SECRET in str(record.exc_info[1])


def test_a_function_error_keeps_its_own_status_type_and_headers(issuer: TestIssuer) -> None:
    failure = FunctionError(
        "slow down", status=429, error_type="rate_limit_error", headers={"Retry-After": "2"}
    )
    answer = _failing_app(failure, issuer).test_client().get("/broken")
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "2"
    assert answer.get_json()["error"]["type"] == "rate_limit_error"


def test_infer_answers_an_engine_failure_without_its_text(
    issuer: TestIssuer, cap_keys: CapabilityKeys
) -> None:
    engine = FaultyEngine(ScriptedEngine(["w"] * 5), fail_after=2)
    app = _infer(cap_keys, issuer, engine)
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
    vouched = {wire.CAPABILITY: cap_keys.capability()}
    answer = app.test_client().post("/v1/chat/completions", json=body, headers=vouched)
    assert answer.status_code == 500
    error = answer.get_json()["error"]
    assert error["code"] == "engine_failed" and error["type"] == "server_error"
    assert "injected fault" not in error["message"]


def _refused(path: str, outcome: str) -> float:
    labels = {"endpoint": path, "outcome": outcome}
    return REGISTRY.get_sample_value("tollgate_infer_requests_total", labels) or 0.0


def test_infer_still_counts_what_it_refuses_through_the_runtimes_hook(
    issuer: TestIssuer, cap_keys: CapabilityKeys
) -> None:
    app = _infer(cap_keys, issuer, ScriptedEngine(["w"]))
    client = app.test_client()
    path = "/v1/chat/completions"
    invalid, elsewhere = _refused(path, "invalid"), _refused("/", "invalid")
    assert client.post(path, json={"model": "other", "messages": []}).status_code == 400
    unknown_model = {"model": "other", "messages": [{"role": "user"}]}
    vouched = {wire.CAPABILITY: cap_keys.capability(model="other")}
    assert client.post(path, json=unknown_model, headers=vouched).status_code == 404
    assert _refused(path, "invalid") == invalid + 2
    client.post("/", data=b"{}")  # not the OpenAI surface: not an inference request
    assert _refused("/", "invalid") == elsewhere
