"""Every function's CloudEvent parsing: identity attributes are bounded (400 beyond 256 bytes)."""

from __future__ import annotations

import pytest
from flask import Flask

from functions.app import create_app
from functions.cloudevent import MAX_IDENTITY_BYTES, make_event, to_binary, to_structured


def app() -> Flask:
    return create_app("t", handlers={"io.tollgate.test.v1": lambda event: None})


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("attribute", ["id", "source"])
def test_an_id_or_source_over_256_bytes_is_refused_with_400(
    structured: bool, attribute: str
) -> None:
    client = app().test_client()
    fits = {"id": "e1", "source": "/t", attribute: "é" * (MAX_IDENTITY_BYTES // 2)}  # 256 bytes
    over = {**fits, attribute: fits[attribute] + "x"}
    encode = to_structured if structured else to_binary
    for attributes, status in ((fits, 204), (over, 400)):
        event = make_event("io.tollgate.test.v1", attributes["source"], {}, id=attributes["id"])
        message = encode(event)
        response = client.post("/", headers=message.headers, data=message.body)
        assert response.status_code == status, response.get_json()
    message = encode(make_event("io.tollgate.test.v1", over["source"], {}, id=over["id"]))
    error = client.post("/", headers=message.headers, data=message.body).get_json()["error"]
    assert f"{attribute} is 257 bytes; at most 256" in error["message"]
