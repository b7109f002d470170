"""Rendering: golden files for the shipped template, Knative's own schemas, and what GPU needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from infer_fn.config import InferConfig
from infra.iac_commands import render as render_command
from infra.knative.render import dump, manifest_filename, render, table_definition, write
from infra.local.platform import scaling_spec
from infra.template.catalog import FUNCTION_KINDS, PING_EVENT_TYPE
from infra.template.eventing import consumers
from infra.template.load import parse_template
from infra.template.schema import Template
from tests.infra.conftest import GOLDEN, SHIPPED, check_golden
from tests.infra.structural import CORE_SCHEMAS, load_schemas, validate, validate_resource

Manifest = dict[str, Any]


def _by(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def _consumed_type(attributes: dict[str, str]) -> str:
    """The Tollgate type a trigger delivers: scheduled commands carry it in the extension."""
    return attributes.get("tollgatetype", attributes["type"])


def test_golden_files(shipped: Template, tmp_path: Path) -> None:
    written = write(shipped, tmp_path)
    for path in written:
        check_golden(f"render/{path.relative_to(tmp_path)}", path.read_text(encoding="utf-8"))
    # No golden file is left over from a resource the template no longer declares.
    golden = {p.relative_to(GOLDEN / "render") for p in (GOLDEN / "render").rglob("*.*")}
    assert golden == {p.relative_to(tmp_path) for p in written}


def test_render_is_stable(shipped: Template) -> None:
    assert render(shipped) == render(shipped)


def test_every_manifest_validates_against_knative_schemas(shipped: Template) -> None:
    schemas = {**load_schemas(), **CORE_SCHEMAS}
    checked = 0
    for cluster, manifests in render(shipped).items():
        for m in manifests:
            key = (m["apiVersion"], m["kind"])
            assert key in schemas, f"{cluster}: no schema for {key}"
            errors = validate_resource(m, schemas[key])
            assert not errors, f"{cluster}/{m['kind']}/{m['metadata']['name']}: {errors}"
            checked += 1
    assert checked > 40


def test_schema_check_rejects_what_the_api_server_would(shipped: Template) -> None:
    schemas = load_schemas()
    service = _by(render(shipped)["regional-paris-1"], "Service")["authorize"]
    schema = schemas[("serving.knative.dev/v1", "Service")]
    bad = json.loads(json.dumps(service))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    bad["spec"]["template"]["spec"]["containerConcurrency"] = "100"
    errors = validate(bad, schema)
    assert any("imagePullPolicyy: unknown field" in e for e in errors)
    assert any("containerConcurrency: expected integer" in e for e in errors)


def test_a_stable_window_is_annotated_and_is_what_up_scales_by() -> None:
    text = SHIPPED.read_text(encoding="utf-8").replace(
        "serving: {concurrency: 4, maxScale: 4}",
        "serving: {concurrency: 4, maxScale: 4, scaleDownDelay: 1s, window: 6s}",
    )
    assert "autoscaler:" not in text  # shipped: Knative's own grace, no patch rendered
    assert not any(
        m["metadata"]["name"] == "config-autoscaler"
        for m in render(parse_template(text))["edge-lyon-5g-1"]
    )
    template = parse_template(text + "\nautoscaler: {scaleToZeroGracePeriod: 10s}\n")
    manifests = render(template)["edge-lyon-5g-1"]
    [patch] = [m for m in manifests if m["metadata"]["name"] == "config-autoscaler"]
    assert patch["metadata"]["namespace"] == "knative-serving"
    assert patch["data"] == {"scale-to-zero-grace-period": "10s"}
    svc = _by(manifests, "Service")["infer-smollm2-135m"]
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/window"] == "6s"
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "1s"
    assert annotations["autoscaling.knative.dev/max-scale"] == "4"
    # tollgate up's autoscaler takes the same numbers (infra/local/platform.py).
    spec = scaling_spec(
        template.infer_serving(template.model("smollm2-135m")),
        template.autoscaler.scale_to_zero_grace_period,
    )
    assert (spec.stable_window_s, spec.scale_down_delay_s, spec.max_scale) == (6, 1, 4)
    assert spec.scale_to_zero_grace_s == 10
    assert (spec.concurrency, spec.panic_window_s) == (4, 0.6)
    # The model stays loaded as long as Knative keeps the pod: window plus delay.
    assert template.warm_for_s(template.model("smollm2-135m")) == 7


def test_gpu_inference_service(shipped: Template) -> None:
    svc = _by(render(shipped)["edge-lyon-5g-1"], "Service")["infer-llama31-8b"]
    template = svc["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "15m"
    assert annotations["serving.knative.dev/progress-deadline"] == "20m"
    spec = template["spec"]
    infer, vllm = spec["containers"]
    # Knative: exactly one container of a multi-container pod declares the serving port.
    assert "ports" in infer and "ports" not in vllm
    env = {e["name"]: e.get("value") for e in infer["env"]}
    assert env["TOLLGATE_ENGINE"] == "openai-upstream"
    assert env["TOLLGATE_UPSTREAM_URL"] == "http://127.0.0.1:8000"
    assert env["TOLLGATE_UPSTREAM_MODEL"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert env["TOLLGATE_CONCURRENCY"] == "32"
    assert env["TOLLGATE_LOAD_TIMEOUT_SECONDS"] == "1200"
    assert infer["args"] == ["serve", "infer"]
    assert vllm["image"] == "vllm/vllm-openai:v0.33.0"
    assert vllm["args"][:2] == ["--model", "meta-llama/Llama-3.1-8B-Instruct"]
    # Bound to the pod's loopback, where infer reaches it (TOLLGATE_UPSTREAM_URL above).
    assert vllm["args"][vllm["args"].index("--host") + 1] == "127.0.0.1"
    assert vllm["args"][vllm["args"].index("--port") + 1] == "8000"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The startup probe waits out the whole progress deadline (20m) for the weights to load; it
    # runs in the container, since the kubelet cannot reach a loopback-bound server.
    probe = vllm["startupProbe"]
    assert "http://127.0.0.1:8000/health" in probe["exec"]["command"][-1]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 1200
    assert vllm["readinessProbe"]["exec"] == probe["exec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_tensor_parallel_70b(shipped: Template) -> None:
    svc = _by(render(shipped)["cloud-frankfurt-1"], "Service")["infer-llama33-70b"]
    vllm = svc["spec"]["template"]["spec"]["containers"][1]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert vllm["args"][vllm["args"].index("--tensor-parallel-size") + 1] == "4"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in vllm["volumeMounts"]


def test_cpu_inference_uses_llamacpp_in_process(shipped: Template) -> None:
    svc = _by(render(shipped)["edge-lyon-5g-1"], "Service")["infer-smollm2-135m"]
    spec = svc["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TOLLGATE_ENGINE"] == "llamacpp"
    assert env["TOLLGATE_MODEL_NAME"] == "SmolLM2-135M-Instruct"
    assert env["TOLLGATE_N_CTX"] == "8192"
    # As many sequences decoded together as Knative admits requests to the pod.
    assert env["TOLLGATE_CONCURRENCY"] == str(spec["containerConcurrency"]) == "4"
    assert "nodeSelector" not in spec and "nvidia.com/gpu" not in container["resources"]["limits"]


def test_function_services_and_secrets(shipped: Template) -> None:
    services = _by(render(shipped)["regional-paris-1"], "Service")
    for name in FUNCTION_KINDS.keys() - {"infer"}:
        container = services[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == shipped.image
        assert container["command"] == ["tollgate"] and container["args"] == ["serve", name]
        env = {e["name"]: e for e in container["env"]}
        assert env["TOLLGATE_STORE"]["value"] == "dynamodb:///tollgate-ledger"
        # The admin token only where the admin API is.
        assert ("TOLLGATE_ADMIN_TOKEN" in env) == (name == "ledger-admin")
    admin = services["ledger-admin"]["spec"]["template"]["spec"]["containers"][0]
    token = next(e for e in admin["env"] if e["name"] == "TOLLGATE_ADMIN_TOKEN")
    assert token["valueFrom"] == {"secretKeyRef": {"name": "tollgate-admin", "key": "token"}}
    authorize = services["authorize"]["spec"]["template"]
    assert authorize["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "1"
    assert authorize["spec"]["containerConcurrency"] == 100


def test_one_trigger_per_consumed_type_with_delivery(shipped: Template) -> None:
    home = render(shipped)["regional-paris-1"]
    triggers = _by(home, "Trigger")
    consumed = consumers(shipped)
    for trigger in triggers.values():
        spec = trigger["spec"]
        function = spec["subscriber"]["ref"]["name"]
        attributes = spec["filter"]["attributes"]
        assert _consumed_type(attributes) in consumed[function]
        delivery = spec["delivery"]
        assert delivery["backoffPolicy"] == "exponential"
        assert delivery["backoffDelay"].startswith("PT") and delivery["retry"] >= 5
        assert delivery["deadLetterSink"]["ref"]["name"] == "deadletters"
        assert delivery["deadLetterSink"]["audience"] == (
            "serving.knative.dev/service/tollgate/deadletters"
        )
        assert spec["subscriber"]["audience"] == f"serving.knative.dev/service/tollgate/{function}"
    declared = {(tr.type, tr.function) for tr in shipped.eventing.triggers}
    rendered = {
        (_consumed_type(t["spec"]["filter"]["attributes"]), t["spec"]["subscriber"]["ref"]["name"])
        for t in triggers.values()
    }
    assert rendered == declared
    assert triggers["settle-inference-completed"]["spec"]["delivery"]["retry"] == 12


def test_pings_reach_their_consumer_through_the_broker(shipped: Template) -> None:
    home = render(shipped)["regional-paris-1"]
    pings = _by(home, "PingSource")
    assert pings["holds-sweep"]["spec"]["schedule"] == "* * * * *"
    assert pings["monthly-grants"]["spec"]["schedule"] == "0 0 1 * *"
    assert pings["monthly-grants"]["spec"]["data"] == "{}"
    sweep = _by(home, "Trigger")["sweep-holds-sweep-ping"]["spec"]["filter"]["attributes"]
    assert sweep == {"type": PING_EVENT_TYPE, "tollgatetype": "io.tollgate.holds.sweep.v1"}
    assert pings["holds-sweep"]["spec"]["ceOverrides"]["extensions"] == {
        "tollgatetype": "io.tollgate.holds.sweep.v1"
    }


def test_eventing_lives_on_home_and_edges_emit_to_it(shipped: Template) -> None:
    rendered = render(shipped)
    edge = rendered["edge-lyon-5g-1"]
    assert not _by(edge, "Broker") and not _by(edge, "Trigger") and not _by(edge, "PingSource")
    # The broker is cluster-local: other clusters report to the home ingress, which checks
    # their infer by their cluster's issuer.
    events = "https://ingress.tollgate.paris-1.tollgate.demo-telco.example/events/clusters"
    assert _by(edge, "SinkBinding")["tollgate-sink"]["spec"]["sink"] == {
        "uri": events,
        "audience": events,
    }
    home_sink = _by(rendered["regional-paris-1"], "SinkBinding")["tollgate-sink"]["spec"]
    assert home_sink["sink"]["ref"]["kind"] == "Broker"
    assert home_sink["subject"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/part-of": "tollgate"}
    }
    for manifests in rendered.values():
        patches = {
            (m["metadata"]["namespace"], m["metadata"]["name"]): m
            for m in manifests
            if m["kind"] == "ConfigMap" and m["metadata"]["name"].startswith("config-")
        }
        serving = patches[("knative-serving", "config-features")]["data"]
        assert serving["kubernetes.podspec-nodeselector"] == "enabled"
        assert serving["kubernetes.podspec-tolerations"] == "enabled"


def test_table_definition(shipped: Template) -> None:
    definition = table_definition(shipped)
    assert definition["TableName"] == "tollgate-ledger"
    assert definition["BillingMode"] == "PAY_PER_REQUEST"
    assert definition["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at",
        "Enabled": True,
    }


def test_render_command_writes_the_rendered_files(shipped: Template, tmp_path: Path) -> None:
    stale = tmp_path / "edge-lyon-5g-1" / "99-service-gone.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("stale", encoding="utf-8")
    result = CliRunner().invoke(render_command, ["--out", str(tmp_path), str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    manifest = render(shipped)["edge-lyon-5g-1"][0]
    path = tmp_path / "edge-lyon-5g-1" / manifest_filename(0, manifest)
    assert path.read_text(encoding="utf-8") == dump(manifest)


def test_functions_read_the_same_template_from_their_configmap(shipped: Template) -> None:
    for manifests in render(shipped).values():
        configmap = _by(manifests, "ConfigMap")["tollgate-template"]
        assert parse_template(configmap["data"]["template.yaml"]) == shipped


def test_infer_env_is_what_infer_reads(shipped: Template) -> None:
    services = _by(render(shipped)["regional-paris-1"], "Service")
    for name, engine in (
        ("infer-smollm2-135m", "llamacpp"),
        ("infer-llama33-70b", "openai-upstream"),
    ):
        container = services[name]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        config = InferConfig.from_env(env)
        assert config.engine == engine
        assert config.tier == "regional" and config.cluster == "regional-paris-1"
        assert config.model_name == shipped.model(name.removeprefix("infer-")).served_name


def test_namespace_opts_into_sink_binding(shipped: Template) -> None:
    for manifests in render(shipped).values():
        namespace = _by(manifests, "Namespace")["tollgate"]
        assert namespace["metadata"]["labels"] == {"bindings.knative.dev/include": "true"}


def _secrets(service: Manifest) -> set[str]:
    """Every Secret a Service's pods can read: env references, envFrom, volumes."""
    spec = service["spec"]["template"]["spec"]
    names: set[str] = set()
    for container in spec["containers"]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(f"{ref['name']}/{ref['key']}")
        names |= {f["secretRef"]["name"] for f in container.get("envFrom", [])}
    for volume in spec.get("volumes", []):
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


def test_only_the_ingress_is_public(shipped: Template) -> None:
    for cluster, manifests in render(shipped).items():
        for name, service in _by(manifests, "Service").items():
            labels = service["metadata"]["labels"]
            visibility = labels.get("networking.knative.dev/visibility")
            assert (visibility is None) == (name == "ingress"), (cluster, name)
            assert service["spec"]["template"]["spec"]["serviceAccountName"] == name
        # Every cluster that hosts models has a public entry: its ingress.
        assert "ingress" in _by(manifests, "Service"), cluster


def test_each_secret_only_where_it_is_used(shipped: Template) -> None:
    services = _by(render(shipped)["regional-paris-1"], "Service")
    held = {name: _secrets(service) for name, service in services.items()}
    assert held["ledger-admin"] >= {"tollgate-admin/token", "tollgate-capability-verify"} - {
        "tollgate-capability-verify"
    }
    holders = {s: sorted(n for n, h in held.items() if s in h) for s in set().union(*held.values())}
    assert holders["tollgate-admin/token"] == ["ledger-admin"]
    assert holders["tollgate-admin/camara-token"] == ["ingress"]
    assert holders["tollgate-capability-signing"] == ["ingress"]
    assert holders["tollgate-admin/carrier-billing-token"] == ["grant", "ledger-admin"]
    assert set(holders["tollgate-capability-verify"]) == {
        "ingress", "settle", "refund", "infer-smollm2-135m", "infer-llama31-8b", "infer-llama33-70b"
    }  # fmt: skip
    for name, service in _by(render(shipped)["cloud-frankfurt-1"], "Service").items():
        # The cloud partner's cluster holds no admin, operator or table credential.
        assert _secrets(service) <= {"tollgate-capability-verify", "tollgate-hf/token"}, name


def test_vllm_listens_on_the_pods_loopback_only(shipped: Template) -> None:
    svc = _by(render(shipped)["cloud-frankfurt-1"], "Service")["infer-llama33-70b"]
    args = svc["spec"]["template"]["spec"]["containers"][1]["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1"


def test_feature_flags_are_merge_patches_of_knatives_configmaps(shipped: Template) -> None:
    manifests = render(shipped)["regional-paris-1"]
    patches = {
        (m["metadata"]["namespace"], m["metadata"]["name"]): m
        for m in manifests
        if m["kind"] == "ConfigMap" and m["metadata"].get("annotations")
    }
    eventing = patches[("knative-eventing", "config-features")]
    assert eventing["metadata"]["annotations"] == {"tollgate.io/apply": "merge-patch"}
    assert eventing["data"] == {
        "authentication-oidc": "enabled",
        "default-authorization-mode": "deny-all",
        "transport-encryption": "strict",
    }
    network = patches[("knative-serving", "config-network")]
    assert network["data"] == {"cluster-local-domain-tls": "Enabled"}


def test_event_policies_let_each_type_reach_the_broker_only_from_its_producers(
    shipped: Template,
) -> None:
    policies = _by(render(shipped)["regional-paris-1"], "EventPolicy")
    to_broker = {
        name: p["spec"]
        for name, p in policies.items()
        if p["spec"]["to"]
        == [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}]
    }

    def senders_of(event_type: str) -> set[str]:
        out = set()
        for spec in to_broker.values():
            matches = [f.get("exact") for f in spec.get("filters", [])]
            matches += [a["exact"] for f in spec.get("filters", []) for a in f.get("any", [])]
            if any(m and m.get("type") == event_type for m in matches):
                out |= {f["sub"].rsplit(":", 1)[-1] for f in spec["from"]}
        return out

    assert senders_of("io.tollgate.credits.grant.v1") == {"operator-bss"}
    assert senders_of("io.tollgate.inference.completed.v1") == {"infer-*", "ingress"}
    # The home ingress publishes what the other clusters' infer report (/events/clusters).
    assert senders_of("io.tollgate.inference.usage.v1") == {"infer-*", "ingress"}
    assert senders_of("io.tollgate.inference.failed.v1") == {"infer-*", "ingress"}
    assert senders_of("io.tollgate.network.site.degraded.v1") == {"ingress"}
    settle = policies["settle-from-settle-inference-completed"]["spec"]
    assert settle["from"] == [
        {"sub": "system:serviceaccount:tollgate:"
         "settle-inference-completed-oidc-eventing.knative.dev-trigger"}
    ]  # fmt: skip
    assert settle["filters"] == [{"exact": {"type": "io.tollgate.inference.completed.v1"}}]
    assert "authorize-from-ingress" in policies and "refund-from-ingress" in policies
    assert not any(n.startswith(("grant-from-ingress", "settle-from-ingress")) for n in policies)


def _env(service: Manifest) -> dict[str, str]:
    container = service["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "<secret>") for e in container["env"]}


def test_every_edge_and_regional_site_runs_an_ingress_against_the_home_ledger(
    shipped: Template,
) -> None:
    rendered = render(shipped)
    home_url = "https://ingress.tollgate.paris-1.tollgate.demo-telco.example"
    relay = home_url + "/sites/ledger"
    home = _by(rendered["regional-paris-1"], "Service")["ingress"]
    assert _env(home)["TOLLGATE_LEDGER_RELAY_URL"] == relay
    for cluster in ("edge-lyon-5g-1", "edge-marseille-5g-1"):
        ingress = _by(rendered[cluster], "Service")["ingress"]
        template = ingress["spec"]["template"]
        assert template["metadata"]["labels"]["tollgate.io/function"] == "ingress"
        assert template["spec"]["containers"][0]["args"] == ["serve", "ingress"]
        env = _env(ingress)
        assert env["TOLLGATE_HOME_RELAY_URL"] == relay and env["TOLLGATE_CLUSTER"] == cluster
        # Its store is the pod's own; no table credential, no secret of the home's.
        assert env["TOLLGATE_STORE"] == "sqlite:////var/lib/tollgate/site/tollgate.db"
        assert "<secret>" not in env.values() and "envFrom" not in template["spec"]["containers"][0]
        assert "TOLLGATE_LEDGER_URL" not in env and "TOLLGATE_CLUSTER_EVENTS_URL" not in env
        assert _secrets(ingress) == {"tollgate-capability-signing", "tollgate-capability-verify"}
        tokens = {
            s["serviceAccountToken"]["path"]: s["serviceAccountToken"]["audience"]
            for v in template["spec"]["volumes"]
            if v["name"] == "tokens"
            for s in v["projected"]["sources"]
        }
        assert tokens == {"sink": home_url + "/events/clusters", "ledger-relay": relay}
    # The partner's cloud runs no ingress of its own: only the gateway, with verify keys only.
    cloud = _by(rendered["cloud-frankfurt-1"], "Service")["ingress"]
    assert cloud["spec"]["template"]["spec"]["containers"][0]["args"] == ["serve", "gateway"]
    assert _secrets(cloud) == {"tollgate-capability-verify"}


def test_only_the_site_ingresses_may_use_the_ledger_relay(shipped: Template) -> None:
    configmap = _by(render(shipped)["regional-paris-1"], "ConfigMap")["tollgate-template"]
    trust = json.loads(configmap["data"]["trust.json"])
    relay = "https://ingress.tollgate.paris-1.tollgate.demo-telco.example/sites/ledger"
    (rule,) = trust["sinks"][relay]
    assert rule["subjects"] == ["system:serviceaccount:tollgate:ingress"]
    assert sorted(e["type"] for e in rule["events"]) == [
        "io.tollgate.caller.lookup.v1",
        "io.tollgate.hold.authorize.v1",
        "io.tollgate.hold.refund.v1",
        "io.tollgate.rates.hold.v1",
        "io.tollgate.sla.observed.v1",
    ]
    # The site clusters' issuers are known; the relay asks only theirs (infra/serve.py).
    assert set(shipped.site_ingresses()) == {"edge-lyon-5g-1", "edge-marseille-5g-1"}
    for cluster in shipped.site_ingresses():
        issuer = shipped.cluster(cluster).service_account_issuer
        assert issuer is not None and cluster in trust["remote_issuers"][issuer]
