"""The one CLI, ``tollgate``: it wires every part, so it lives in infra (nothing imports infra)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from events.catalogue import json_schemas
from functions.auth import keys as capability_keys
from infra.iac_commands import COMMANDS
from infra.local.up import up
from infra.serve import serve
from infra.sla_cli import sla
from ledger_fn.cli import ledger


@click.group()
@click.version_option(package_name="tollgate")
def main() -> None:
    """Tollgate: prepaid AI-inference credits on the operator's own network."""


@main.command("events")
def events_schemas() -> None:
    """Print the JSON Schema of every CloudEvent type's data (the event catalogue)."""
    click.echo(json.dumps(json_schemas(), indent=2))


@main.group("keys")
def keys() -> None:
    """The signing keys of inference capabilities (the ingress signs, infer and ledger verify)."""


@keys.command("rotate")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".tollgate/keys"),
    show_default=True,
    help="The keys directory: tollgate up's <state-dir>/keys, or where you build the Secrets.",
)
def rotate(directory: Path) -> None:
    """Make a new signing key; verifiers keep accepting the previous one."""
    kid = capability_keys.rotate(directory)
    click.echo(
        f"new capability key {kid} in {directory}: {capability_keys.SIGNING_FILE} (the ingress's, "
        f"secret), {capability_keys.VERIFY_FILE} (current and previous public keys)"
    )


main.add_command(serve)
main.add_command(ledger)
main.add_command(up)
main.add_command(sla)
for command in COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
