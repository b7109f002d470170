"""Every CloudEvent type Tollgate consumes or emits: ``io.tollgate.<noun>.<verb>.v1``."""

from typing import Final

PREFIX: Final = "io.tollgate."

# Ledger commands (consumed by the ledger functions).
CREDITS_GRANT: Final = "io.tollgate.credits.grant.v1"
HOLD_AUTHORIZE: Final = "io.tollgate.hold.authorize.v1"
HOLD_SETTLE: Final = "io.tollgate.hold.settle.v1"
HOLD_REFUND: Final = "io.tollgate.hold.refund.v1"
HOLDS_SWEEP: Final = "io.tollgate.holds.sweep.v1"
PLANS_RENEW: Final = "io.tollgate.plans.renew.v1"
PLANS_RENEW_ACCOUNT: Final = "io.tollgate.plans.renew.account.v1"

# Ledger facts (replies and emitted events).
CREDITS_GRANTED: Final = "io.tollgate.credits.granted.v1"
HOLD_AUTHORIZED: Final = "io.tollgate.hold.authorized.v1"
HOLD_DECLINED: Final = "io.tollgate.hold.declined.v1"
HOLD_SETTLED: Final = "io.tollgate.hold.settled.v1"
HOLD_REFUNDED: Final = "io.tollgate.hold.refunded.v1"
HOLD_EXPIRED: Final = "io.tollgate.hold.expired.v1"
HOLDS_SWEPT: Final = "io.tollgate.holds.swept.v1"
PLANS_RENEWED: Final = "io.tollgate.plans.renewed.v1"

# The inference path (emitted by infer, consumed by settle/refund).
INFERENCE_COMPLETED: Final = "io.tollgate.inference.completed.v1"
INFERENCE_FAILED: Final = "io.tollgate.inference.failed.v1"
# Many requests' `inference.completed` in one event (infer's outbox batches what is due).
INFERENCE_USAGE: Final = "io.tollgate.inference.usage.v1"

# A site ingress asks the home ingress who an API key belongs to (router_fn/ledger_relay.py).
CALLER_LOOKUP: Final = "io.tollgate.caller.lookup.v1"
CALLER_FOUND: Final = "io.tollgate.caller.found.v1"
# ... and records the latency-SLA observation of a request it served (functions/sla.py).
SLA_OBSERVED: Final = "io.tollgate.sla.observed.v1"
SLA_RECORDED: Final = "io.tollgate.sla.recorded.v1"
# ... and takes its rate-limit shares from the home table's counters (functions/rateshares.py).
RATES_HOLD: Final = "io.tollgate.rates.hold.v1"
RATES_HELD: Final = "io.tollgate.rates.held.v1"

# Routing.
ROUTE_REQUESTED: Final = "io.tollgate.route.requested.v1"
ROUTE_DECIDED: Final = "io.tollgate.route.decided.v1"

# The warm-keeper's schedule (consumed by the route function).
TIERS_WARM: Final = "io.tollgate.tiers.warm.v1"
