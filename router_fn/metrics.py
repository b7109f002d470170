"""The ingress's metrics on /metrics."""

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "tollgate_ingress_requests_total",
    "Inference requests by chosen tier and outcome",
    ["tier", "outcome"],
)
FAILOVERS = Counter(
    "tollgate_ingress_failovers_total", "Attempts that failed before output, by tier", ["tier"]
)
OVERHEAD = Histogram(
    "tollgate_ingress_overhead_seconds",
    "Time from request to the infer call: key, route, quote and authorize",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
RELAYED_METERING = Counter(
    "tollgate_ingress_relayed_metering_total",
    "Streams that did not end normally, metered by the ingress from the usage it relayed as a "
    "stand-in for infer's own metering; why: cut (infer broke off) or left (the client did)",
    ["why"],
)
OWED_LOST = Counter(
    "tollgate_ingress_owed_lost_total",
    "Voids, releases or meterings the outbox could not write (lost: look at the log)",
)
VOIDS_OWED = Counter(
    "tollgate_ingress_voids_owed_total",
    "Failed attempts whose hold the ledger could not void at once (owed; no failover)",
)
LEASES = Counter(
    "tollgate_ingress_leases_total", "Credit leases opened, renewed and returned", ["event"]
)
LEASE_ADMISSIONS = Counter(
    "tollgate_ingress_lease_admissions_total",
    "Requests admitted on a credit lease ('lease') or held on their own after a lease could "
    "not take them ('miss')",
    ["path"],
)
