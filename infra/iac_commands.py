"""CLI commands for the template: validate, render, deploy, table create.

infra/cli.py adds each of COMMANDS to the ``tollgate`` group.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import click

from infra.knative.deploy import DeployError, deploy
from infra.knative.render import write
from infra.template.load import load_template
from infra.template.problems import TemplateError
from infra.template.schema import Template

_FILE = click.argument(
    "file", default="template.yaml", type=click.Path(dir_okay=False, path_type=Path)
)


def _load(file: Path) -> Template:
    if not file.exists():
        raise click.ClickException(f"{file} does not exist; pass the template file to use")
    try:
        return load_template(file)
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@_FILE
def validate(file: Path) -> None:
    """Check a template; every problem names its YAML path and line."""
    t = _load(file)
    click.echo(
        f"{file}: valid ({len(t.clusters)} clusters, {len(t.models)} models, "
        f"{len(t.price_book.versions)} price book versions (newest {t.price_book.newest.version}"
        f" from {t.price_book.newest.effective_from:%Y-%m-%d %H:%M} UTC), "
        f"{len(t.eventing.triggers)} triggers)"
    )


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Folder to write: one sub-folder per cluster, plus table/.",
)
@_FILE
def render(out: Path, file: Path) -> None:
    """Render Knative manifests and the table definition."""
    written = write(_load(file), out)
    click.echo(f"wrote {len(written)} files under {out}/")


@click.command(name="deploy")
@click.option("--dry-run", is_flag=True, help="Print the commands instead of running them.")
@click.option("--cluster", default=None, help="Deploy one cluster (by template name).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Where the rendered manifests the commands apply are written.",
)
@_FILE
def deploy_command(dry_run: bool, cluster: str | None, out: Path, file: Path) -> None:
    """Apply the rendered platform with kn (and kubectl) per cluster context."""
    try:
        deploy(_load(file), out, dry_run=dry_run, cluster=cluster, echo=click.echo)
    except DeployError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def table() -> None:
    """The DynamoDB-compatible table holding token state."""


@table.command(name="create")
@click.option("--store", required=True, help="dynamodb://host:port/TABLE or dynamodb:///TABLE")
@click.option("--region", default=None, help="AWS region (default: from the environment).")
def table_create(store: str, region: str | None) -> None:
    """Create the table (keys pk/sk, on-demand billing, TTL on expires_at)."""
    url = urlparse(store)
    name = url.path.lstrip("/")
    if url.scheme not in ("dynamodb", "dynamodbs") or not name:
        raise click.ClickException(
            f"--store {store!r} is not a DynamoDB URL: use dynamodb://host:port/TABLE "
            "(DynamoDB Local, Alternator) or dynamodb:///TABLE (AWS)"
        )
    endpoint = None
    if url.netloc:
        endpoint = ("https://" if url.scheme == "dynamodbs" else "http://") + url.netloc
    from functions.store.dynamodb import create_table  # boto3 loads only when needed
    from functions.store.port import StoreUnavailable

    try:
        created = create_table(name, endpoint_url=endpoint, region=region)
    except (StoreUnavailable, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"table {name} {'created' if created else 'already exists'}")


COMMANDS: list[click.Command] = [validate, render, deploy_command, table]
