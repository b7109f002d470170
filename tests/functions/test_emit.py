"""Emitting to a real HTTP sink: binary mode, retries on 5xx, no retry on 4xx, dedupe-able ids,
the workload's current token as the bearer (re-read when it is rotated)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3

from functions.auth.tokens import TokenFile
from functions.cloudevent import Incoming, parse_http
from functions.emit import EmitFailed, Emitter


class Sink:
    def __init__(self, statuses: list[int], port: int = 0) -> None:
        self.statuses = statuses
        self.received: list[Incoming] = []
        self.bearers: list[str] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sink.received.append(parse_http(dict(self.headers), body))
                sink.bearers.append(self.headers.get("Authorization", ""))
                status = sink.statuses.pop(0) if sink.statuses else 202
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink([])
    yield s
    s.server.shutdown()


@pytest.fixture
def token(tmp_path: Path) -> TokenFile:
    path = tmp_path / "sink"
    path.write_text("token-1\n", encoding="utf-8")
    return TokenFile(path)


def test_emits_binary_cloudevents_and_retries_transient_failures(
    sink: Sink, token: TokenFile
) -> None:
    sink.statuses[:] = [503, 500]
    Emitter(sink.url, token).emit("io.tollgate.test.v1", "/t", {"n": 1}, caused_by="k#1")
    assert [e.data for e in sink.received] == [{"n": 1}] * 3
    assert len({e.id for e in sink.received}) == 1  # a retry reuses the id: the sink dedupes
    assert sink.bearers == ["Bearer token-1"] * 3


def test_a_rotated_token_is_sent_from_the_next_event_on(sink: Sink, token: TokenFile) -> None:
    emitter = Emitter(sink.url, token)
    emitter.emit("io.tollgate.test.v1", "/t", {})
    token.path.write_text("token-2-longer", encoding="utf-8")  # as kubelet rewrites it
    emitter.emit("io.tollgate.test.v1", "/t", {})
    assert sink.bearers == ["Bearer token-1", "Bearer token-2-longer"]


def test_without_a_token_nothing_is_sent(sink: Sink, tmp_path: Path) -> None:
    with pytest.raises(EmitFailed, match="no token"):
        Emitter(sink.url, None).emit("io.tollgate.test.v1", "/t", {})
    with pytest.raises(EmitFailed, match="no token at"):
        Emitter(sink.url, TokenFile(tmp_path / "missing")).emit("io.tollgate.test.v1", "/t", {})
    assert sink.received == []


def test_gives_up_on_a_4xx_at_once(sink: Sink, token: TokenFile) -> None:
    sink.statuses[:] = [400]
    with pytest.raises(EmitFailed, match="HTTP 400"):
        Emitter(sink.url, token).emit("io.tollgate.test.v1", "/t", {})
    assert len(sink.received) == 1


def test_unreachable_sink_fails_after_bounded_retries(token: TokenFile) -> None:
    with pytest.raises(EmitFailed):
        Emitter("http://127.0.0.1:9/", token).emit("io.tollgate.test.v1", "/t", {})


def test_no_sink_sends_nothing() -> None:
    class NoTraffic(urllib3.PoolManager):
        def urlopen(self, *args: object, **kwargs: object) -> urllib3.BaseHTTPResponse:
            raise AssertionError("an emitter without K_SINK must not send anything")

    Emitter(None, None, pool=NoTraffic()).emit("io.tollgate.test.v1", "/t", {})
