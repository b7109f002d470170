"""The event graph a template declares: who consumes and who emits each type, and the broker
filters each trigger becomes (one Knative renders and ``tollgate up``'s broker applies alike)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from infra.template.catalog import FUNCTION_KINDS, PING_EVENT_TYPE, PING_TYPE_EXTENSION
from infra.template.schema import Template, Trigger


def consumers(t: Template) -> dict[str, set[str]]:
    """Event types each declared function consumes: the catalog's plus the template's extras."""
    return {
        f.name: set(FUNCTION_KINDS[f.name].consumes) | set(f.consumes)
        for f in t.functions
        if f.name in FUNCTION_KINDS
    }


def emitters(t: Template, *, pings: bool = True) -> dict[str, set[str]]:
    """Who puts each event type on the home broker, by event type (optionally not the pings)."""
    out: dict[str, set[str]] = {}

    def add(types: Iterable[str], who: str) -> None:
        for type_ in types:
            out.setdefault(type_, set()).add(who)

    for f in t.functions:
        if f.name in FUNCTION_KINDS:
            add(FUNCTION_KINDS[f.name].emits | set(f.emits), f"function {f.name}")
    for p in t.eventing.producers:
        add(p.emits, f"producer {p.name}")
    for ping in t.eventing.pings if pings else ():
        add([ping.type], f"ping {ping.name}")
    for s in t.camara.subscriptions:
        add(s.emits, f"camara subscription {s.name}")
    return out


@dataclass(frozen=True)
class TriggerFilter:
    """One broker trigger a template trigger becomes: its name and exact-match attributes."""

    name: str
    attributes: Mapping[str, str]


def trigger_filters(t: Template, tr: Trigger) -> list[TriggerFilter]:
    """One filter for each way ``tr.type`` reaches the broker.

    A PingSource cannot set the CloudEvent type, so scheduled commands arrive as Knative's ping
    type with the Tollgate type in an extension and need a trigger of their own.
    """
    filters: list[TriggerFilter] = []
    if tr.type in emitters(t, pings=False):
        filters.append(TriggerFilter(tr.resource_name, {"type": tr.type}))
    if any(p.type == tr.type for p in t.eventing.pings):
        filters.append(
            TriggerFilter(
                f"{tr.resource_name}-ping", {"type": PING_EVENT_TYPE, PING_TYPE_EXTENSION: tr.type}
            )
        )
    return filters
