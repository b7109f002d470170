"""template.yaml → the local process list, triggers and endpoints `tollgate up` runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.catalog import PING_EVENT_TYPE
from infra.local import LocalPlatform, iso_seconds, plan
from infra.template import load_template

ROOT = Path(__file__).resolve().parents[2]
ALL = ("ledger", "ledger-admin", "route", "ingress", "infer")


def local(tmp_path: Path, servable: tuple[str, ...] = ALL) -> LocalPlatform:
    ports = iter(range(20000, 20100))
    return plan(
        load_template(ROOT / "template.yaml"),
        ROOT / "template.yaml",
        tmp_path,
        ingress_port=8080,
        broker_url="http://127.0.0.1:9999",
        admin_token="tok",
        servable=servable,
        port=lambda: next(ports),
    )


@pytest.mark.parametrize(
    ("duration", "seconds"), [("PT0.5S", 0.5), ("PT2S", 2.0), ("PT1M", 60.0), ("PT1H1M1S", 3661.0)]
)
def test_iso_durations(duration: str, seconds: float) -> None:
    assert iso_seconds(duration) == seconds


def test_processes_and_their_environment(tmp_path: Path) -> None:
    platform = local(tmp_path)
    names = [p.name for p in platform.processes]
    assert names == [
        "ledger", "ledger-admin", "route", "infer-edge", "infer-regional", "infer-cloud", "ingress"
    ]  # fmt: skip
    ingress = platform.processes[-1]
    assert ingress.port == 8080
    assert ingress.env["K_SINK"] == "http://127.0.0.1:9999"
    assert ingress.env["TOLLGATE_LEDGER_URL"] == platform.url("ledger")
    assert "TOLLGATE_ROUTE_URL" not in ingress.env  # the ingress routes in-process
    assert ingress.env["TOLLGATE_STORE"] == f"sqlite:///{(tmp_path / 'tollgate.db').resolve()}"
    edge = platform.processes[3]
    assert edge.argv[-1] == "infer"
    assert edge.env["TOLLGATE_MODEL_NAME"] == "SmolLM2-135M-Instruct"
    assert edge.env["TOLLGATE_TIER"] == "edge"
    clusters = platform.endpoints["clusters"]
    assert clusters["regional-paris-1"] == dict.fromkeys(
        ["smollm2-135m", "llama31-8b", "llama33-70b"], platform.infer["regional"]
    )


def test_triggers_as_knative_renders_them(tmp_path: Path) -> None:
    platform = local(tmp_path)
    by_name = {s.name: s for s in platform.subscriptions}
    ledger, admin = platform.url("ledger"), platform.url("ledger-admin")
    settle = by_name["settle-inference-completed"]
    assert settle.filter == {"type": "io.tollgate.inference.completed.v1"}
    assert settle.subscriber == ledger
    assert (settle.delivery.retry, settle.delivery.backoff_delay_s) == (12, 1.0)
    # Dead letters go to ledger-admin, which keeps them (ledger would re-handle them).
    assert settle.delivery.dead_letter_sink == admin
    sweep = by_name["sweep-holds-sweep-ping"]
    assert sweep.filter == {"type": PING_EVENT_TYPE, "tollgatetype": "io.tollgate.holds.sweep.v1"}
    # Every scheduled command reaches its function through a ping trigger of its own.
    template = load_template(ROOT / "template.yaml")
    ping_filters = [s.filter for s in platform.subscriptions]
    for ping in template.eventing.pings:
        assert {"type": PING_EVENT_TYPE, "tollgatetype": ping.type} in ping_filters
    hosts = {"route": platform.url("route"), "ingress": platform.url("ingress")}
    for trigger in template.eventing.triggers:
        expected = hosts.get(trigger.function, ledger)  # every other function is the ledger's
        names = [n for n in by_name if n.startswith(trigger.resource_name)]
        assert names and all(by_name[n].subscriber == expected for n in names)


def test_functions_not_servable_yet_are_left_out(tmp_path: Path) -> None:
    platform = local(tmp_path, servable=("ledger", "ledger-admin", "infer"))
    assert platform.skipped == ("route", "ingress")
    assert {p.name for p in platform.processes} >= {"ledger", "infer-edge"}
    assert "route" not in {p.name for p in platform.processes}
    assert not [s for s in platform.subscriptions if s.name.startswith("route-")]
