"""The template loader: the shipped file, the typed API other code uses, and precise errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from functions.store import dynamodb
from infra.template.fields import iso_duration_seconds
from infra.template.load import parse_template
from infra.template.problems import TemplateError
from infra.template.schema import Template
from infra.wiring import topology
from tests.infra.conftest import SHIPPED

TEXT = SHIPPED.read_text(encoding="utf-8")


def _line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} not found {occurrence} time(s)"
    return hits[occurrence - 1]


def _errors(text: str) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        parse_template(text, "t.yaml")
    return caught.value


def _broken(old: str, new: str, count: int = 1) -> str:
    assert old in TEXT, f"{old!r} is not in the shipped template"
    return TEXT.replace(old, new, count)


def _assert_problem(err: TemplateError, where: str, line: int, fragment: str) -> None:
    for p in err.problems:
        if p.where() == where and fragment in p.message:
            assert p.line == line, f"{where}: line {p.line}, expected {line}\n{err}"
            assert f"t.yaml:{line}: {where}: " in str(err)
            return
    raise AssertionError(f"no problem at {where} containing {fragment!r}; got:\n{err}")


def test_shipped_template_is_realistic(shipped: Template) -> None:
    tiers = {t.name: t for t in shipped.tiers}
    assert list(tiers) == ["edge", "regional", "cloud"]
    assert (tiers["edge"].rtt_ms.min, tiers["edge"].rtt_ms.max) == (5, 15)
    assert tiers["edge"].max_parameters == 13 * 10**9
    assert tiers["cloud"].max_parameters is None
    assert len(shipped.clusters_for_tier("edge")) >= 2
    assert shipped.clusters_for_tier("regional") and shipped.clusters_for_tier("cloud")
    assert {m.engine for m in shipped.models} == {"llamacpp", "vllm"}
    # SmolLM2 is the local default and hosted on every tier, so `tollgate up` mirrors the file.
    smol = shipped.model("SmolLM2-135M-Instruct")
    assert smol.engine == "llamacpp" and smol.parameters == 135 * 10**6
    assert {c.tier for c in shipped.clusters if smol.name in c.models} == {
        "edge",
        "regional",
        "cloud",
    }
    assert shipped.local.model == smol.name
    assert {p.kind for p in shipped.plans} == {
        "monthlyBundle",
        "subscription",
        "payPerInference",
        "perSecond",
    }


def test_api_for_router_and_up(shipped: Template) -> None:
    # Prices reach the ingress as the router's quotes (infra/wiring.py).
    platform = topology(shipped)
    eight_b = platform.model("meta-llama/Llama-3.1-8B-Instruct")
    assert eight_b is not None and eight_b.name == "llama31-8b"
    price = platform.at(datetime(2026, 11, 15, tzinfo=UTC).timestamp()).quote(eight_b.name, "edge")
    assert price is not None and price.price_book == "2026-11.1"
    assert (price.input_per_million, price.output_per_million) == (4_480_000, 4_480_000)
    assert isinstance(price.input_per_million, int)
    assert platform.quote("llama31-8b", "cloud") is None
    with pytest.raises(KeyError, match="no model 'gpt-5'"):
        shipped.model("gpt-5")
    assert [c.name for c in shipped.clusters if "llama33-70b" in c.models] == [
        "regional-paris-1",
        "cloud-frankfurt-1",
    ]
    edge = shipped.cluster("edge-lyon-5g-1")
    assert edge.tier == "edge" and edge.jurisdiction == "FR" and edge.rtt_ms == 8
    assert edge.gpu is not None and edge.gpu.type == "nvidia-l4"
    assert edge.service_url("infer-llama31-8b", shipped.namespace) == (
        "https://infer-llama31-8b.tollgate.edge-lyon-1.tollgate.demo-telco.example"
    )
    assert shipped.local.tiers["edge"].emulated_rtt_ms == 10
    assert shipped.plan("developer").kind == "subscription"
    assert shipped.cluster(shipped.eventing.home).name == "regional-paris-1"


def test_models_are_frozen(shipped: Template) -> None:
    with pytest.raises(ValueError, match="frozen"):
        shipped.tiers[0].name = "x"


def test_table_matches_the_store_adapter(shipped: Template) -> None:
    definition = dynamodb.table_definition(shipped.table.name)
    keys = {k["KeyType"]: k["AttributeName"] for k in definition["KeySchema"]}
    assert (shipped.table.partition_key, shipped.table.sort_key) == (keys["HASH"], keys["RANGE"])
    assert shipped.table.billing_mode == definition["BillingMode"]
    assert shipped.table.ttl_attribute == dynamodb.TTL_ATTRIBUTE


def test_unknown_model_on_a_cluster() -> None:
    text = _broken("models: [smollm2-135m, llama33-70b]", "models: [smollm2-135m, mistral-7b]")
    err = _errors(text)
    line = _line_of(text, "models: [smollm2-135m, mistral-7b]")
    _assert_problem(err, "clusters[3].models[1]", line, "unknown model 'mistral-7b'")
    _assert_problem(err, "clusters[3].models[1]", line, "declared models: smollm2-135m, llama31-8b")


def test_model_too_large_for_its_cluster() -> None:
    old = "models: [smollm2-135m, llama31-8b]"
    text = _broken(old, "models: [smollm2-135m, llama31-8b, llama33-70b]")
    err = _errors(text)
    _assert_problem(
        err,
        "clusters[0].models[2]",
        _line_of(text, "llama33-70b]"),
        "model 'llama33-70b' (70B parameters) is too large for cluster 'edge-lyon-5g-1': "
        "tier 'edge' hosts at most 13B; tiers that fit: regional, cloud",
    )


def test_trigger_for_an_event_type_nobody_emits() -> None:
    text = _broken(
        "emits: [io.tollgate.credits.grant.v1, io.tollgate.hold.settle.v1, "
        "io.tollgate.hold.refund.v1]",
        "emits: [io.tollgate.credits.grant.v1, io.tollgate.hold.refund.v1]",
    )
    err = _errors(text)
    _assert_problem(
        err,
        "eventing.triggers[11].type",
        _line_of(text, "- type: io.tollgate.hold.settle.v1"),
        "trigger for io.tollgate.hold.settle.v1, which nobody emits",
    )


def test_trigger_to_a_function_that_does_not_consume_the_type() -> None:
    text = _broken(
        "{type: io.tollgate.plans.renew.v1, function: grant}",
        "{type: io.tollgate.plans.renew.v1, function: route}",
    )
    _assert_problem(
        _errors(text),
        "eventing.triggers[4].type",
        _line_of(text, "{type: io.tollgate.plans.renew.v1, function: route}"),
        "function 'route' does not consume io.tollgate.plans.renew.v1; "
        "it consumes: io.tollgate.network.qos.changed.v1",
    )


def test_price_missing_for_a_hosted_model() -> None:
    text = "\n".join(
        line for line in TEXT.splitlines() if "{model: llama31-8b, tier: regional" not in line
    )
    _assert_problem(
        _errors(text),
        "priceBook.versions[1].prices",
        _line_of(text, "      prices:", occurrence=2),
        "no price for model 'llama31-8b' on tier 'regional' (hosted on cluster 'regional-paris-1') "
        "in the newest version '2026-11.1'",
    )


def test_an_older_version_may_lack_a_price_the_newest_has() -> None:
    # A model added since: only the newest version must price every hosted model.
    first = TEXT.index("{model: llama31-8b, tier: regional")
    line_start = TEXT.rindex("\n", 0, first)
    text = TEXT[:line_start] + TEXT[TEXT.index("\n", first) :]
    assert len(parse_template(text).price_book.versions[0].prices) == 6


def test_price_history_out_of_order_is_refused() -> None:
    text = _broken("effectiveFrom: 2026-11-01", "effectiveFrom: 2026-09-30")
    _assert_problem(
        _errors(text),
        "priceBook.versions[1].effectiveFrom",
        _line_of(text, "effectiveFrom: 2026-09-30"),
        "version '2026-11.1' takes effect 2026-09-30T00:00:00+00:00, not after '2026-10.1'",
    )
    text = _broken('version: "2026-11.1"', 'version: "2026-9.1"')
    _assert_problem(
        _errors(text),
        "priceBook.versions[1].version",
        _line_of(text, 'version: "2026-9.1"'),
        "version '2026-9.1' is listed after '2026-10.1' but does not come after it",
    )
    same = _broken("effectiveFrom: 2026-11-01", "effectiveFrom: 2026-10-01T00:00:00Z")
    assert "must take effect strictly after" in str(_errors(same))


def test_effective_time_needs_a_zone() -> None:
    text = _broken("effectiveFrom: 2026-11-01", "effectiveFrom: 2026-11-01T00:00:00")
    _assert_problem(
        _errors(text),
        "priceBook.versions[1].effectiveFrom",
        _line_of(text, "effectiveFrom: 2026-11-01T00:00:00"),
        "has no time zone: add Z or an offset",
    )
    later = _broken("effectiveFrom: 2026-11-01", "effectiveFrom: 2026-11-01T09:30:00+01:00")
    assert parse_template(later).price_book.newest.effective_from == datetime(
        2026, 11, 1, 8, 30, tzinfo=UTC
    )


def test_carrier_billing_rate_is_the_credit_definition() -> None:
    text = _broken("  description: Tollgate", "  creditsPerUnit: 1000000\n  description: Tollgate")
    err = _errors(text)
    assert "creditsPerUnit: moved to the top-level credit section" in str(err)


def test_duplicate_names() -> None:
    text = _broken("- name: edge-marseille-5g-1", "- name: edge-lyon-5g-1")
    _assert_problem(
        _errors(text),
        "clusters[1]",
        _line_of(text, "- name: edge-lyon-5g-1", occurrence=2),
        "duplicate cluster name 'edge-lyon-5g-1': already declared at index 0",
    )


def test_float_money_is_refused() -> None:
    text = _broken("inputPerMillion: 3080000,", "inputPerMillion: 3.08,")
    _assert_problem(
        _errors(text),
        "priceBook.versions[0].prices[0].inputPerMillion",
        _line_of(text, "inputPerMillion: 3.08"),
        "money must be an integer number of credits, got 3.08",
    )


def test_bad_cron() -> None:
    text = _broken('schedule: "0 0 1 * *"', 'schedule: "0 0 32 * *"')
    _assert_problem(
        _errors(text),
        "eventing.pings[1].schedule",
        _line_of(text, 'schedule: "0 0 32 * *"'),
        "day of month field '32' is not valid; use *, */n, a number or range within 1-31",
    )


def test_unknown_field_names_its_line() -> None:
    text = _broken("    engine: llamacpp\n", "    engine: llamacpp\n    quantization: q4\n")
    _assert_problem(
        _errors(text), "models[0].quantization", _line_of(text, "quantization: q4"), "unknown field"
    )


def test_wrong_api_version() -> None:
    text = _broken("apiVersion: tollgate.io/v1alpha1", "apiVersion: tollgate.io/v2")
    _assert_problem(_errors(text), "apiVersion", 3, "this loader reads tollgate.io/v1alpha1")


def test_vllm_model_on_a_cluster_without_gpu() -> None:
    start = TEXT.index("    gpu:\n", TEXT.index("- name: edge-marseille-5g-1"))
    end = TEXT.index("    models:", start)
    text = TEXT[:start] + TEXT[end:]
    _assert_problem(
        _errors(text),
        "clusters[1].models[1]",
        _line_of(text, "models: [smollm2-135m, llama31-8b]", occurrence=2),
        "model 'llama31-8b' runs on vllm and needs 1 GPU(s), but cluster 'edge-marseille-5g-1' "
        "declares no gpu",
    )


def test_local_rtt_outside_its_tier() -> None:
    text = _broken("edge: {emulatedRttMs: 10}", "edge: {emulatedRttMs: 40}")
    _assert_problem(
        _errors(text),
        "local.tiers.edge.emulatedRttMs",
        _line_of(text, "edge: {emulatedRttMs: 40}"),
        "40 ms is outside tier 'edge''s 5-15 ms",
    )


def test_not_yaml_names_the_line() -> None:
    text = _broken("  operator: Demo Telco", "  operator: [Demo Telco")
    err = _errors(text)
    assert err.problems[0].message.startswith("not valid YAML")
    assert err.problems[0].line is not None and err.problems[0].line >= 8


def test_every_problem_is_reported_at_once() -> None:
    text = _broken("inputPerMillion: 3080000,", "inputPerMillion: 3.08,")
    text = text.replace("outputPerMillion: 3080000,", "outputPerMillion: -1,", 1)
    wheres = {p.where() for p in _errors(text).problems}
    prices = "priceBook.versions[0].prices[0]"
    assert {f"{prices}.inputPerMillion", f"{prices}.outputPerMillion"} <= wheres


def test_bad_event_type() -> None:
    text = _broken(
        "{type: io.tollgate.plans.renew.v1, function: grant}",
        "{type: route.requested, function: route}",
    )
    _assert_problem(
        _errors(text),
        "eventing.triggers[4].type",
        _line_of(text, "{type: route.requested, function: route}"),
        "'route.requested' is not a Tollgate event type: use io.tollgate.<noun>.<verb>.v<N>",
    )


def test_scale_down_delay_within_knative_limit() -> None:
    text = _broken("scaleDownDelay: 15m", "scaleDownDelay: 2h")
    _assert_problem(
        _errors(text),
        "functions[9].scaleDownDelay",
        _line_of(text, "scaleDownDelay: 2h"),
        "'2h' is too long: Knative allows a scale-down delay of at most 1h",
    )


def test_the_stable_window_within_knative_limits() -> None:
    text = _broken("serving: {concurrency: 4, maxScale: 4}", "serving: {maxScale: 4, window: 5s}")
    _assert_problem(
        _errors(text),
        "models[0].serving.window",
        _line_of(text, "window: 5s"),
        "'5s': Knative's stable window is between 6s and 1h",
    )


def test_the_scale_to_zero_grace_within_knative_limits() -> None:
    text = SHIPPED.read_text(encoding="utf-8") + "\nautoscaler: {scaleToZeroGracePeriod: 5s}\n"
    _assert_problem(
        _errors(text),
        "autoscaler.scaleToZeroGracePeriod",
        _line_of(text, "scaleToZeroGracePeriod: 5s"),
        "'5s': Knative's scale-to-zero grace period is at least 6s",
    )


def test_misspelt_event_type_of_a_producer() -> None:
    text = _broken(
        "emits: [io.tollgate.credits.grant.v1, io.tollgate.hold.settle.v1,",
        "emits: [io.tollgate.credit.grant.v1, io.tollgate.hold.settle.v1,",
    )
    _assert_problem(
        _errors(text),
        "eventing.producers[0].emits[0]",
        _line_of(text, "io.tollgate.credit.grant.v1"),
        "unknown event type io.tollgate.credit.grant.v1: use one of events/types.py",
    )


def test_network_types_are_declared_in_the_template() -> None:
    # Issue 6 adds consumers of io.tollgate.network.* by declaring them, not by changing code.
    quality = "io.tollgate.network.qos.changed.v1"
    site = "      cluster: edge-lyon-5g-1\n"
    route = "    - {type: io.tollgate.network.site.restored.v1, function: route}\n"
    text = _broken("  - {name: route,", f"  - {{name: route, consumes: [{quality}],")
    text = text.replace(f"    - {{type: {quality}, function: route}}\n", "")  # shipped: re-add
    text = text.replace(site, f"{site}      emits: [{quality}]\n")
    text = text.replace(route, f"{route}    - {{type: {quality}, function: route}}\n")
    declared = next(f for f in parse_template(text).functions if f.name == "route")
    assert quality in declared.consumes


def test_misspelt_network_event_type() -> None:
    # A network type is checked like any other: one the catalogue has no model for is a typo.
    typo = "io.tollgate.network.site.degradd.v1"
    text = _broken("  - {name: route,", f"  - {{name: route, consumes: [{typo}],")
    _assert_problem(
        _errors(text),
        "functions[7].consumes[0]",
        _line_of(text, typo),
        f"unknown event type {typo}: use one of events/types.py",
    )


def test_infer_takes_no_events() -> None:
    text = _broken(
        "{type: io.tollgate.plans.renew.v1, function: grant}",
        "{type: io.tollgate.plans.renew.v1, function: infer}",
    )
    _assert_problem(
        _errors(text),
        "eventing.triggers[4].function",
        _line_of(text, "{type: io.tollgate.plans.renew.v1, function: infer}"),
        "infer takes no events",
    )


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("PT0.5S", 0.5), ("PT2S", 2.0), ("PT1M", 60.0), ("PT1H1M1S", 3661.0), ("P1D", 86400.0)],
)
def test_iso_durations(duration: str, seconds: float) -> None:
    assert iso_duration_seconds(duration) == seconds


@pytest.mark.parametrize("duration", ["PT", "P1M", "-PT1S", "1S", "PT0.5"])
def test_bad_backoff_delay(duration: str) -> None:
    text = _broken("backoffDelay: PT0.5S,", f"backoffDelay: {duration},")
    _assert_problem(
        _errors(text),
        "eventing.delivery.backoffDelay",
        _line_of(text, f"backoffDelay: {duration},"),
        f"{duration!r} is not an ISO-8601 duration: use e.g. PT0.5S, PT2S or PT1M",
    )


@pytest.mark.parametrize("schedule", ["0 0 L * *", "0 0 * * 1#2", "0 0 1W * *", "0 0 1 * * *"])
def test_cron_outside_what_pingsource_takes(schedule: str) -> None:
    text = _broken('schedule: "0 0 1 * *"', f'schedule: "{schedule}"')
    _assert_problem(
        _errors(text),
        "eventing.pings[1].schedule",
        _line_of(text, f'schedule: "{schedule}"'),
        f"schedule {schedule!r}",
    )


def test_a_price_a_per_second_plan_may_use_needs_a_per_second_rate() -> None:
    text = _broken(
        "{model: smollm2-135m, tier: edge, inputPerMillion: 3080000, outputPerMillion: 3080000, "
        "perEngineSecond: 139}",
        "{model: smollm2-135m, tier: edge, inputPerMillion: 3080000, outputPerMillion: 3080000}",
    )
    _assert_problem(
        _errors(text),
        "priceBook.versions[0].prices[0].perEngineSecond",
        _line_of(text, "{model: smollm2-135m, tier: edge"),
        "model 'smollm2-135m' on tier 'edge' has no perEngineSecond rate (or 0) in version "
        "'2026-10.1', but per-second plan(s) edge-seconds-8b may run it there",
    )
    zero = _broken(
        "tier: edge, inputPerMillion: 4480000, outputPerMillion: 4480000, perEngineSecond: 81",
        "tier: edge, inputPerMillion: 4480000, outputPerMillion: 4480000, perEngineSecond: 0",
    )
    assert "perEngineSecond" in str(_errors(zero))


def test_a_price_no_per_second_plan_reaches_needs_no_per_second_rate() -> None:
    # The per-second plan runs edge models up to 13B: the regional 70B price is out of its reach.
    text = _broken(
        "inputPerMillion: 8950000, outputPerMillion: 8950000, perEngineSecond: 537}",
        "inputPerMillion: 8950000, outputPerMillion: 8950000}",
    )
    parse_template(text, "t.yaml")


def test_plans_bound_the_queue_wait_and_batch_plans_may_not() -> None:
    platform = topology(parse_template(TEXT))
    assert platform.plans["developer"].max_queue_wait_ms == 1000  # the interactive default
    assert platform.plans["batch"].max_queue_wait_ms is None  # unbounded: the lowest price
    text = _broken("maxQueueWaitMs: unbounded", "maxQueueWaitMs: forever")
    _assert_problem(
        _errors(text),
        "plans[3].payPerInference.maxQueueWaitMs",
        _line_of(text, "maxQueueWaitMs: forever"),
        "'forever' is not a queue wait: write milliseconds from 0 to 3600000 (e.g. 1000), or "
        "'unbounded' for batch work",
    )
    text = _broken("maxQueueWaitMs: unbounded", "maxQueueWaitMs: -5")
    _assert_problem(
        _errors(text),
        "plans[3].payPerInference.maxQueueWaitMs",
        _line_of(text, "maxQueueWaitMs: -5"),
        "-5 is not a queue wait",
    )


def test_infer_services_take_a_bounded_number_of_requests_per_replica() -> None:
    text = _broken("serving: {concurrency: 4, maxScale: 4", "serving: {concurrency: 0, maxScale: 4")
    _assert_problem(
        _errors(text),
        "models[0].serving.concurrency",
        _line_of(text, "serving: {concurrency: 0"),
        "smollm2-135m's infer service gets concurrency 0 (from serving)",
    )
    parsed = parse_template(TEXT)
    serving = parsed.infer_serving(parsed.model("smollm2-135m"))
    assert (serving.concurrency, serving.max_scale, serving.min_scale) == (4, 4, 0)
    # The router counts the same slots Knative runs: replicas x containerConcurrency.
    small = topology(parsed).models["smollm2-135m"]
    assert (small.concurrency, small.max_replicas) == (4, 4)
    local = topology(parsed, local=True).models["smollm2-135m"]  # one process, never scaled
    assert (local.concurrency, local.max_replicas) == (4, 1)


def test_a_peer_rtt_to_an_unknown_cluster_is_refused() -> None:
    text = _broken("peerRttMs: {edge-marseille-5g-1: 6,", "peerRttMs: {edge-nice-5g-1: 6,")
    err = _errors(text)
    problem = next(p for p in err.problems if "edge-nice-5g-1" in p.message)
    assert "is not another cluster" in problem.message and "edge-lyon-5g-1" in problem.message


def test_a_site_ingress_routes_by_rtts_from_its_own_site(shipped: Template) -> None:
    here = "edge-lyon-5g-1"
    site = topology(shipped, here=here)
    rtts = {c.name: c.rtt_ms for c in site.clusters}
    # Its own infer is nearest (the application reached this site); the others are the
    # backhaul further, as peerRttMs says, else their own rttMs.
    assert rtts == {
        here: 8,
        "edge-marseille-5g-1": 8 + 6,
        "regional-paris-1": 8 + 9,
        "cloud-frankfurt-1": 8 + 180,
    }
    urls = {c.name: c.infer_urls["smollm2-135m"] for c in site.clusters}
    assert urls[here] == "http://infer-smollm2-135m.tollgate.svc.cluster.local"
    assert urls["regional-paris-1"] == (
        "https://ingress.tollgate.paris-1.tollgate.demo-telco.example/infer/smollm2-135m"
    )
    home = topology(shipped)  # the home ingress's view is unchanged
    assert {c.name: c.rtt_ms for c in home.clusters}["edge-lyon-5g-1"] == 8
    assert {c.name: c.rtt_ms for c in home.clusters}["regional-paris-1"] == 28


def test_plans_declare_rate_limits_per_key() -> None:
    platform = topology(parse_template(TEXT))
    for name, plan in platform.plans.items():
        assert plan.rate_limits is not None and not plan.rate_limits.empty, name
    developer = platform.plans["developer"].rate_limits
    assert developer is not None
    assert developer.requests_per_minute == 600 and developer.concurrent_requests == 16
    limits = "rateLimits: {requestsPerMinute: 600, tokensPerMinute: 200000, concurrentRequests: 16}"
    for bad, fragment in (
        ("requestsPerMinute: 0", "greater than or equal to 1"),
        ("requestsPerMinute: 1.5", "valid integer"),
        ("requestsPerMinute: many", "valid integer"),
    ):
        text = _broken(limits, limits.replace("requestsPerMinute: 600", bad))
        _assert_problem(
            _errors(text),
            "plans[1].subscription.rateLimits.requestsPerMinute",
            _line_of(text, bad),
            fragment,
        )
    text = _broken(limits, limits.replace("concurrentRequests", "concurrency"))
    _assert_problem(
        _errors(text),
        "plans[1].subscription.rateLimits.concurrency",
        _line_of(text, "concurrency: 16}"),
        "unknown field",
    )
