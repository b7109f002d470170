"""Every function's CloudEvent parsing: identity attributes are bounded (400 beyond 256 bytes)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from functions.app import create_app
from functions.cloudevent import MAX_IDENTITY_BYTES, make_event, to_binary, to_structured
from tests.trust import TestIssuer


def client(issuer: TestIssuer) -> FlaskClient:
    """A function app taking the test type from the tests' sender, and that sender's client."""
    app = create_app(
        "t",
        senders=issuer.senders("tests", {"tester": ()}),
        handlers={"io.tollgate.test.v1": lambda event: None},
    )
    signed = app.test_client()
    signed.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {issuer.token('tester', 'tests')}"
    return signed


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("attribute", ["id", "source"])
def test_an_id_or_source_over_256_bytes_is_refused_with_400(
    structured: bool, attribute: str, issuer: TestIssuer
) -> None:
    signed = client(issuer)
    fits = {"id": "e1", "source": "/t", attribute: "é" * (MAX_IDENTITY_BYTES // 2)}  # 256 bytes
    over = {**fits, attribute: fits[attribute] + "x"}
    encode = to_structured if structured else to_binary
    for attributes, status in ((fits, 204), (over, 400)):
        event = make_event("io.tollgate.test.v1", attributes["source"], {}, id=attributes["id"])
        message = encode(event)
        response = signed.post("/", headers=message.headers, data=message.body)
        assert response.status_code == status, response.get_json()
    message = encode(make_event("io.tollgate.test.v1", over["source"], {}, id=over["id"]))
    error = signed.post("/", headers=message.headers, data=message.body).get_json()["error"]
    assert f"{attribute} is 257 bytes; at most 256" in error["message"]
