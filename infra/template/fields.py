"""Field types the template is built from; each error message says what would be valid."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

import isodate
from croniter import croniter
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, PlainValidator

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Knative appends "-00001-deployment-<hash>" to service names; 40 leaves room under 63.
_MAX_NAME = 40


def _name(value: str) -> str:
    if len(value) > _MAX_NAME or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lowercase letters, digits and '-', starting and "
            f"ending with a letter or digit, at most {_MAX_NAME} characters (e.g. 'edge-lyon-1')"
        )
    return value


Name = Annotated[str, AfterValidator(_name)]


def _money(value: Any) -> Any:
    # Money is integers everywhere: a float here would silently round somewhere downstream.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"money must be an integer number of credits, got {value!r}; "
            "floats and strings are refused (write e.g. 120)"
        )
    return value


Credits = Annotated[int, BeforeValidator(_money), Field(ge=0)]


def _effective(value: Any) -> Any:
    # A date is its first second in UTC; a time must say its zone, so no two readers disagree.
    # Text is what YAML leaves quoted and what the ConfigMap's JSON dump holds.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = (dt.datetime if "T" in value else dt.date).fromisoformat(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(
                f"{value.isoformat()} has no time zone: add Z or an offset "
                "(2026-11-01T00:00:00Z), or write a date (2026-11-01: midnight UTC)"
            )
        return value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise ValueError(
        f"{value!r} is not a date or time: write 2026-11-01 (midnight UTC) or 2026-11-01T09:00:00Z"
    )


# When a price book version starts to apply (an aware datetime, UTC).
EffectiveFrom = Annotated[dt.datetime, BeforeValidator(_effective)]


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order of version names: digit runs compare as numbers ("2026-9" < "2026-10")."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.findall(r"\d+|[^\d]+", version)
    )


_PARAMS = re.compile(r"^(\d+(?:\.\d+)?)([MB])$")


def _parameters(value: Any) -> Any:
    if isinstance(value, str) and (m := _PARAMS.match(value)):
        count = Decimal(m.group(1)) * (10**6 if m.group(2) == "M" else 10**9)
        if count == count.to_integral_value():
            return int(count)
    raise ValueError(
        f"parameter count {value!r} is not valid: write a number with M or B: 135M, 8B, 70B"
    )


def format_parameters(count: int) -> str:
    if count % 10**9 == 0:
        return f"{count // 10**9}B"
    return f"{Decimal(count) / 10**6:f}M"


# Dumped (to the ConfigMap the functions read) as written: 70B, not 70000000000.
Parameters = Annotated[
    int, BeforeValidator(_parameters), PlainSerializer(format_parameters, when_used="json")
]


# Go durations as Knative annotations take them ("15m", "1800s").
_GO_DURATION = re.compile(r"^[1-9]\d*(s|m|h)$")


def _go_duration(value: str) -> str:
    if not _GO_DURATION.match(value):
        raise ValueError(f"{value!r} is not a duration: use a whole number with s, m or h (15m)")
    return value


GoDuration = Annotated[str, AfterValidator(_go_duration)]


def go_duration_seconds(value: str) -> int:
    return int(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]


def _at_most_an_hour(value: str) -> str:
    if go_duration_seconds(value) > 3600:
        raise ValueError(f"{value!r} is too long: Knative allows a scale-down delay of at most 1h")
    return value


ScaleDownDelay = Annotated[str, AfterValidator(_go_duration), AfterValidator(_at_most_an_hour)]


def _a_knative_window(value: str) -> str:
    if not 6 <= go_duration_seconds(value) <= 3600:
        raise ValueError(f"{value!r}: Knative's stable window is between 6s and 1h")
    return value


# The autoscaler's stable window (annotation autoscaling.knative.dev/window; default 60s).
StableWindow = Annotated[str, AfterValidator(_go_duration), AfterValidator(_a_knative_window)]


def _at_least_six_seconds(value: str) -> str:
    if go_duration_seconds(value) < 6:
        raise ValueError(f"{value!r}: Knative's scale-to-zero grace period is at least 6s")
    return value


GracePeriod = Annotated[str, AfterValidator(_go_duration), AfterValidator(_at_least_six_seconds)]


def iso_duration_seconds(value: str) -> float:
    """Seconds in an ISO-8601 duration of fixed length (PT0.5S, PT2S, PT1M, P1D).

    Calendar units (P1M, P1Y) have no fixed length and negative delays mean nothing: refused.
    """
    try:
        duration: object = isodate.parse_duration(value)
    except (isodate.ISO8601Error, ValueError):
        duration = None
    if (
        not isinstance(duration, dt.timedelta)
        or duration < dt.timedelta(0)
        or not any(c.isdigit() for c in value)  # isodate reads a bare "PT" as zero
    ):
        raise ValueError(f"{value!r} is not an ISO-8601 duration: use e.g. PT0.5S, PT2S or PT1M")
    return duration.total_seconds()


def _iso_duration(value: str) -> str:
    iso_duration_seconds(value)
    return value


# Kept as written: Knative's delivery takes the same text.
IsoDuration = Annotated[str, AfterValidator(_iso_duration)]

_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity: use e.g. 500m, 2, 256Mi, 16Gi")
    return value


Quantity = Annotated[str, AfterValidator(_quantity)]

_EVENT_TYPE = re.compile(r"^io\.tollgate\.[a-z0-9-]+(\.[a-z0-9-]+)+\.v[0-9]+$")


def _event_type(value: str) -> str:
    if not _EVENT_TYPE.match(value):
        raise ValueError(
            f"{value!r} is not a Tollgate event type: use io.tollgate.<noun>.<verb>.v<N> "
            "(the constants in events/types.py)"
        )
    return value


EventType = Annotated[str, AfterValidator(_event_type)]

# What Knative's PingSource takes (robfig/cron's standard parser): five fields with numbers,
# names (JAN, MON), ranges, lists, steps and "?", or a descriptor; croniter reads the same, and
# its own additions (seconds and year fields, L, W, #, H) are refused here.
_CRON_DESCRIPTORS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
# Each field's name and values, for messages.
_CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day of week", "0-7 or SUN-SAT"),
)
_CRON_FIELD = re.compile(r"^[0-9*?,/-]*([A-Za-z]{3}[0-9*?,/-]*)*$")


def _cron(value: str) -> str:
    if value in _CRON_DESCRIPTORS:
        return value
    fields = value.split()
    if len(fields) != len(_CRON_FIELDS):
        raise ValueError(
            f"schedule {value!r} is not a cron expression: use five fields "
            "'minute hour day-of-month month day-of-week' (e.g. '0 0 1 * *') or @hourly/@daily/…"
        )
    for i, (text, (what, values)) in enumerate(zip(fields, _CRON_FIELDS, strict=True)):
        # Each field alone, the others "*", so the message can say which one is wrong.
        alone = " ".join(text if j == i else "*" for j in range(len(fields)))
        if not _CRON_FIELD.match(text) or not croniter.is_valid(alone):
            raise ValueError(
                f"schedule {value!r}: {what} field {text!r} is not valid; "
                f"use *, */n, a number or range within {values}"
            )
    if not croniter.is_valid(value):
        raise ValueError(f"schedule {value!r} is not a valid cron expression")
    return value


Cron = Annotated[str, AfterValidator(_cron)]


_LONGEST_QUEUE_WAIT_MS = 3_600_000


def _queue_wait(value: Any) -> int | Literal["unbounded"]:
    if value == "unbounded":
        return "unbounded"
    number = isinstance(value, int) and not isinstance(value, bool)
    if number and 0 <= value <= _LONGEST_QUEUE_WAIT_MS:
        return value  # type: ignore[no-any-return]
    raise ValueError(
        f"{value!r} is not a queue wait: write milliseconds from 0 to {_LONGEST_QUEUE_WAIT_MS} "
        "(e.g. 1000), or 'unbounded' for batch work that waits for the lowest price"
    )


# A plan's longest wait for a slot: whole milliseconds, or "unbounded".
MaxQueueWait = Annotated[int | Literal["unbounded"], PlainValidator(_queue_wait)]
