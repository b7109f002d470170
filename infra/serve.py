"""``tollgate serve <function>``: run one function's HTTP server, as its Knative container does."""

from __future__ import annotations

import logging

import click
from flask import Flask

from functions.server import serve as serve_app

LEDGER_FUNCTIONS = ("grant", "authorize", "settle", "refund", "sweep", "ledger-admin", "ledger")
FUNCTIONS = (*LEDGER_FUNCTIONS, "infer")


def build_app(function: str) -> Flask:
    """The app of a deployable function, configured from the environment."""
    if function in LEDGER_FUNCTIONS:
        from ledger_fn.app import create_app as ledger_app

        return ledger_app(function)
    if function == "infer":
        from infer_fn.app import create_app as infer_app

        return infer_app()
    raise click.BadParameter(f"unknown function {function!r}; one of {', '.join(FUNCTIONS)}")


@click.command("serve")
@click.argument("function", type=click.Choice(FUNCTIONS))
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to listen on (default: $PORT, else 8080).",
)
@click.option("--host", default="0.0.0.0", show_default=True)
def serve(function: str, port: int | None, host: str) -> None:
    """Run FUNCTION's HTTP server (CloudEvents on POST /, /healthz, /readyz, /metrics)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve_app(build_app(function), port=port, host=host)
