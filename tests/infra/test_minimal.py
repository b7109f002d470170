"""A template unlike the shipped one (one CPU-only cluster, Alternator, no pings or plans) also
validates, renders to schema-valid manifests and plans: validation is what guarantees that."""

from __future__ import annotations

from pathlib import Path

from infra.knative.deploy import format_plan, plan
from infra.knative.render import render
from infra.template.load import parse_template
from tests.infra.structural import CORE_SCHEMAS, load_schemas, validate_resource

MINIMAL = """\
apiVersion: tollgate.io/v1alpha1
kind: Platform
metadata: {name: mini, operator: Mini Telco}
image: ghcr.io/tollgate/tollgate:dev
table:
  name: ledger
  store: dynamodb://alternator.scylla.svc:8000/ledger
  region: eu-west-1
  credentialsSecret: alternator
tiers: [{name: edge, rttMs: {min: 1, max: 20}}]
clusters:
  - {name: lab, tier: edge, context: kind-lab, region: lab, jurisdiction: FR, rttMs: 5,
     domain: lab.example, models: [smol]}
models:
  - {name: smol, servedName: SmolLM2-135M-Instruct, parameters: 135M, engine: llamacpp,
     contextLength: 2048, resources: {cpu: "1", memory: 512Mi}}
credit: {currency: USD, perUnit: 100000}
priceBook:
  versions:
    - version: "1"
      effectiveFrom: 2026-01-01
      prices: [{model: smol, tier: edge, inputPerMillion: 1, outputPerMillion: 2}]
functions:
  - {name: settle, maxScale: 1, resources: {cpu: 100m, memory: 128Mi}}
  - {name: deadletters, maxScale: 1, resources: {cpu: 100m, memory: 128Mi}}
  - {name: infer, maxScale: 1, concurrency: 4, resources: {cpu: 100m, memory: 128Mi}}
eventing:
  home: lab
  delivery: {retry: 3, backoffDelay: PT1S, deadLetterSink: deadletters}
  triggers: [{type: io.tollgate.inference.completed.v1, function: settle}]
local: {model: smol, tiers: {edge: {emulatedRttMs: 5}}}
"""


def test_minimal_template_renders_valid_manifests_and_a_plan() -> None:
    t = parse_template(MINIMAL)
    schemas = {**load_schemas(), **CORE_SCHEMAS}
    (manifests,) = render(t).values()
    for m in manifests:
        assert not validate_resource(m, schemas[(m["apiVersion"], m["kind"])]), m
    kinds = [m["kind"] for m in manifests]
    assert kinds.count("Service") == 3 and kinds.count("Trigger") == 1
    settle = next(
        m for m in manifests if m["kind"] == "Service" and m["metadata"]["name"] == "settle"
    )
    container = settle["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "alternator"}}]
    text = format_plan(t, plan(t, Path("out")))
    trigger = "kubectl --context kind-lab apply -f out/lab/"
    assert trigger in text and "trigger-settle-inference-completed.yaml" in text
