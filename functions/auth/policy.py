"""Which identity may send which events to a sink: Knative's EventPolicy, as data.

A sink (the broker, a function) has an audience and rules. A rule is one EventPolicy: ``subjects``
are its ``spec.from`` (OIDC subjects; a trailing ``*`` matches any suffix, as Knative allows) and
``events`` its ``spec.filters`` (the event passes if its attributes exactly match any one of the
attribute sets; none means any event). A request passes if any rule allows it; with no rule that
does, it is refused (``default-authorization-mode: deny-all``).

The trust file holds every sink's rules by audience (infra derives it from template.yaml, renders
the same rules as EventPolicy resources, and gives the file to every function and to
``tollgate up``'s broker), plus the issuers of the platform's other clusters, whose workloads
(remote infer) send their events through the home ingress."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from functions.errors import Forbidden


def subject_matches(pattern: str, subject: str) -> bool:
    if pattern.endswith("*"):
        return subject.startswith(pattern[:-1])
    return subject == pattern


@dataclass(frozen=True)
class SenderRule:
    name: str
    subjects: tuple[str, ...]
    events: tuple[Mapping[str, str], ...] = ()

    def allows(self, subject: str, attributes: Mapping[str, str]) -> bool:
        if not any(subject_matches(p, subject) for p in self.subjects):
            return False
        if not self.events:
            return True
        return any(all(attributes.get(k) == v for k, v in match.items()) for match in self.events)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subjects": list(self.subjects),
            "events": [dict(e) for e in self.events],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SenderRule:
        return cls(
            str(data["name"]),
            tuple(str(s) for s in data["subjects"]),
            tuple({str(k): str(v) for k, v in e.items()} for e in data.get("events", ())),
        )


@dataclass(frozen=True)
class SenderPolicy:
    """The rules of one sink (one audience)."""

    audience: str
    rules: tuple[SenderRule, ...] = ()

    def permits(self, subject: str, attributes: Mapping[str, str]) -> bool:
        return any(rule.allows(subject, attributes) for rule in self.rules)

    def check(self, subject: str, attributes: Mapping[str, str]) -> None:
        """Forbidden (403) unless a rule allows ``subject`` to send an event like this."""
        if not self.permits(subject, attributes):
            raise Forbidden(
                f"{subject} may not send {attributes.get('type', 'events')} to "
                f"{self.audience}: no event policy allows it"
            )


@dataclass(frozen=True)
class Trust:
    """The trust file: every sink's policy by audience, and the other clusters' issuers
    (discovery base URL -> the clusters whose workloads it identifies)."""

    sinks: Mapping[str, SenderPolicy]
    remote_issuers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def policy(self, audience: str) -> SenderPolicy:
        """The audience's policy; an audience with none denies everything (deny-all)."""
        return self.sinks.get(audience, SenderPolicy(audience))

    def to_json(self) -> dict[str, Any]:
        return {
            "sinks": {a: [r.to_json() for r in p.rules] for a, p in sorted(self.sinks.items())},
            "remote_issuers": {k: list(v) for k, v in sorted(self.remote_issuers.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trust:
        sinks = {
            audience: SenderPolicy(audience, tuple(SenderRule.from_json(r) for r in rules))
            for audience, rules in data["sinks"].items()
        }
        issuers = {k: tuple(v) for k, v in data.get("remote_issuers", {}).items()}
        return cls(sinks, issuers)

    @classmethod
    def load(cls, path: str | Path) -> Trust:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
