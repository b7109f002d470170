"""The trust boundary on Knative: feature flags, identities, token and key volumes, EventPolicies.

- The flags are merge patches of Knative's own ConfigMaps (``tollgate.io/apply: merge-patch``;
  deploy applies them with ``kubectl patch --type merge``), so the cluster's other flags stay:
  Eventing's ``authentication-oidc: enabled`` with ``default-authorization-mode: deny-all`` and
  ``transport-encryption: strict`` (tokens never cross the wire in clear), and Serving's
  ``cluster-local-domain-tls: Enabled`` (cluster-local Services answer on HTTPS, which strict
  transport encryption requires of every sink).
- Every Service runs as its own ServiceAccount and mounts one projected token per audience it
  calls (``/var/run/tollgate/tokens/<target>``; kubelet rotates them) and, where it signs or checks
  inference capabilities, the capability Secrets.
- Every sink's rules (infra/template/policies.py) become EventPolicy resources. Knative's broker
  enforces the broker's; each function enforces its own from the trust file (the same rules), since
  a Knative Service is no Eventing addressable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from functions.auth import keys, senders, tokens
from functions.auth.policy import SenderRule
from infra.template.catalog import INFER
from infra.template.policies import (
    Placement,
    broker_audience,
    knative_placement,
    service_audience,
    sink_policies,
)
from infra.template.schema import Cluster, Template

Manifest = dict[str, Any]

MERGE_PATCH = {"tollgate.io/apply": "merge-patch"}
TOKEN_DIR = "/var/run/tollgate/tokens"
KEYS_DIR = "/var/run/tollgate/capability"
TRUST_FILE = "trust.json"
# The cluster's own service-account issuer, as Knative Eventing's verifier finds it.
API_SERVER = "https://kubernetes.default.svc"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_TTL_S = 3600


def feature_patches(t: Template) -> list[Manifest]:
    def patch(name: str, namespace: str, data: dict[str, str]) -> Manifest:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "annotations": MERGE_PATCH},
            "data": data,
        }

    return [
        # Knative gates these pod-spec fields behind feature flags; the GPU services need them.
        # Probes on the vLLM sidecar keep a pod unready until the model has loaded.
        patch(
            "config-features",
            "knative-serving",
            {
                "kubernetes.podspec-nodeselector": "enabled",
                "kubernetes.podspec-tolerations": "enabled",
                "kubernetes.podspec-emptydir": "enabled",
                "multi-container-probing": "enabled",
            },
        ),
        patch("config-network", "knative-serving", {"cluster-local-domain-tls": "Enabled"}),
        *(
            [patch("config-autoscaler", "knative-serving", {"scale-to-zero-grace-period": grace})]
            if (grace := t.autoscaler.scale_to_zero_grace_period)
            else []
        ),
        patch(
            "config-features",
            "knative-eventing",
            {
                "authentication-oidc": "enabled",
                "default-authorization-mode": "deny-all",
                "transport-encryption": "strict",
            },
        ),
    ]


def service_account(t: Template, name: str, labels: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": t.namespace, "labels": dict(labels)},
    }


def projected_tokens(audiences: Mapping[str, str]) -> Manifest:
    """One token file per target, each for its audience."""
    return {
        "name": "tokens",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": audience,
                        "expirationSeconds": TOKEN_TTL_S,
                        "path": target,
                    }
                }
                for target, audience in audiences.items()
            ]
        },
    }


def capability_keys(t: Template, *, signing: bool) -> Manifest:
    """The verify Secret, and the signing Secret too for the one who signs (the ingress)."""
    names = [f"{t.capability_secret}-verify"]
    if signing:
        names.insert(0, f"{t.capability_secret}-signing")
    return {
        "name": "capability",
        "projected": {"sources": [{"secret": {"name": n}} for n in names]},
    }


def token_targets(t: Template, c: Cluster, function: str) -> dict[str, str]:
    """Target -> audience of every token a function presents."""
    home = c.name == t.eventing.home
    sink = broker_audience(t) if home else knative_placement(t).cluster_events_url
    out = {tokens.SINK: sink}
    if function == "ingress" and home:
        out[tokens.AUTHORIZE] = service_audience(t, "authorize")
        out[tokens.REFUND] = service_audience(t, "refund")
    elif function == "ingress":  # a site ingress: the ledger only through the home's relay
        out[tokens.LEDGER_RELAY] = knative_placement(t).ledger_relay_url
    return out


def identity_env(t: Template, service: str) -> dict[str, str]:
    """What a function needs to tell who sends it events."""
    return {
        tokens.TOKEN_DIR_ENV: TOKEN_DIR,
        senders.DISCOVERY_ENV: API_SERVER,
        senders.CA_FILE_ENV: f"{SA_DIR}/ca.crt",
        senders.DISCOVERY_TOKEN_ENV: f"{SA_DIR}/token",
        senders.AUDIENCE_ENV: service_audience(t, service),
    }


def keys_env() -> dict[str, str]:
    return {keys.KEYS_ENV: KEYS_DIR}


def event_policies(
    t: Template, labels: dict[str, str], placement: Placement | None = None
) -> list[Manifest]:
    """One EventPolicy per rule of each sink that is a Knative resource (the broker, each
    function Service); the cluster-events endpoint's rules name other clusters' issuers, which
    an EventPolicy cannot, so they live only in the trust file."""
    where = placement or knative_placement(t)
    targets: dict[str, Manifest] = {
        broker_audience(t): {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "name": t.eventing.broker,
        }
    }
    for f in t.functions:
        if f.name != INFER:
            targets[service_audience(t, f.name)] = {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "name": f.name,
            }
    out: list[Manifest] = []
    for audience, policy in sorted(sink_policies(t, where).items()):
        if audience in targets:
            out.extend(_event_policy(t, targets[audience], rule, labels) for rule in policy.rules)
    return out


def _event_policy(
    t: Template, target: Manifest, rule: SenderRule, labels: dict[str, str]
) -> Manifest:
    spec: Manifest = {"to": [{"ref": target}], "from": [{"sub": s} for s in rule.subjects]}
    if len(rule.events) == 1:
        spec["filters"] = [{"exact": dict(rule.events[0])}]
    elif rule.events:
        spec["filters"] = [{"any": [{"exact": dict(e)} for e in rule.events]}]
    return {
        "apiVersion": "eventing.knative.dev/v1alpha1",
        "kind": "EventPolicy",
        "metadata": {"name": rule.name, "namespace": t.namespace, "labels": dict(labels)},
        "spec": spec,
    }
