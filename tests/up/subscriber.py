"""A real HTTP subscriber for broker tests: records every request, answers from a script."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic()


class Subscriber:
    """Answers the i-th request with ``script[i]``, every later one with ``default``."""

    def __init__(
        self,
        script: list[Answer] | None = None,
        default: Answer | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.script = list(script or [])
        self.default = default or Answer(200)
        self.received: list[Received] = []
        self.concurrent = 0
        self.most_concurrent = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer._lock:
                    index = len(outer.received)
                    outer.received.append(Received(headers, body, time.monotonic()))
                    answer = outer.script[index] if index < len(outer.script) else outer.default
                    outer.concurrent += 1
                    outer.most_concurrent = max(outer.most_concurrent, outer.concurrent)
                time.sleep(delay_s)
                with outer._lock:
                    outer.concurrent -= 1
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet tests

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve loop that never ran
            self._server.shutdown()
        self._server.server_close()

    def ids(self) -> list[str]:
        with self._lock:
            return [r.headers.get("ce-id", "") for r in self.received]

    def types(self) -> list[str]:
        with self._lock:
            return [r.headers.get("ce-type", "") for r in self.received]


@contextmanager
def running(*subscribers: Subscriber) -> Iterator[None]:
    for s in subscribers:
        s.start()
    try:
        yield
    finally:
        for s in subscribers:
            s.close()


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
