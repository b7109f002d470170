"""template.yaml → the local process list, triggers and endpoints `tollgate up` runs."""

from __future__ import annotations

from pathlib import Path

from infra.local.platform import LocalPlatform, plan, write_json
from infra.template.catalog import PING_EVENT_TYPE
from infra.template.load import load_template
from infra.wiring import topology_from_env

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
        ledger_keys="k1:0123456789abcdef0123456789abcdef",
        environ={"TOLLGATE_CAMARA_TOKEN": "camara-secret", "TOLLGATE_ADMIN_TOKEN": "ignored"},
        port=lambda: next(ports),
    )


def test_processes_and_their_environment(tmp_path: Path) -> None:
    platform = local(tmp_path)
    names = [p.name for p in platform.processes]
    assert names == [
        "broker", "ledger", "ledger-admin", "deadletters", "route", "ingress",
        "ingress-edge-lyon-5g-1",
    ]  # fmt: skip
    broker = platform.processes[0]
    assert broker.port == 9999 and broker.argv[-2:] == [
        str((tmp_path / "local-broker.json").resolve()),
        str((tmp_path / "broker.db").resolve()),
    ]
    ingress = platform.processes[-2]
    assert ingress.port == 8080
    assert ingress.env["K_SINK"] == "http://127.0.0.1:9999"
    # Every process listens on the loopback only (the broker reads its host from its env).
    assert all(p.argv[-2:] == ["--host", "127.0.0.1"] for p in platform.processes[1:])
    assert broker.env["TOLLGATE_BROKER_HOST"] == "127.0.0.1"
    assert ingress.env["TOLLGATE_LEDGER_URL"] == platform.url("ledger")
    assert "TOLLGATE_ROUTE_URL" not in ingress.env  # the ingress routes in-process
    assert ingress.env["TOLLGATE_STORE"] == f"sqlite:///{(tmp_path / 'tollgate.db').resolve()}"
    # The ledger's signing keys reach the ledger processes only.
    keyed = [p.name for p in platform.processes if "TOLLGATE_LEDGER_KEYS" in p.env]
    assert keyed == ["ledger", "ledger-admin"]
    # The edge site's own ingress: its own store, the ledger only through the home's relay.
    site = platform.processes[-1]
    relay = "http://127.0.0.1:8080/sites/ledger"
    assert site.env["TOLLGATE_HOME_RELAY_URL"] == relay == ingress.env["TOLLGATE_LEDGER_RELAY_URL"]
    assert site.env["TOLLGATE_CLUSTER"] == "edge-lyon-5g-1"
    assert site.env["TOLLGATE_STORE"] != ingress.env["TOLLGATE_STORE"]
    assert "TOLLGATE_LEDGER_URL" not in site.env and "TOLLGATE_ADMIN_TOKEN" not in site.env
    # Infer is one service per local tier, scaled 0..maxScale as smollm2's Knative Service.
    assert [s.tier for s in platform.services] == ["edge", "regional", "cloud"]
    service = platform.services[0]
    assert service.url == platform.infer["edge"]
    assert (service.scaling.min_scale, service.scaling.max_scale) == (0, 4)
    assert service.scaling.concurrency == 4  # smollm2's serving.concurrency
    assert service.scaling.scale_down_delay_s == 15 * 60  # infer's scaleDownDelay
    assert service.scaling.stable_window_s == 60  # Knative's default: no window annotated
    edge = service.replica(2, 20099)
    assert edge.name == "infer-edge-2" and edge.port == 20099
    assert edge.argv[-3] == "infer"
    assert edge.env["TOLLGATE_MODEL_NAME"] == "SmolLM2-135M-Instruct"
    assert edge.env["TOLLGATE_TIER"] == "edge"
    assert edge.env["TOLLGATE_CONCURRENCY"] == "4"
    # Sized as Knative sizes them, each with its own outbox, each replica too.
    assert ingress.env["TOLLGATE_CONTAINER_CONCURRENCY"] == "200"
    assert edge.env["TOLLGATE_CONTAINER_CONCURRENCY"] == "4"  # smollm2's serving.concurrency
    ledger = platform.processes[1]
    assert ledger.env["TOLLGATE_CONTAINER_CONCURRENCY"] == str(100 + 50 + 50 + 20 + 1)
    replicas = [s.replica(i, 1) for s in platform.services for i in (1, 2, 3, 4)]
    processes = [*platform.processes[1:], *replicas]
    outboxes = {p.env["TOLLGATE_OUTBOX_DIR"] for p in processes}
    assert len(outboxes) == len(processes)
    assert edge.env["TOLLGATE_OUTBOX_DIR"] == str((tmp_path / "outbox" / "infer-edge-2").resolve())
    # Every infer process runs the local model: it is the one model served (and listed); the
    # template's vLLM models are left out, each with the reason `tollgate up` prints.
    clusters = platform.endpoints["clusters"]
    assert clusters["regional-paris-1"] == {"smollm2-135m": platform.infer["regional"]}
    assert platform.endpoints["unserved"] == platform.unserved
    assert platform.unserved["llama33-70b"] == (
        "it runs on vLLM with 4 GPU(s) (160 GiB); this machine serves only smollm2-135m on the "
        "CPU (template local.model)"
    )
    topology = topology_from_env(
        {
            "TOLLGATE_TEMPLATE": str(ROOT / "template.yaml"),
            "TOLLGATE_LOCAL_ENDPOINTS": str(_written(platform)),
        }
    )
    assert list(topology.models) == ["smollm2-135m"]
    assert "vLLM with 4 GPU(s)" in topology.unserved["meta-llama/Llama-3.3-70B-Instruct"]


def _written(platform: LocalPlatform) -> Path:
    write_json(platform.endpoints_file, platform.endpoints)
    return platform.endpoints_file


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
    by_name = {s.replica_name(1): s.replica(1, 1) for s in platform.services}
    events = "http://127.0.0.1:8080/events/clusters"
    assert by_name["infer-regional-1"].env["K_SINK"] == "http://127.0.0.1:9999"  # home: broker
    assert by_name["infer-edge-1"].env["K_SINK"] == events  # elsewhere: the ingress relays
    assert by_name["infer-edge-1"].env["TOLLGATE_ALSO_SERVES"] == "edge-marseille-5g-1"
    tokens = {(p.service_account, p.path.name): p.audience for p in platform.projections}
    # Each replica the service may run has its own identity and token files.
    for index in (1, 2, 3, 4):
        assert tokens[(f"infer-edge-{index}", "sink")] == events
        broker = "eventing.knative.dev/broker/tollgate/default"
        assert tokens[(f"infer-regional-{index}", "sink")] == broker
    assert ("infer-edge-5", "sink") not in tokens
    token_dir = by_name["infer-edge-1"].env["TOLLGATE_TOKEN_DIR"]
    assert token_dir == str((tmp_path / "tokens" / "infer-edge-1").resolve())
    assert tokens[("ledger", "sink")] == "eventing.knative.dev/broker/tollgate/default"
    assert tokens[("ingress", "authorize")] == "serving.knative.dev/service/tollgate/ledger"
    assert platform.trust.remote_issuers == {
        "http://127.0.0.1:9998": ("edge-lyon-5g-1", "edge-marseille-5g-1", "cloud-frankfurt-1")
    }
