"""The kn plan: exact commands (golden), a real run against kn/kubectl stand-ins, idempotency,
and failing before any change when a tool or a kube context is missing."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.iac_commands import deploy_command
from infra.knative.deploy import DeployError, deploy, format_plan, plan
from infra.template.load import parse_template
from infra.template.schema import Template
from tests.infra import fake_kn
from tests.infra.conftest import SHIPPED, check_golden

OUT = Path("out")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shipped: Template) -> Path:
    """kn and kubectl stand-ins on an otherwise empty PATH, every template context present."""
    state = tmp_path / "state"
    state.mkdir()
    fake_kn.install(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("FAKE_KUBE_CONTEXTS", ",".join(c.context for c in shipped.clusters))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.chdir(tmp_path)
    return state


def _commands(state: Path) -> list[str]:
    return [shlex.join(c) for c in fake_kn.calls(state)]


def test_plan_golden(shipped: Template) -> None:
    check_golden("deploy/plan.txt", format_plan(shipped, plan(shipped, OUT)))


def test_plan_uses_kn_where_kn_can_express_the_resource(shipped: Template) -> None:
    text = format_plan(shipped, plan(shipped, OUT, "regional-paris-1"))
    assert "kn service apply authorize --filename out/regional-paris-1/19-service-authorize" in text
    # Knative's own flags are merge-patched: the cluster's other flags stay.
    assert (
        "kubectl --context tollgate-regional-paris-1 patch configmap config-features "
        "--namespace knative-eventing --type merge --patch-file "
        "out/regional-paris-1/03-configmap-config-features.yaml"
    ) in text
    # The broker's and triggers' dead-letter sinks and subscribers carry an OIDC audience kn
    # cannot set: kubectl applies them.
    assert (
        "kubectl --context tollgate-regional-paris-1 apply -f "
        "out/regional-paris-1/17-broker-default.yaml"
    ) in text
    assert (
        "kn source ping create holds-sweep --namespace tollgate --context "
        "tollgate-regional-paris-1 --schedule '* * * * *' --data '{}' --sink broker:default "
        "--ce-override tollgatetype=io.tollgate.holds.sweep.v1"
    ) in text
    assert (
        "kubectl --context tollgate-regional-paris-1 apply -f "
        "out/regional-paris-1/41-trigger-settle-inference-completed.yaml"
    ) in text
    assert "eventpolicy-default-from-operator-bss.yaml" in text
    # GPU services wait as long as their progress deadline for the model to load.
    assert (
        "infer-llama33-70b.yaml --namespace tollgate --context tollgate-regional-paris-1 "
        "--wait-timeout 2700" in text
    )


def test_dry_run_prints_the_plan_and_runs_nothing(fake: Path, shipped: Template) -> None:
    result = CliRunner().invoke(deploy_command, ["--dry-run", str(SHIPPED)])
    assert result.exit_code == 0, result.output
    assert result.output == format_plan(shipped, plan(shipped, OUT))
    assert fake_kn.calls(fake) == []
    assert (fake.parent / "out" / "regional-paris-1" / "17-broker-default.yaml").exists()


def test_deploy_runs_every_command_in_order_then_changes_nothing(
    fake: Path, shipped: Template
) -> None:
    steps = plan(shipped, OUT)
    deploy(shipped, OUT, dry_run=False, echo=lambda _: None)
    expected = ["kubectl config get-contexts -o name"]
    for s in steps:
        expected += [shlex.join(s.probe)] if s.probe else []
        expected.append(shlex.join(s.apply))
    assert _commands(fake) == expected

    state = (fake / "state.json").read_text()
    before = len(fake_kn.calls(fake))
    echoed: list[str] = []
    deploy(shipped, OUT, dry_run=False, echo=echoed.append)
    second = _commands(fake)[before:]
    assert (fake / "state.json").read_text() == state
    assert not [c for c in second if " create " in c or " update " in c]
    assert "regional-paris-1: PingSource/holds-sweep unchanged" in echoed
    flags = json.loads(state)[
        "tollgate-regional-paris-1/knative-eventing/ConfigMap/config-features"
    ]
    assert flags["data"]["flag-set-by-the-operator"] == "kept"  # merged, not replaced
    assert flags["data"]["authentication-oidc"] == "enabled"


def test_a_changed_resource_is_updated_in_place(fake: Path, shipped: Template) -> None:
    home = shipped.eventing.home
    deploy(shipped, OUT, dry_run=False, cluster=home, echo=lambda _: None)
    before = len(fake_kn.calls(fake))
    changed = parse_template(
        SHIPPED.read_text(encoding="utf-8").replace(
            'schedule: "* * * * *"\n      type: io.tollgate.holds.sweep.v1',
            'schedule: "*/2 * * * *"\n      type: io.tollgate.holds.sweep.v1',
        )
    )
    deploy(changed, OUT, dry_run=False, cluster=home, echo=lambda _: None)
    mutating = [c for c in _commands(fake)[before:] if " create " in c or " update " in c]
    assert mutating == [
        "kn source ping update holds-sweep --namespace tollgate --context "
        "tollgate-regional-paris-1 --schedule '*/2 * * * *' --data '{}' --sink broker:default "
        "--ce-override tollgatetype=io.tollgate.holds.sweep.v1"
    ]


def test_one_cluster(fake: Path, shipped: Template) -> None:
    deploy(shipped, OUT, dry_run=False, cluster="edge-lyon-5g-1", echo=lambda _: None)
    contexts = {c[c.index("--context") + 1] for c in fake_kn.calls(fake) if "--context" in c}
    assert contexts == {"tollgate-edge-lyon-1"}
    with pytest.raises(
        DeployError, match="no cluster 'mars-1' in the template; clusters: edge-lyon-5g-1, "
    ):
        deploy(shipped, OUT, dry_run=True, cluster="mars-1")


def test_missing_kn_fails_before_any_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shipped: Template
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    fake_kn.install(tmp_path / "bin", state, tools=("kubectl",))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(deploy_command, [str(SHIPPED)])
    assert result.exit_code == 1
    assert "kn is not on PATH; nothing was changed" in result.output
    assert "https://knative.dev/docs/client/install-kn/" in result.output
    assert fake_kn.calls(state) == []


def test_missing_context_fails_before_any_change(
    fake: Path, monkeypatch: pytest.MonkeyPatch, shipped: Template
) -> None:
    present = [c.context for c in shipped.clusters if c.name != "cloud-frankfurt-1"]
    monkeypatch.setenv("FAKE_KUBE_CONTEXTS", ",".join(present))
    with pytest.raises(DeployError) as caught:
        deploy(shipped, OUT, dry_run=False, echo=lambda _: None)
    message = str(caught.value)
    assert "kube context 'tollgate-cloud-frankfurt-1' of cluster 'cloud-frankfurt-1'" in message
    assert "kubectl config set-context tollgate-cloud-frankfurt-1" in message
    assert _commands(fake) == ["kubectl config get-contexts -o name"]
    assert not (fake / "state.json").exists()


def test_a_failing_command_stops_the_deploy(
    fake: Path, monkeypatch: pytest.MonkeyPatch, shipped: Template
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "kn service apply settle")
    with pytest.raises(
        DeployError,
        match=r"Service/settle failed \(kn service apply settle .*\): error: injected failure",
    ):
        deploy(shipped, OUT, dry_run=False, echo=lambda _: None)
    assert _commands(fake)[-1].startswith("kn service apply settle ")
