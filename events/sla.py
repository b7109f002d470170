"""The latency SLA: what a budget means, the monthly evaluation, and the service credit it pays.

A latency budget (``x-tollgate-latency-budget-ms``, else the plan's ``latencyTargetMs``) is a
promise on **time to first token as the client sees it** (what llm-d calls ``x-slo-ttft-ms``):
from the request's arrival at the ingress to its first generated token leaving the ingress, the
tier's round trip included (emulated under ``tollgate up``). The router predicts it as RTT + queue
wait + cold start + prefill; the ingress measures it on every request that carries a budget.

A plan's SLA (template.yaml ``plans[].sla``) promises that at least ``objective`` of those
requests meet their budget per calendar month (UTC). A month below it grants one ``sla-credit``
lot, exactly once per account and month, referenced ``sla:<account>:<YYYY-MM>``."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Final

from pydantic import Field

from events.fields import AccountId, Amount, Count, EventData, Name

SLA_EVALUATE: Final = "io.tollgate.sla.evaluate.v1"
SLA_EVALUATED: Final = "io.tollgate.sla.evaluated.v1"
SLA_CREDITED: Final = "io.tollgate.sla.credited.v1"

PERIOD: Final = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
Period = Annotated[str, Field(pattern=PERIOD.pattern)]  # a calendar month, YYYY-MM (UTC)
BasisPoints = Annotated[int, Field(strict=True, ge=0, le=10_000)]  # 9500 = 95.00%


def period_of(moment: float) -> str:
    """The calendar month (UTC) an epoch second falls in: YYYY-MM."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m")


def period_start(period: str) -> int:
    year, month = (int(part) for part in period.split("-"))
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def period_end(period: str) -> int:
    """The first second of the month after ``period`` (YYYY-MM), UTC."""
    year, month = (int(part) for part in period.split("-"))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def previous_period(moment: float) -> str:
    """The month before the one ``moment`` falls in."""
    return period_of(period_start(period_of(moment)) - 1)


def credit_reference(account_id: str, period: str) -> str:
    """The business reference of a period's service credit: the ledger grants it once."""
    return f"sla:{account_id}:{period}"


class SlaEvaluate(EventData):
    """Evaluate every account with an SLA for ``period`` (default: the month before now)."""

    period: Period | None = None


class SlaEvaluated(EventData):
    period: Period
    accounts: Count  # accounts whose plan has an SLA and had requests with a budget
    credited: Count  # of which breached, with a credit granted (now or before)


class SlaCredited(EventData):
    """A breached period's service credit, granted as an ``sla-credit`` lot."""

    account_id: AccountId
    period: Period
    plan: Name
    objective_bp: BasisPoints
    attainment_bp: BasisPoints  # met / requests, rounded down
    requests: Count  # requests that carried a budget
    met: Count
    breached: Count
    spend: Count  # the period's net spend the credit was computed from
    amount: Amount
    lot_id: str
    reference: Name


MODELS: Final[dict[str, type[EventData]]] = {
    SLA_EVALUATE: SlaEvaluate,
    SLA_EVALUATED: SlaEvaluated,
    SLA_CREDITED: SlaCredited,
}
