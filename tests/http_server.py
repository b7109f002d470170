"""Serving a WSGI app on a real loopback port from a test thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import waitress
from waitress.wasyncore import close_all
from werkzeug.serving import make_server


@contextmanager
def serving(app: Any, *, tls: bool = False, kept_alive: bool = False) -> Iterator[str]:
    """Yields the base URL of ``app`` served on 127.0.0.1 (threaded, like production); with
    ``tls``, over HTTPS with a throwaway self-signed certificate; with ``kept_alive``, under
    waitress as functions serve in production: HTTP/1.1 connections a client may reuse
    (werkzeug's test server closes every connection)."""
    run: Callable[[], None]
    stop: Callable[[], None]
    if kept_alive:
        sockets: dict[int, Any] = {}  # the listener and every open connection
        served = waitress.create_server(app, map=sockets, host="127.0.0.1", port=0, threads=4)

        def stop() -> None:  # connections kept alive would keep waitress's loop running
            close_all(sockets)
            served.task_dispatcher.shutdown()

        run, port = served.run, served.effective_port
    else:
        server = make_server(
            "127.0.0.1", 0, app, threaded=True, ssl_context="adhoc" if tls else None
        )
        run, stop, port = server.serve_forever, server.shutdown, server.server_port
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        stop()
        thread.join(5)
