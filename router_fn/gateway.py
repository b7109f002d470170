"""The public ingress of a cluster other than home: the gateway to its cluster-local infer.

The home ingress calls a remote cluster's infer through it:
``POST /infer/<model>/v1/chat/completions`` (or ``/v1/completions``) with the attempt's
capability, streamed through to ``infer-<model>`` inside the cluster. The gateway refuses what
no capability for this cluster vouches for (401) before anything reaches infer, which checks it
again in full (model, bounds, once only). ``GET /infer/<model>/readyz`` and ``/metrics`` pass the
home prober's reads through (health and load; nothing that moves credits)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import requests
from flask import Blueprint, Response, request

from events import wire
from events.capability import CapabilityError, verify
from events.openai import PATHS
from functions.auth.keys import VerifyKeys
from functions.errors import NotFound, Unauthorized, Unavailable

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 300.0
_PASSED = ("content-type", "cache-control", wire.COLD_START_MS, wire.ENGINE_MS)


def gateway_blueprint(cluster: str, infer: Mapping[str, str], keys: VerifyKeys) -> Blueprint:
    """``infer``: model (template name) -> its cluster-local URL."""
    blueprint = Blueprint("gateway", __name__)
    session = requests.Session()
    session.trust_env = False

    def upstream(model: str) -> str:
        url = infer.get(model)
        if url is None:
            raise NotFound(f"cluster {cluster} hosts no model {model!r}; it hosts: {sorted(infer)}")
        return url

    def relay(answer: requests.Response) -> Response:
        def body() -> Iterator[bytes]:
            try:
                yield from answer.iter_content(chunk_size=None)
            finally:
                answer.close()

        headers = {k: v for k, v in answer.headers.items() if k.lower() in _PASSED}
        return Response(body(), status=answer.status_code, headers=headers)

    def attempt(model: str, path: str) -> Response:
        url = upstream(model)
        token = request.headers.get(wire.CAPABILITY)
        if not token:
            raise Unauthorized(f"{cluster} serves only attempts with an ingress's capability")
        try:
            verify(token, keys.get(), audience=cluster)
        except CapabilityError as exc:
            raise Unauthorized(f"the capability is not valid here: {exc}") from exc
        try:
            answer = session.post(
                url + path,
                data=request.get_data(),
                headers={"Content-Type": "application/json", wire.CAPABILITY: token},
                stream=True,
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            )
        except requests.RequestException as exc:
            raise Unavailable(f"infer for {model} on {cluster} is unreachable: {exc}") from exc
        return relay(answer)

    @blueprint.post("/infer/<model>" + PATHS["chat"])
    def chat(model: str) -> Response:
        return attempt(model, PATHS["chat"])

    @blueprint.post("/infer/<model>" + PATHS["completions"])
    def completions(model: str) -> Response:
        return attempt(model, PATHS["completions"])

    @blueprint.get("/infer/<model>/<any(readyz, metrics):probe>")
    def read(model: str, probe: str) -> Response:
        try:
            answer = session.get(f"{upstream(model)}/{probe}", stream=True, timeout=5)
        except requests.RequestException as exc:
            raise Unavailable(f"infer for {model} on {cluster} is unreachable: {exc}") from exc
        return relay(answer)

    return blueprint
