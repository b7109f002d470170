"""The one CLI, ``tollgate``: it wires every part, so it lives in infra (nothing imports infra)."""

from __future__ import annotations

import click

from infra.iac_commands import COMMANDS
from infra.serve import serve
from ledger_fn.cli import ledger


@click.group()
@click.version_option(package_name="tollgate")
def main() -> None:
    """Tollgate: prepaid AI-inference credits on the operator's own network."""


main.add_command(serve)
main.add_command(ledger)
for command in COMMANDS:
    main.add_command(command)
if __name__ == "__main__":
    main()
