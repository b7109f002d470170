"""Serve a function's app as its Knative container would: on PORT, with a production WSGI server."""

from __future__ import annotations

import os

from flask import Flask
from waitress import serve as waitress_serve

DEFAULT_THREADS = 16


def serve(app: Flask, port: int | None = None, host: str = "0.0.0.0") -> None:
    port = port if port is not None else int(os.environ.get("PORT", "8080"))
    threads = int(os.environ.get("TOLLGATE_THREADS", DEFAULT_THREADS))
    # send_bytes=1: waitress would otherwise buffer a streamed (SSE) body before sending it.
    waitress_serve(app, host=host, port=port, threads=threads, send_bytes=1, ident="tollgate")
