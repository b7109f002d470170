"""The ledger's own Prometheus metrics (no account labels: the label sets stay bounded)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LATE_SETTLES = Counter(
    "tollgate_ledger_late_settles_total",
    "Settles that arrived after their hold had expired or been voided, by how the hold ended.",
    ["resolved"],
)
SHORTFALL = Counter(
    "tollgate_ledger_shortfall_credits_total",
    "Credits used after a hold expired that the account no longer had (journaled per settle).",
)
WAIVED = Counter(
    "tollgate_ledger_waived_credits_total",
    "Credits asked by settles of voided holds, not charged.",
)
BUDGET_REFUSALS = Counter(
    "tollgate_ledger_budget_refusals_total",
    "Operations refused because the account's state would outgrow its byte budget.",
    ["kind"],
)
CHECKPOINT_FAILURES = Counter(
    "tollgate_ledger_checkpoint_failures_total",
    "Checkpoint writes that failed after their journal entry committed (retried later).",
)
INDEX_FAILURES = Counter(
    "tollgate_ledger_claim_index_failures_total",
    "Claim index writes that failed after their journal entry committed (repaired later).",
)
USAGE_REPORTS = Counter(
    "tollgate_ledger_usage_reports_total",
    "Reports of inference.usage batches: taken (settled or a duplicate) or refused for good "
    "(kept as dead letters).",
    ["outcome"],
)
CACHE_GAUGE = Gauge(
    "tollgate_ledger_cache_bytes",
    "Estimated memory held by the ledger's account cache.",
)
