"""Serve a function's app as its Knative container would: on PORT, with a production WSGI server."""

from __future__ import annotations

import os

from flask import Flask
from waitress import serve as waitress_serve

DEFAULT_THREADS = 16
# An app may say how many WSGI threads it needs (the infer function: one per admitted or queued
# request, plus probes) by setting this in app.config.
THREADS_CONFIG = "TOLLGATE_SERVER_THREADS"


def serve(app: Flask, port: int | None = None, host: str = "0.0.0.0") -> None:
    port = port if port is not None else int(os.environ.get("PORT", "8080"))
    threads = int(
        os.environ.get("TOLLGATE_THREADS") or app.config.get(THREADS_CONFIG, DEFAULT_THREADS)
    )
    # waitress streams chunked bodies as they are produced (SSE is not buffered).
    waitress_serve(app, host=host, port=port, threads=threads, ident="tollgate")
