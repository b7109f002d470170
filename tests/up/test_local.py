"""template.yaml → the local process list, triggers and endpoints `tollgate up` runs."""

from __future__ import annotations

from pathlib import Path

from infra.local.platform import LocalPlatform, plan
from infra.template.catalog import PING_EVENT_TYPE
from infra.template.load import load_template

ROOT = Path(__file__).resolve().parents[2]


def local(tmp_path: Path) -> LocalPlatform:
    ports = iter(range(20000, 20100))
    return plan(
        load_template(ROOT / "template.yaml"),
        ROOT / "template.yaml",
        tmp_path,
        ingress_port=8080,
        broker_url="http://127.0.0.1:9999",
        issuer_url="http://127.0.0.1:9998",
        admin_token="tok",
        environ={"TOLLGATE_CAMARA_TOKEN": "camara-secret", "TOLLGATE_ADMIN_TOKEN": "ignored"},
        port=lambda: next(ports),
    )


def test_processes_and_their_environment(tmp_path: Path) -> None:
    platform = local(tmp_path)
    names = [p.name for p in platform.processes]
    assert names == [
        "ledger", "ledger-admin", "deadletters", "route",
        "infer-edge", "infer-regional", "infer-cloud", "ingress",
    ]  # fmt: skip
    ingress = platform.processes[-1]
    assert ingress.port == 8080
    assert ingress.env["K_SINK"] == "http://127.0.0.1:9999"
    assert all(p.argv[-2:] == ["--host", "127.0.0.1"] for p in platform.processes)
    assert ingress.env["TOLLGATE_LEDGER_URL"] == platform.url("ledger")
    assert "TOLLGATE_ROUTE_URL" not in ingress.env  # the ingress routes in-process
    assert ingress.env["TOLLGATE_STORE"] == f"sqlite:///{(tmp_path / 'tollgate.db').resolve()}"
    edge = platform.processes[4]
    assert edge.argv[-3] == "infer"
    assert edge.env["TOLLGATE_MODEL_NAME"] == "SmolLM2-135M-Instruct"
    assert edge.env["TOLLGATE_TIER"] == "edge"
    clusters = platform.endpoints["clusters"]
    assert clusters["regional-paris-1"] == dict.fromkeys(
        ["smollm2-135m", "llama31-8b", "llama33-70b"], platform.infer["regional"]
    )


def test_triggers_as_knative_renders_them(tmp_path: Path) -> None:
    platform = local(tmp_path)
    by_name = {s.name: s for s in platform.triggers}
    ledger, admin = platform.url("ledger"), platform.url("ledger-admin")
    settle = by_name["settle-inference-completed"]
    assert settle.filter == {"type": "io.tollgate.inference.completed.v1"}
    assert settle.subscriber == ledger
    assert (settle.delivery.retry, settle.delivery.backoff_delay_s) == (12, 1.0)
    # Dead letters go to their own sink, which keeps them (ledger would re-handle them).
    assert settle.delivery.dead_letter_sink == platform.url("deadletters") != admin
    assert settle.account == "settle-inference-completed-oidc-eventing.knative.dev-trigger"
    assert settle.audience == "serving.knative.dev/service/tollgate/ledger"
    sweep = by_name["sweep-holds-sweep-ping"]
    assert sweep.filter == {"type": PING_EVENT_TYPE, "tollgatetype": "io.tollgate.holds.sweep.v1"}
    # Every scheduled command reaches its function through a ping trigger of its own.
    template = load_template(ROOT / "template.yaml")
    ping_filters = [s.filter for s in platform.triggers]
    for ping in template.eventing.pings:
        assert {"type": PING_EVENT_TYPE, "tollgatetype": ping.type} in ping_filters
    hosts = {"route": platform.url("route"), "ingress": platform.url("ingress")}
    for trigger in template.eventing.triggers:
        expected = hosts.get(trigger.function, ledger)  # every other function is the ledger's
        names = [n for n in by_name if n.startswith(trigger.resource_name)]
        assert names and all(by_name[n].subscriber == expected for n in names)


def test_each_secret_only_where_it_is_used(tmp_path: Path) -> None:
    platform = local(tmp_path)
    holders = {
        name: sorted(p.name for p in platform.processes if name in p.env)
        for name in platform.secrets
    }
    assert holders["TOLLGATE_ADMIN_TOKEN"] == ["ledger-admin"]
    assert holders["TOLLGATE_CAMARA_TOKEN"] == ["ingress"]
    admin = next(p for p in platform.processes if p.name == "ledger-admin")
    assert admin.env["TOLLGATE_ADMIN_TOKEN"] == "tok"  # the one tollgate up decided


def test_identities_tokens_and_where_remote_infer_reports(tmp_path: Path) -> None:
    platform = local(tmp_path)
    by_name = {p.name: p for p in platform.processes}
    events = "http://127.0.0.1:8080/events/clusters"
    assert by_name["infer-regional"].env["K_SINK"] == "http://127.0.0.1:9999"  # home: the broker
    assert by_name["infer-edge"].env["K_SINK"] == events  # elsewhere: the ingress relays
    assert by_name["infer-edge"].env["TOLLGATE_ALSO_SERVES"] == "edge-marseille-5g-1"
    tokens = {(p.service_account, p.path.name): p.audience for p in platform.projections}
    assert tokens[("infer-edge", "sink")] == events
    assert tokens[("ledger", "sink")] == "eventing.knative.dev/broker/tollgate/default"
    assert tokens[("ingress", "authorize")] == "serving.knative.dev/service/tollgate/ledger"
    assert platform.trust.remote_issuers == {
        "http://127.0.0.1:9998": ("edge-lyon-5g-1", "edge-marseille-5g-1", "cloud-frankfurt-1")
    }
