"""What the route function does with the network's events besides site degradations:

- ``network.slice.booked``: the slice's warm window (router_fn/warmth.py) on the sites of the
  nearest tier whose area intersects the service area, for the models the bound account's plan
  may use; a booking announced again replaces its window;
- ``network.qos.changed``: a QoD session on a site that became unavailable degrades the site
  (source ``qod:<session>``) until it is available again or the degradation lapses;
- ``network.roaming.changed``: a device bound to an account (profile ``devices``) roaming in a
  country narrows that account's residency to what the country allows (template ``roaming``);
  back home, or a country not reported, lifts it. The ingress applies it per request;
- ``network.subscription.changed``: a network-quality subscription that ended leaves its site's
  quality unreported; its degradations are lifted so a site is never held by a report that can
  no longer be revised (what the site does next is seen by the prober and served traffic)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from events.network import QosChanged, RoamingChanged, SliceBooked, SubscriptionChanged
from functions.accounts import (
    ROAMING_SK,
    account_for_device,
    account_for_slice,
    account_pk,
    read_profile,
)
from functions.store import Store, update_item
from router_fn.tierstate import TierStates
from router_fn.topology import Topology
from router_fn.warmth import SliceWindow, Warmth, sites_serving

log = logging.getLogger(__name__)

QUALITY_SOURCE = "org.camaraproject.connectivity-insights-subscriptions.v0.network-quality"


class NetworkActs:
    def __init__(
        self,
        topology: Topology,
        store: Store,
        states: TierStates,
        warmth: Warmth,
        *,
        degradation_s: int,
        subscriptions: Mapping[str, str] | None = None,
    ) -> None:
        """``subscriptions``: the template's network-quality subscription name -> cluster."""
        self.topology = topology
        self.store = store
        self.states = states
        self.warmth = warmth
        self.degradation_s = degradation_s
        self.subscriptions = dict(subscriptions or {})

    @property
    def clock(self) -> Callable[[], float]:
        return self.states.clock

    def slice_booked(self, booked: SliceBooked) -> SliceWindow | None:
        if booked.service_area is None or booked.service_time is None:
            log.info("slice %s names no area or time: no site to warm", booked.slice_id)
            return None
        matched = [
            self.topology.cluster(n) for n in sites_serving(self.topology, booked.service_area)
        ]
        if not matched:
            log.info("slice %s: no site serves its area", booked.slice_id)
            return None
        nearest = min(c.rtt_ms for c in matched)
        tier = next(c.tier for c in matched if c.rtt_ms == nearest)
        clusters = tuple(sorted(c.name for c in matched if c.tier == tier))
        hosted = {m for c in matched if c.tier == tier for m in c.infer_urls}
        window = SliceWindow(
            booked.slice_id,
            clusters,
            tuple(sorted(hosted & self._plan_models(booked.slice_id, hosted))),
            booked.service_time.start.timestamp(),
            booked.service_time.end.timestamp() if booked.service_time.end else None,
        )
        self.warmth.book_slice(window)
        return window

    def _plan_models(self, slice_id: str, hosted: set[str]) -> set[str]:
        account = account_for_slice(self.store, slice_id)
        name = (read_profile(self.store, account) or {}).get("plan") if account else None
        plan = self.topology.plans.get(name) if isinstance(name, str) else None
        if plan is None:
            return hosted
        allowed = {
            m
            for m in hosted
            if (not plan.models or m in plan.models)
            and (
                plan.max_parameters is None
                or self.topology.models[m].parameters <= plan.max_parameters
            )
        }
        return allowed

    def qos_changed(self, changed: QosChanged) -> None:
        if changed.cluster is None:
            return
        source = f"qod:{changed.session_id}"
        if changed.available:
            self.states.restore(changed.cluster, source)
            return
        cause = f"QoD session {changed.session_id} unavailable"
        if changed.info:
            cause += f" ({changed.info})"
        self.states.degrade(changed.cluster, cause, self.clock() + self.degradation_s, source)

    def roaming_changed(self, changed: RoamingChanged) -> str | None:
        """Record the device's roaming for its account; the account, or None if unbound."""
        number = (changed.device or {}).get("phoneNumber")
        account = account_for_device(self.store, number) if isinstance(number, str) else None
        if account is None:
            log.info("roaming notice for a device bound to no account: nothing to narrow")
            return None
        roaming = changed.roaming and bool(changed.countries)
        entry = {"countries": sorted(changed.countries), "at": self.clock()}

        def change(data: dict[str, Any] | None) -> dict[str, Any]:
            devices = dict((data or {}).get("devices", {}))
            if roaming:
                devices[number] = entry
            else:
                devices.pop(number, None)
            return {"devices": devices}

        update_item(self.store, account_pk(account), ROAMING_SK, change)
        return account

    def subscription_changed(self, changed: SubscriptionChanged) -> None:
        cluster = self.subscriptions.get(changed.subscription)
        if cluster is None or changed.state != "ended":
            return
        if self.states.restore(cluster, QUALITY_SOURCE):
            log.info("quality watch of %s ended: its degradation is lifted", cluster)
