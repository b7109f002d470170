"""The click commands as infra/cli.py mounts them: validate, render, deploy, table create."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
from click.testing import CliRunner

from infra.iac_commands import COMMANDS, table_create, validate
from tests.infra.conftest import SHIPPED


def test_commands_exported_for_the_cli() -> None:
    assert [c.name for c in COMMANDS] == ["validate", "render", "deploy", "table"]


def test_validate_ok() -> None:
    result = CliRunner().invoke(validate, [str(SHIPPED)])
    assert result.exit_code == 0, result.output
    expected = "valid (4 clusters, 3 models, 2 price book versions (newest 2026-11.1 from"
    assert expected in result.output


def test_validate_reports_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        SHIPPED.read_text(encoding="utf-8").replace("rttMs: 180", "rttMs: 18"), encoding="utf-8"
    )
    result = CliRunner().invoke(validate, [str(bad)])
    assert result.exit_code == 1
    line = next(i + 1 for i, text in enumerate(bad.read_text().splitlines()) if "rttMs: 18" in text)
    assert (
        f"{bad}:{line}: clusters[3].rttMs: 18 ms is outside tier 'cloud''s 150-300 ms"
        in result.output
    )


def test_validate_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(validate, [str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_table_create_refuses_a_non_dynamodb_url() -> None:
    result = CliRunner().invoke(table_create, ["--store", "sqlite:///x.db"])
    assert result.exit_code == 1
    assert "use dynamodb://host:port/TABLE" in result.output


def test_table_create_on_dynamodb_local(dynamodb_local_endpoint: str) -> None:
    name = f"tollgate-{uuid.uuid4().hex[:8]}"
    store = f"dynamodb://{dynamodb_local_endpoint.removeprefix('http://')}/{name}"
    runner = CliRunner()
    first = runner.invoke(table_create, ["--store", store, "--region", "us-east-1"])
    assert first.exit_code == 0, first.output
    assert f"table {name} created" in first.output
    again = runner.invoke(table_create, ["--store", store, "--region", "us-east-1"])
    assert again.exit_code == 0 and f"table {name} already exists" in again.output
    client = boto3.client(
        "dynamodb",
        endpoint_url=dynamodb_local_endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    table = client.describe_table(TableName=name)["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {
        "pk": "HASH",
        "sk": "RANGE",
    }
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert ttl.get("AttributeName") == "expires_at"
