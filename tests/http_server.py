"""Serving a WSGI app on a real loopback port from a test thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import waitress
from werkzeug.serving import make_server


@contextmanager
def serving(app: Any, *, tls: bool = False) -> Iterator[str]:
    """Yields the base URL of ``app`` served on 127.0.0.1 (threaded, like production); with
    ``tls``, over HTTPS with a throwaway self-signed certificate."""
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context="adhoc" if tls else None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@contextmanager
def serving_kept_alive(app: Any) -> Iterator[str]:
    """``app`` under waitress, as functions serve in production: HTTP/1.1 connections a client
    may reuse (werkzeug's test server closes every connection)."""
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(5)
