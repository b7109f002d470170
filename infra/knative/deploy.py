"""The ``kn`` plan that applies rendered manifests, one cluster context at a time.

kn carries what it can express exactly (services from their files, ping sources); ``kubectl
apply -f`` carries the rest (namespace, ConfigMaps, ServiceAccounts, the broker and triggers,
whose dead-letter sinks and subscribers carry an OIDC audience kn cannot set, the SinkBinding,
EventPolicies); Knative's own ConfigMaps are merge-patched (``kubectl patch --type
merge``), so the cluster's other flags stay. Every step is
create-or-update: services and kubectl use apply, which reports "unchanged"; broker, triggers and
ping sources are described first and only created, or updated when the live spec differs, so a
second deploy changes nothing.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.knative.render import Manifest, manifest_filename, render, write
from infra.knative.trust import MERGE_PATCH
from infra.template.catalog import PING_TYPE_EXTENSION
from infra.template.fields import go_duration_seconds
from infra.template.schema import Cluster, Template

Command = tuple[str, ...]


class DeployError(RuntimeError):
    """A deploy that cannot start or that a command stopped; the message says how to fix it."""


@dataclass(frozen=True)
class Step:
    cluster: str
    resource: str  # Kind/name, for messages
    apply: Command  # create (when probed) or an idempotent apply
    probe: Command | None = None  # exits 0 and prints the live object as JSON when it exists
    update: Command | None = None
    desired: Manifest | None = None  # spec fields the live object must have to be left alone


def plan(t: Template, out: Path, cluster: str | None = None) -> list[Step]:
    """Every step for every selected cluster, in order; ``out`` is where render wrote files."""
    rendered = render(t)
    steps: list[Step] = []
    for c in _selected(t, cluster):
        for i, manifest in enumerate(rendered[c.name]):
            path = out / c.name / manifest_filename(i, manifest)
            steps.append(_step(t, c, manifest, path))
    return steps


def _selected(t: Template, cluster: str | None) -> list[Cluster]:
    if cluster is None:
        return list(t.clusters)
    names = [c.name for c in t.clusters]
    if cluster not in names:
        raise DeployError(f"no cluster {cluster!r} in the template; clusters: {', '.join(names)}")
    return [t.cluster(cluster)]


def _scope(t: Template, c: Cluster) -> Command:
    return ("--namespace", t.namespace, "--context", c.context)


def _step(t: Template, c: Cluster, m: Manifest, path: Path) -> Step:
    kind, name = m["kind"], m["metadata"]["name"]
    resource = f"{kind}/{name}"
    kubectl = Step(c.name, resource, ("kubectl", "--context", c.context, "apply", "-f", str(path)))
    annotations = m["metadata"].get("annotations", {})
    if annotations.items() >= MERGE_PATCH.items():
        patch = ("patch", kind.lower(), name, "--namespace", m["metadata"]["namespace"])
        command = ("kubectl", "--context", c.context, *patch, "--type", "merge")
        return Step(c.name, resource, (*command, "--patch-file", str(path)))
    if kind == "Service":
        return Step(
            c.name,
            resource,
            ("kn", "service", "apply", name, "--filename", str(path), *_scope(t, c), *_wait(m)),
        )
    if kind == "PingSource":
        spec = m["spec"]
        return _probed(t, c, resource, ("source", "ping"), name, _ping_flags(spec), spec)
    return kubectl


def _ping_flags(spec: Manifest) -> Command:
    flags: Command = ("--schedule", spec["schedule"], "--data", spec["data"])
    flags += ("--sink", f"broker:{spec['sink']['ref']['name']}")
    for key, value in spec["ceOverrides"]["extensions"].items():
        assert key == PING_TYPE_EXTENSION  # the only override render sets
        flags += ("--ce-override", f"{key}={value}")
    return flags


def _wait(m: Manifest) -> Command:
    deadline = m["spec"]["template"]["metadata"]["annotations"].get(
        "serving.knative.dev/progress-deadline"
    )
    # Model loading outlasts kn's default 600 s wait; wait as long as Knative itself would.
    return ("--wait-timeout", str(go_duration_seconds(deadline))) if deadline else ()


def _probed(
    t: Template,
    c: Cluster,
    resource: str,
    noun: Command,
    name: str,
    flags: Command,
    desired: Manifest,
) -> Step:
    scope = _scope(t, c)
    return Step(
        c.name,
        resource,
        apply=("kn", *noun, "create", name, *scope, *flags),
        probe=("kn", *noun, "describe", name, *scope, "-o", "json"),
        update=("kn", *noun, "update", name, *scope, *flags),
        desired=desired,
    )


def format_plan(t: Template, steps: Sequence[Step]) -> str:
    lines: list[str] = []
    cluster = None
    for s in steps:
        if s.cluster != cluster:
            cluster = s.cluster
            context = t.cluster(cluster).context
            # Secret values never live in the template, so ops create this one by hand, once.
            lines += [
                f"# cluster {cluster} (context {context}); once, before the first deploy:",
                f"#   kubectl --context {context} create namespace {t.namespace}",
                f"#   kubectl --context {context} -n {t.namespace} create secret generic "
                f"{t.admin_secret} --from-literal=token=<admin token>",
                "#   tollgate keys rotate --dir <keys dir>  (then, for every cluster:)",
                f"#   kubectl --context {context} -n {t.namespace} create secret generic "
                f"{t.capability_secret}-signing --from-file=<keys dir>/signing.jwk",
                f"#   kubectl --context {context} -n {t.namespace} create secret generic "
                f"{t.capability_secret}-verify --from-file=<keys dir>/verify.jwks",
            ]
        lines.append(shlex.join(s.apply))
        if s.update is not None:
            lines.append(f"#   if it exists and differs: {shlex.join(s.update)}")
    return "\n".join(lines) + "\n"


Runner = Callable[[Command], "subprocess.CompletedProcess[str]"]


def _run(command: Command) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def deploy(
    t: Template,
    out: Path,
    *,
    dry_run: bool,
    cluster: str | None = None,
    echo: Callable[[str], None] = print,
    run: Runner = _run,
) -> None:
    """Render to ``out`` and print (dry run) or apply the plan.

    A real run checks kn, kubectl and every kube context before its first change.
    """
    steps = plan(t, out, cluster)
    if not dry_run:
        _preflight(t, steps, run)
    write(t, out)
    if dry_run:
        echo(format_plan(t, steps).rstrip("\n"))
        return
    for step in steps:
        _apply(step, run, echo)


def _preflight(t: Template, steps: Sequence[Step], run: Runner) -> None:
    fixes = {
        "kn": "install the Knative CLI: https://knative.dev/docs/client/install-kn/",
        "kubectl": "install kubectl: https://kubernetes.io/docs/tasks/tools/",
    }
    for tool, fix in fixes.items():
        if shutil.which(tool) is None:
            raise DeployError(f"{tool} is not on PATH; nothing was changed. To fix: {fix}")
    listed = run(("kubectl", "config", "get-contexts", "-o", "name"))
    if listed.returncode != 0:
        raise DeployError(f"kubectl config get-contexts failed: {listed.stderr.strip()}")
    known = set(listed.stdout.split())
    for name in dict.fromkeys(s.cluster for s in steps):
        context = t.cluster(name).context
        if context not in known:
            raise DeployError(
                f"kube context {context!r} of cluster {name!r} is not in your kubeconfig; "
                f"nothing was changed. To fix: kubectl config set-context {context} "
                f"--cluster=<cluster> --user=<user> (or merge its kubeconfig into KUBECONFIG). "
                f"Known contexts: {', '.join(sorted(known)) or 'none'}"
            )


def _apply(step: Step, run: Runner, echo: Callable[[str], None]) -> None:
    command = step.apply
    if step.probe is not None and step.update is not None:
        live = run(step.probe)
        if live.returncode == 0:
            if _subset(step.desired, json.loads(live.stdout).get("spec", {})):
                echo(f"{step.cluster}: {step.resource} unchanged")
                return
            command = step.update
    echo(f"{step.cluster}: {shlex.join(command)}")
    done = run(command)
    if done.returncode != 0:
        raise DeployError(
            f"{step.cluster}: {step.resource} failed ({shlex.join(command)}): "
            f"{(done.stderr or done.stdout).strip()}"
        )


def _subset(want: Any, have: Any) -> bool:
    """Every field of ``want`` is in ``have``; the server adds defaults (e.g. namespace)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            k in have and _subset(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(_subset(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(want == have)
