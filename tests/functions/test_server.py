"""The production server's limits come from the template's concurrency and the app's body limit,
a body far past the limit is cut off unread, and SIGTERM delivers what the process owes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import request

from functions.app import create_app
from functions.server import ServerLimits, build_server
from infer_fn.app import create_app as infer_app
from infer_fn.config import InferConfig
from tests.functions.test_emit import Sink
from tests.infer.conftest import TEST_KEYS
from tests.infer.fakes import ScriptedEngine
from tests.trust import nobody

ROOT = Path(__file__).resolve().parents[2]


def test_limits_follow_the_template_concurrency_and_the_apps_body_limit() -> None:
    app = create_app("settle", senders=nobody(), max_body_bytes=1 << 20)
    limits = ServerLimits.of(app, {"TOLLGATE_CONTAINER_CONCURRENCY": "200"})
    assert limits.threads == 204  # every request Knative may send at once, and probes
    assert limits.connection_limit >= 200 + 4
    assert 1 << 20 < limits.max_request_body_size <= (1 << 20) + 64 * 1024
    assert limits.channel_timeout == 30
    unsized = ServerLimits.of(app, {})
    assert unsized.threads == 16 and unsized.connection_limit > 16


def test_an_app_that_says_how_many_threads_it_needs_gets_them() -> None:
    config = InferConfig(model_name="scripted", concurrency=2, queue_size=3, idle_seconds=0)
    app = infer_app(
        config, senders=nobody(), capability_keys=TEST_KEYS.verify, engine=ScriptedEngine(["w"])
    )
    limits = ServerLimits.of(app, {"TOLLGATE_CONTAINER_CONCURRENCY": "4"})
    assert limits.threads == config.server_threads == 2 + 3 + 4


@pytest.fixture
def served() -> Iterator[str]:
    app = create_app("settle", senders=nobody(), max_body_bytes=1 << 20)

    @app.post("/echo")
    def echo() -> str:
        return str(len(request.get_data()))

    server = build_server(app, 0, "127.0.0.1")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()


def test_a_body_far_past_the_limit_is_refused_before_it_is_read(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        # Claims a gigabyte and sends none of it: refused at once, nothing buffered.
        conn.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n"
        )
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def test_a_body_just_past_the_limit_gets_the_apps_own_413(served: str) -> None:
    r = requests.post(served + "/echo", data=b"x" * ((1 << 20) + 10), timeout=10)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert requests.post(served + "/echo", data=b"x" * 1000, timeout=10).text == "1000"


OWES_THEN_SERVES = """
import sys
from functions.app import create_app
from functions.emit import Emitter
from functions.outbox import SINK, Outbox, sink_route
from functions.server import serve
from pathlib import Path
from tests.trust import nobody, token_file
token = token_file(Path(sys.argv[1]) / "token")
route = {SINK: sink_route(Emitter(sys.argv[2], token))}
box = Outbox(sys.argv[1], route, name="t", first_backoff_s=60)
box.put("io.tollgate.test.v1", "/t", {"n": 1}, id="owed-1")
print("owing", flush=True)
serve(create_app("settle", senders=nobody()), port=int(sys.argv[3]), host="127.0.0.1")
print("stopped", flush=True)
"""


def test_sigterm_delivers_what_is_owed_before_the_process_exits(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sink_port = probe.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(OWES_THEN_SERVES),
            str(tmp_path),
            f"http://127.0.0.1:{sink_port}/",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"owing"  # its first attempt fails
        deadline = time.monotonic() + 30
        while True:  # until it serves
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        sink = Sink([], port=sink_port)  # the broker is back
        process.send_signal(signal.SIGTERM)  # its next attempt was a minute away
        output = process.communicate(timeout=30)[0]
        assert process.returncode == 0, output
        assert b"stopped" in output
        assert [e.id for e in sink.received] == ["owed-1"]
        sink.server.shutdown()
    finally:
        if process.poll() is None:
            process.kill()
