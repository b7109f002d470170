"""CloudEvents over HTTP, both content modes, through the cloudevents SDK's native API."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.v1.event import CloudEvent

from functions import jsonbody
from functions.errors import BadRequest

# An event's id and source are its identity, kept by every consumer that dedupes it: bounded, so
# what a consumer keeps per event stays small (the CloudEvents spec sets no limit).
MAX_IDENTITY_BYTES = 256
# Replies and emitted events get ids derived from what caused them, so a redelivered command
# yields the very same reply event and consumers downstream dedupe it on source + id.
_REPLY_NAMESPACE = uuid.UUID("6f1c3a52-93a4-4c55-8d5e-2b8c57a0d1e4")


@dataclass(frozen=True)
class Incoming:
    """A received event: its identity and its JSON data, not yet validated against a model."""

    type: str
    source: str
    id: str
    time: datetime | None
    subject: str | None
    data: dict[str, Any]
    extensions: dict[str, Any]

    @property
    def key(self) -> str:
        """The deduplication key: CloudEvents identify an event by source + id."""
        return f"{self.source}#{self.id}"

    def attributes(self) -> dict[str, str]:
        """Context attributes as strings, as event policy and trigger filters compare them."""
        out = {"type": self.type, "source": self.source, "id": self.id}
        if self.subject is not None:
            out["subject"] = self.subject
        out.update({k: str(v) for k, v in self.extensions.items()})
        return out


@dataclass(frozen=True)
class Reply:
    """An event a handler answers with (HTTP 200, binary mode), or emits to K_SINK."""

    type: str
    data: dict[str, Any]
    subject: str | None = None


_CORE_ATTRIBUTES = {
    "type",
    "source",
    "id",
    "time",
    "subject",
    "specversion",
    "datacontenttype",
    "dataschema",
}


def parse_http(headers: Mapping[str, str], body: bytes) -> Incoming:
    """Read a CloudEvent in binary or structured mode; BadRequest says what is wrong."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "json" in lowered.get("content-type", "") and body:
        # The SDK parses JSON itself: too deep or lone surrogates are a 400 before it does.
        jsonbody.loads(body, "the CloudEvent")
    try:
        event = from_http_event(HTTPMessage(headers=lowered, body=body))
    except (BaseCloudEventException, ValueError, TypeError, KeyError) as exc:
        raise BadRequest(
            f"not a valid CloudEvent: {exc}. Send CloudEvents 1.0 in binary mode (ce-* headers) "
            "or structured mode (Content-Type: application/cloudevents+json)."
        ) from exc
    data = event.get_data()
    if isinstance(data, bytes | str):
        data = jsonbody.loads(data, "event data") if data else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadRequest(f"event data must be a JSON object, got {type(data).__name__}")
    for name, value in (("id", event.get_id()), ("source", event.get_source())):
        size = len(value.encode(errors="surrogatepass"))
        if size > MAX_IDENTITY_BYTES:
            raise BadRequest(
                f"the event's {name} is {size} bytes; at most {MAX_IDENTITY_BYTES} are accepted"
            )
    attributes = event.get_attributes()
    return Incoming(
        type=event.get_type(),
        source=event.get_source(),
        id=event.get_id(),
        time=event.get_time(),
        subject=event.get_subject(),
        data=data,
        extensions={k: v for k, v in attributes.items() if k not in _CORE_ATTRIBUTES},
    )


def make_event(
    type: str,
    source: str,
    data: dict[str, Any],
    *,
    id: str | None = None,
    subject: str | None = None,
    caused_by: str | None = None,
) -> CloudEvent:
    """A CloudEvent with JSON data; ``caused_by`` (an Incoming.key) makes the id deterministic."""
    attributes: dict[str, Any] = {
        "type": type,
        "source": source,
        "datacontenttype": "application/json",
    }
    if id is not None:
        attributes["id"] = id
    elif caused_by is not None:
        attributes["id"] = str(uuid.uuid5(_REPLY_NAMESPACE, f"{caused_by}#{type}"))
    if subject is not None:
        attributes["subject"] = subject
    return CloudEvent(attributes, data)


def to_binary(event: CloudEvent) -> HTTPMessage:
    return to_binary_event(event)


def to_structured(event: CloudEvent) -> HTTPMessage:
    return to_structured_event(event)
