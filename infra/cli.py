"""The one CLI, ``tollgate``: it wires every part, so it lives in infra (nothing imports infra)."""

from __future__ import annotations

import json

import click

from events.catalogue import json_schemas
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


main.add_command(serve)
main.add_command(ledger)
main.add_command(up)
main.add_command(sla)
for command in COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
