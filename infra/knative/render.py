"""Render a Template to Kubernetes/Knative manifests, one ordered list per cluster.

The order of each list is the order deploy applies them: namespace and config first, then the
broker (the SinkBinding resolves it), the SinkBinding (its webhook injects K_SINK when services
are admitted), the services, and last the triggers and ping sources that point at them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from functions.store import dynamodb
from infra.knative import trust
from infra.template.catalog import INFER, PING_TYPE_EXTENSION
from infra.template.eventing import trigger_filters
from infra.template.fields import go_duration_seconds
from infra.template.policies import (
    knative_placement,
    service_audience,
)
from infra.template.policies import (
    trust as trust_file,
)
from infra.template.schema import Cluster, DeliverySpec, Function, Model, Ping, Template, Trigger

Manifest = dict[str, Any]

PART_OF = {"app.kubernetes.io/part-of": "tollgate"}
KSVC = "serving.knative.dev/v1"
TEMPLATE_CONFIGMAP = "tollgate-template"
TEMPLATE_DIR = "/etc/tollgate"
SINK_BINDING = "tollgate-sink"
# The vLLM server in the same pod; the infer container proxies to it over loopback.
VLLM_PORT = 8000
# Generation can stream for minutes; Knative's default request timeout is 300 s.
INFER_TIMEOUT_S = 900
# What infer and the ingress owe (metering events, voids) waits here until delivered.
OUTBOX_DIR = "/var/lib/tollgate/outbox"
OUTBOX_SIZE = "256Mi"  # far above the outbox's own bound (50,000 events of ~1 KB)
# A site ingress's own store (its learned tier state, its route decisions): the pod's, never
# the home table, whose credentials stay at home.
SITE_STATE_DIR = "/var/lib/tollgate/site"
SITE_STATE_SIZE = "64Mi"
INGRESS = "ingress"
GATEWAY = "gateway"  # `tollgate serve gateway`: the public ingress of a cluster other than home
# Only the ingress is public; every other Service answers inside its cluster only.
CLUSTER_LOCAL = {"networking.knative.dev/visibility": "cluster-local"}
# Functions that check inference capabilities (the ingress signs them).
CAPABILITY_CHECKERS = ("settle", "refund", INFER)


def render(t: Template) -> dict[str, list[Manifest]]:
    """Manifests per cluster name, in apply order (clusters in template order)."""
    return {c.name: _cluster(t, c) for c in t.clusters}


def _cluster(t: Template, c: Cluster) -> list[Manifest]:
    home = c.name == t.eventing.home
    functions = [f for f in t.functions if _runs_on(t, f, c)]
    gateway = not home and bool(c.models) and not any(f.name == INGRESS for f in functions)
    accounts = [f.name for f in functions] + [infer_service_name(t.model(m)) for m in c.models]
    out: list[Manifest] = [
        _namespace(t),
        *trust.feature_patches(t),
        _template_configmap(t),
        *(
            trust.service_account(t, a, PART_OF)
            for a in [*accounts, *([INGRESS] if gateway else [])]
        ),
    ]
    if home:
        out.append(_broker(t))
    out.append(_sink_binding(t, home))
    out.extend(_function_service(t, c, f) for f in functions)
    if gateway:
        out.append(_gateway_service(t, c))
    out.extend(_infer_service(t, c, t.model(m)) for m in c.models)
    if home:
        out.extend(m for tr in t.eventing.triggers for m in _triggers(t, tr))
        out.extend(_ping(t, p) for p in t.eventing.pings)
        out.extend(trust.event_policies(t, PART_OF))
    return out


def _namespace(t: Template) -> Manifest:
    # Knative's SinkBinding webhook only injects K_SINK in namespaces that opt in.
    labels = {"bindings.knative.dev/include": "true"}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": t.namespace, "labels": labels},
    }


def _runs_on(t: Template, f: Function, c: Cluster) -> bool:
    return f.name != INFER and c.name in t.function_clusters(f)


def _site_ingress(t: Template, c: Cluster, function: str) -> bool:
    """An ingress on a cluster other than home (router_fn/site.py)."""
    return function == INGRESS and c.name != t.eventing.home


def _meta(t: Template, name: str, labels: dict[str, str] | None = None) -> Manifest:
    return {"name": name, "namespace": t.namespace, "labels": {**PART_OF, **(labels or {})}}


def _template_configmap(t: Template) -> Manifest:
    # route and ingress read tiers, models and prices from the same template at runtime.
    body = t.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(t, TEMPLATE_CONFIGMAP),
        "data": {
            "template.yaml": dump(body),
            # Every sink's event policies and the other clusters' issuers (functions/auth).
            trust.TRUST_FILE: json.dumps(trust_file(t, knative_placement(t)).to_json(), indent=1),
        },
    }


def _ksvc_ref(name: str) -> Manifest:
    return {"ref": {"apiVersion": KSVC, "kind": "Service", "name": name}}


def _ksvc_destination(t: Template, name: str) -> Manifest:
    """A Service as an OIDC destination: a Knative Service announces no audience, so the
    sender is told it (the function checks tokens issued for it)."""
    return {**_ksvc_ref(name), "audience": service_audience(t, name)}


def _broker_ref(t: Template) -> Manifest:
    broker = t.eventing.broker
    return {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": broker}}


def delivery_spec(t: Template, d: DeliverySpec) -> Manifest:
    return {
        "retry": d.retry,
        "backoffPolicy": d.backoff_policy,
        "backoffDelay": d.backoff_delay,
        "deadLetterSink": _ksvc_destination(t, d.dead_letter_sink),
    }


def _broker(t: Template) -> Manifest:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": _meta(t, t.eventing.broker),
        "spec": {"delivery": delivery_spec(t, t.eventing.delivery)},
    }


def _sink_binding(t: Template, home: bool) -> Manifest:
    # Home services emit to the broker beside them. The broker is cluster-local: other clusters
    # report to the home ingress's cluster-events endpoint, which verifies them by their
    # cluster's issuer and publishes for them.
    events = knative_placement(t).cluster_events_url
    sink = _broker_ref(t) if home else {"uri": events, "audience": events}
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "SinkBinding",
        "metadata": _meta(t, SINK_BINDING),
        "spec": {
            "subject": {
                "apiVersion": KSVC,
                "kind": "Service",
                "selector": {"matchLabels": PART_OF},
            },
            "sink": sink,
        },
    }


def _triggers(t: Template, tr: Trigger) -> list[Manifest]:
    return [
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": _meta(t, tf.name, {"tollgate.io/function": tr.function}),
            "spec": {
                "broker": t.eventing.broker,
                "filter": {"attributes": dict(tf.attributes)},
                "subscriber": _ksvc_destination(t, tr.function),
                "delivery": delivery_spec(t, tr.delivery or t.eventing.delivery),
            },
        }
        for tf in trigger_filters(t, tr)
    ]


def _ping(t: Template, p: Ping) -> Manifest:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": _meta(t, p.name),
        "spec": {
            "schedule": p.schedule,
            "data": p.payload,
            "sink": _broker_ref(t),
            "ceOverrides": {"extensions": {PING_TYPE_EXTENSION: p.type}},
        },
    }


def _annotations(
    min_scale: int,
    max_scale: int,
    scale_down_delay: str | None,
    progress_deadline: str | None,
    window: str | None = None,
) -> dict[str, str]:
    out = {
        "autoscaling.knative.dev/min-scale": str(min_scale),
        "autoscaling.knative.dev/max-scale": str(max_scale),
    }
    if scale_down_delay:
        out["autoscaling.knative.dev/scale-down-delay"] = scale_down_delay
    if window:
        out["autoscaling.knative.dev/window"] = window
    if progress_deadline:
        out["serving.knative.dev/progress-deadline"] = progress_deadline
    return out


def _env(t: Template, c: Cluster, extra: dict[str, str]) -> list[Manifest]:
    plain = {
        "TOLLGATE_CLUSTER": c.name,
        "TOLLGATE_TIER": c.tier,
        "TOLLGATE_TEMPLATE": f"{TEMPLATE_DIR}/template.yaml",
        "TOLLGATE_TRUST": f"{TEMPLATE_DIR}/{trust.TRUST_FILE}",
        **extra,
    }
    return [{"name": k, "value": v} for k, v in plain.items()]


def _tollgate_container(
    t: Template,
    c: Cluster,
    function: str,
    service: str,
    env: dict[str, str],
    resources: tuple[str, str],
) -> Manifest:
    """The tollgate image serving ``function`` as Service ``service``: its identity (own
    ServiceAccount, projected tokens, the issuer to check senders by) and, where it signs or
    checks inference capabilities, their keys."""
    cpu, memory = resources
    env = {**env, **trust.identity_env(t, service)}
    mounts = [
        {"name": "template", "mountPath": TEMPLATE_DIR, "readOnly": True},
        {"name": "tokens", "mountPath": trust.TOKEN_DIR, "readOnly": True},
    ]
    if function in (*CAPABILITY_CHECKERS, INGRESS, GATEWAY):
        env.update(trust.keys_env())
        mounts.append({"name": "capability", "mountPath": trust.KEYS_DIR, "readOnly": True})
    container: Manifest = {
        "name": "tollgate",
        "image": t.image,
        "command": ["tollgate"],
        "args": ["serve", function],
        # Knative passes PORT=8080; only this container may declare a port.
        "ports": [{"name": "http1", "containerPort": 8080}],
        "env": _env(t, c, env),
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
        "volumeMounts": mounts,
        # Every function serves these (functions/app.py); /readyz checks its dependencies.
        "readinessProbe": {"httpGet": {"path": "/readyz"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz"}, "periodSeconds": 30},
    }
    site = _site_ingress(t, c, function)  # its store is the pod's: the table stays at home
    if t.table.credentials_secret and function not in (INFER, GATEWAY) and not site:
        # Table credentials only where the store is used.
        container["envFrom"] = [{"secretRef": {"name": t.table.credentials_secret}}]
    return container


_TEMPLATE_VOLUME = {"name": "template", "configMap": {"name": TEMPLATE_CONFIGMAP}}


def _volumes(t: Template, c: Cluster, function: str) -> list[Manifest]:
    volumes = [_TEMPLATE_VOLUME, trust.projected_tokens(trust.token_targets(t, c, function))]
    if function in (*CAPABILITY_CHECKERS, INGRESS, GATEWAY):
        volumes.append(trust.capability_keys(t, signing=function == INGRESS))
    return volumes


def _service(
    t: Template, name: str, labels: dict[str, str], annotations: dict[str, str], spec: Manifest
) -> Manifest:
    public = name == INGRESS
    return {
        "apiVersion": KSVC,
        "kind": "Service",
        "metadata": _meta(t, name, labels if public else {**labels, **CLUSTER_LOCAL}),
        "spec": {
            "template": {
                "metadata": {"labels": {**PART_OF, **labels}, "annotations": annotations},
                "spec": {"serviceAccountName": name, **spec},
            }
        },
    }


def _passive_warmth() -> dict[str, str]:
    """No prober on Knative: polling an infer Service (even /readyz) is a request, which keeps a
    min-scale-0 revision from ever scaling to zero. The ingress judges warmth from fresh evidence
    that costs nothing: its own answers and warm-ups (router_fn/learning.py, the policy's
    keep-warm window), and the activator queues what the queue gauges would have shown."""
    return {"TOLLGATE_PROBE_INTERVAL_S": "0"}


def _loaded_while_up(t: Template, m: Model) -> dict[str, str]:
    """The engine stays loaded as long as Knative keeps the pod (scale-down delay plus the
    stable window), so a pod the router believes warm has its model loaded."""
    return {"TOLLGATE_IDLE_SECONDS": str(t.warm_for_s(m))}


def _function_service(t: Template, c: Cluster, f: Function) -> Manifest:
    env = {"TOLLGATE_STORE": t.table.store, "AWS_REGION": t.table.region}
    site = _site_ingress(t, c, f.name)
    placement = knative_placement(t)
    if site:
        # Everything of the home's (ledger, key table) through the home ingress's relay.
        env = {
            "TOLLGATE_STORE": f"sqlite:///{SITE_STATE_DIR}/tollgate.db",
            "TOLLGATE_HOME_RELAY_URL": placement.ledger_relay_url,
            **_passive_warmth(),
        }
    elif f.name == INGRESS:
        # The ingress calls authorize and (after a failed attempt) refund synchronously, inside
        # the cluster.
        local = f"{t.namespace}.svc.cluster.local"
        env["TOLLGATE_LEDGER_URL"] = f"http://authorize.{local}"
        env["TOLLGATE_REFUND_URL"] = f"http://refund.{local}"
        env |= _passive_warmth()
        # Where the other clusters' infer report usage (router_fn/cluster_events.py).
        env["TOLLGATE_CLUSTER_EVENTS_URL"] = placement.cluster_events_url
        if placement.ledger_relay_url:
            # Where the site ingresses reach the ledger (router_fn/ledger_relay.py).
            env["TOLLGATE_LEDGER_RELAY_URL"] = placement.ledger_relay_url
    if f.name == "ledger-admin":
        # The ops console's tiers page shows the router's live view (the route function's
        # GET /tiers, cluster-local).
        env["TOLLGATE_TIERS_URL"] = f"http://route.{t.namespace}.svc.cluster.local"
    resources = (f.resources.cpu, f.resources.memory)
    container = _tollgate_container(t, c, f.name, f.name, env, resources)
    if not site:  # the home's endpoints (CAMARA, carrier billing) use them; a site has none
        container["env"].extend(_secret_envs(t, f.name))
    if f.image:
        container["image"] = f.image
    spec: Manifest = {
        "containerConcurrency": f.concurrency,
        "containers": [container],
        "volumes": _volumes(t, c, f.name),
    }
    if f.name == INGRESS and c.models:
        # It relays generation to its clients and, as its cluster's gateway, other ingresses'.
        spec["timeoutSeconds"] = INFER_TIMEOUT_S
    _size_server(spec)
    if f.name == INGRESS:
        _outbox(spec)
    if site:
        _site_state(spec)
    return _service(
        t,
        f.name,
        {"tollgate.io/function": f.name},
        _annotations(f.min_scale, f.max_scale, f.scale_down_delay, f.progress_deadline, f.window),
        spec,
    )


def _gateway_service(t: Template, c: Cluster) -> Manifest:
    """A cluster other than home without a site ingress (a partner's cloud: no signing key, no
    ledger access there): its public ``ingress`` is only the gateway that passes the
    ingresses' capability-bearing attempts to its cluster-local infer services."""
    base = next(f for f in t.functions if f.name == INGRESS)
    container = _tollgate_container(
        t, c, GATEWAY, INGRESS, {}, (base.resources.cpu, base.resources.memory)
    )
    spec: Manifest = {
        "containerConcurrency": base.concurrency,
        "timeoutSeconds": INFER_TIMEOUT_S,
        "containers": [container],
        "volumes": _volumes(t, c, GATEWAY),
    }
    _size_server(spec)
    return _service(
        t,
        INGRESS,
        {"tollgate.io/function": GATEWAY},
        _annotations(base.min_scale, base.max_scale, base.scale_down_delay, None),
        spec,
    )


def _size_server(spec: Manifest) -> None:
    """The function's WSGI server takes what Knative sends it (functions/server.py)."""
    env = spec["containers"][0]["env"]
    env.append(
        {"name": "TOLLGATE_CONTAINER_CONCURRENCY", "value": str(spec["containerConcurrency"])}
    )


def _site_state(spec: Manifest) -> None:
    container = spec["containers"][0]
    container["volumeMounts"].append({"name": "site-state", "mountPath": SITE_STATE_DIR})
    spec["volumes"].append({"name": "site-state", "emptyDir": {"sizeLimit": SITE_STATE_SIZE}})


def _outbox(spec: Manifest) -> None:
    """An emptyDir for the durable outbox: it outlives a container restart (a crash, an OOM
    kill), not the pod; a pod being stopped delivers what it owes first (SIGTERM drain)."""
    container = spec["containers"][0]
    container["env"].append({"name": "TOLLGATE_OUTBOX_DIR", "value": OUTBOX_DIR})
    container["volumeMounts"].append({"name": "outbox", "mountPath": OUTBOX_DIR})
    spec["volumes"].append({"name": "outbox", "emptyDir": {"sizeLimit": OUTBOX_SIZE}})


# The functions that run the ledger (ledger_fn/app.py) and hold its keys.
LEDGER_FUNCTIONS = frozenset({"grant", "authorize", "settle", "refund", "sweep", "ledger-admin"})


def _secret_envs(t: Template, function: str) -> list[Manifest]:
    """Each secret only in the function that uses it: the admin token in ledger-admin, the
    ledger's journal keys in the ledger functions, the CAMARA credential in the ingress (its
    events endpoint checks network systems' bearer), the carrier-billing sink key where sink
    credentials are signed (grant, ledger-admin) or checked (the ingress), the operator access
    token where the operator is called."""
    out = []
    if function == "ledger-admin":
        out.append(_secret_env(t, "TOLLGATE_ADMIN_TOKEN", "token", optional=False))
    if function in LEDGER_FUNCTIONS:
        # Not optional; rotate by listing a new key first and keeping the old (ledger_fn/keys.py).
        out.append(_secret_env(t, "TOLLGATE_LEDGER_KEYS", "ledger-keys", optional=False))
    if function == INGRESS:
        out.append(_secret_env(t, t.camara.credential_env, "camara-token"))
    cb = t.carrier_billing
    if cb is not None and function in (INGRESS, "grant", "ledger-admin"):
        out.append(_secret_env(t, cb.sink_key_env, "carrier-sink-key"))
        if function != INGRESS:
            out.append(_secret_env(t, cb.credential_env, "carrier-billing-token"))
    return out


def _secret_env(t: Template, name: str, key: str, *, optional: bool = True) -> Manifest:
    ref: Manifest = {"name": t.admin_secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def infer_service_name(model: Model) -> str:
    return f"{INFER}-{model.name}"


def _infer_service(t: Template, c: Cluster, m: Model) -> Manifest:
    base = t.infer_function()
    assert base is not None  # validated: clusters host models only with an infer function
    serving = t.infer_serving(m)
    progress = serving.progress_deadline
    concurrency = serving.concurrency
    annotations = _annotations(
        serving.min_scale, serving.max_scale, serving.scale_down_delay, progress, serving.window
    )
    labels = {"tollgate.io/function": INFER, "tollgate.io/model": m.name}
    service = infer_service_name(m)
    spec: Manifest = {
        "containerConcurrency": concurrency,
        "timeoutSeconds": INFER_TIMEOUT_S,
        "volumes": _volumes(t, c, INFER),
    }
    # Names as infer_fn/config.py reads them. Both engines batch: infer passes on (vLLM) or decodes
    # together (llama.cpp) as many requests as Knative admits to the pod.
    env = {
        "TOLLGATE_MODEL_NAME": m.served_name,
        "TOLLGATE_ENGINE": m.engine,
        "TOLLGATE_CONCURRENCY": str(concurrency),  # validated: 1 or more
    }
    env |= _loaded_while_up(t, m)
    if m.engine == "llamacpp":
        env["TOLLGATE_N_CTX"] = str(m.context_length)
        resources = (m.resources.cpu, m.resources.memory)
        spec["containers"] = [_tollgate_container(t, c, INFER, service, env, resources)]
        _size_server(spec)
        _outbox(spec)
        return _service(t, service, labels, annotations, spec)
    env |= {
        "TOLLGATE_ENGINE": "openai-upstream",
        "TOLLGATE_UPSTREAM_URL": f"http://127.0.0.1:{VLLM_PORT}",
        "TOLLGATE_UPSTREAM_MODEL": m.served_name,
    }
    if progress:
        env["TOLLGATE_LOAD_TIMEOUT_SECONDS"] = str(go_duration_seconds(progress))
    resources = (base.resources.cpu, base.resources.memory)
    infer = _tollgate_container(t, c, INFER, service, env, resources)
    spec["containers"] = [infer, _vllm_container(m, progress)]
    spec["volumes"] = [
        *spec["volumes"],
        # Tensor-parallel workers share memory through /dev/shm; the default 64 MiB is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        {"name": "model-cache", "emptyDir": {}},
    ]
    _size_server(spec)
    _outbox(spec)
    assert c.gpu is not None  # validated: vllm models only on GPU clusters
    if c.gpu.node_selector:
        spec["nodeSelector"] = dict(c.gpu.node_selector)
    if c.gpu.tolerations:
        spec["tolerations"] = [
            tol.model_dump(by_alias=True, exclude_none=True) for tol in c.gpu.tolerations
        ]
    return _service(t, service, labels, annotations, spec)


def _vllm_container(m: Model, progress_deadline: str | None) -> Manifest:
    # vLLM listens on the pod's loopback only: nothing but the infer container beside it may call
    # it (a request must pass infer's capability check). The kubelet probes the pod IP, so the
    # probes run inside the container instead, with the python3 the image runs vLLM on.
    health = {
        "exec": {
            "command": [
                "python3",
                "-c",
                "import urllib.request as r; "
                f"r.urlopen('http://127.0.0.1:{VLLM_PORT}/health', timeout=5)",
            ]
        }
    }
    # Loading weights takes minutes: let the startup probe wait up to the progress deadline.
    period = 10
    startup_s = go_duration_seconds(progress_deadline) if progress_deadline else 600
    gpus = str(m.gpus)
    return {
        "name": "vllm",
        "image": m.image,
        "args": [
            "--model",
            m.served_name,
            "--served-model-name",
            m.served_name,
            # The pod's loopback only: the infer container beside it is its one client.
            "--host",
            "127.0.0.1",
            "--port",
            str(VLLM_PORT),
            "--tensor-parallel-size",
            gpus,
            *m.args,
        ],
        "env": [
            {
                "name": "HUGGING_FACE_HUB_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": "tollgate-hf", "key": "token", "optional": True}
                },
            }
        ],
        "resources": {
            "requests": {
                "cpu": m.resources.cpu,
                "memory": m.resources.memory,
                "nvidia.com/gpu": gpus,
            },
            "limits": {"memory": m.resources.memory, "nvidia.com/gpu": gpus},
        },
        "startupProbe": {
            **health,
            "periodSeconds": period,
            "failureThreshold": startup_s // period,
        },
        "readinessProbe": {**health, "periodSeconds": 5},
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model-cache", "mountPath": "/root/.cache/huggingface"},
        ],
    }


def table_definition(t: Template) -> Manifest:
    """CreateTable input plus the TTL setting, for ops provisioning DynamoDB or Alternator.

    The store adapter owns the layout; the template only names the table (its key, billing and
    TTL fields are literals of the adapter's values, which tests/infra check against it).
    """
    return {
        **dynamodb.table_definition(t.table.name),
        "TimeToLiveSpecification": {"AttributeName": dynamodb.TTL_ATTRIBUTE, "Enabled": True},
    }


def manifest_filename(index: int, manifest: Manifest) -> str:
    return f"{index:02d}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"


class _Dumper(yaml.SafeDumper):
    """Plain YAML for humans and kubectl: no &anchors for shared dicts, multi-line text as |."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def dump(manifest: Manifest) -> str:
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)


def write(t: Template, out: Path) -> list[Path]:
    """Write one folder per cluster plus table/; returns the files written, in order."""
    written: list[Path] = []
    for cluster, manifests in render(t).items():
        folder = out / cluster
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.yaml"):
            stale.unlink()  # a resource dropped from the template must not linger on disk
        for i, manifest in enumerate(manifests):
            path = folder / manifest_filename(i, manifest)
            path.write_text(dump(manifest), encoding="utf-8")
            written.append(path)
    table = out / "table" / f"{t.table.name}.json"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(json.dumps(table_definition(t), indent=2) + "\n", encoding="utf-8")
    written.append(table)
    return written
