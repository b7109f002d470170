"""The catalogue: one pydantic model per CloudEvent type, and its JSON Schema export."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from events import ledger, network, routing, sites, sla, topups, types

MODELS: dict[str, type[BaseModel]] = {
    types.CREDITS_GRANT: ledger.CreditsGrant,
    types.HOLD_AUTHORIZE: ledger.HoldAuthorize,
    types.HOLD_SETTLE: ledger.HoldSettle,
    types.HOLD_REFUND: ledger.HoldRefund,
    types.HOLDS_SWEEP: ledger.HoldsSweep,
    types.PLANS_RENEW: ledger.PlansRenew,
    types.PLANS_RENEW_ACCOUNT: ledger.PlansRenewAccount,
    types.PLANS_RENEWED: ledger.PlansRenewed,
    types.CREDITS_GRANTED: ledger.CreditsGranted,
    types.HOLD_AUTHORIZED: ledger.HoldAuthorized,
    types.HOLD_DECLINED: ledger.HoldDeclined,
    types.HOLD_SETTLED: ledger.HoldSettled,
    types.HOLD_REFUNDED: ledger.HoldRefunded,
    types.HOLD_EXPIRED: ledger.HoldExpired,
    types.HOLDS_SWEPT: ledger.HoldsSwept,
    types.INFERENCE_COMPLETED: ledger.InferenceCompleted,
    types.INFERENCE_FAILED: ledger.InferenceFailed,
    types.INFERENCE_USAGE: ledger.InferenceUsage,
    types.ROUTE_REQUESTED: routing.RouteRequested,
    types.ROUTE_DECIDED: routing.RouteDecided,
    types.TIERS_WARM: routing.TiersWarm,
    **sla.MODELS,
    **sites.MODELS,
    **network.MODELS,
    **topups.MODELS,
}


def parse(event_type: str, data: dict[str, Any]) -> BaseModel:
    """Validate data against its type's model; raises KeyError for an unknown type and
    pydantic.ValidationError for bad data."""
    return MODELS[event_type].model_validate(data)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every event type's data, keyed by type."""
    return {t: m.model_json_schema() for t, m in sorted(MODELS.items())}
