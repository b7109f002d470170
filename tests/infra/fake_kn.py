"""Stand-ins for ``kn`` and ``kubectl``: record every call and keep cluster state in a JSON file.

``install(bin_dir, state_dir)`` writes executables named kn and kubectl that run this module.
State keys are "context/namespace/Kind/name"; specs are stored the way the real tools create them
(kn adds the namespace to references), so the deploy's compare-before-update is exercised.
Environment: FAKE_KUBE_CONTEXTS (comma-separated contexts that exist), FAKE_FAIL (fail any call
whose joined argv contains it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

KSVC = "serving.knative.dev/v1"
_KINDS = {"broker": "Broker", "trigger": "Trigger", "ping": "PingSource"}


def install(bin_dir: Path, state_dir: Path, tools: tuple[str, ...] = ("kn", "kubectl")) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        script = bin_dir / tool
        script.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
            "from tests.infra.fake_kn import main\n"
            f"sys.exit(main({tool!r}, sys.argv[1:], {str(state_dir)!r}))\n",
            encoding="utf-8",
        )
        script.chmod(0o755)


def calls(state_dir: Path) -> list[list[str]]:
    log = state_dir / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def main(tool: str, argv: list[str], state_dir: str) -> int:
    root = Path(state_dir)
    with (root / "calls.jsonl").open("a", encoding="utf-8") as log:
        log.write(json.dumps([tool, *argv]) + "\n")
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in " ".join([tool, *argv]):
        print("error: injected failure", file=sys.stderr)
        return 1
    contexts = [c for c in os.environ.get("FAKE_KUBE_CONTEXTS", "").split(",") if c]
    if argv[:4] == ["config", "get-contexts", "-o", "name"]:
        print("\n".join(contexts))
        return 0
    flags, positional = _parse(argv)
    if flags.get("context") not in contexts:
        print(f"error: context {flags.get('context')!r} does not exist", file=sys.stderr)
        return 1
    state_file = root / "state.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    code = (_kubectl if tool == "kubectl" else _kn)(positional, flags, state)
    state_file.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    return code


def _parse(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """--flag value pairs (repeatable ones collected in lists) and positional words."""
    flags: dict[str, Any] = {}
    positional: list[str] = []
    repeated = {"filter", "ce-override"}
    aliases = {"f": "filename", "o": "output", "n": "namespace"}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("-"):
            key = aliases.get(word.lstrip("-"), word.lstrip("-"))
            value = argv[i + 1]
            if key in repeated:
                flags.setdefault(key, []).append(value)
            else:
                flags[key] = value
            i += 2
        else:
            positional.append(word)
            i += 1
    return flags, positional


def _kubectl(positional: list[str], flags: dict[str, Any], state: dict[str, Any]) -> int:
    if positional[:1] == ["patch"]:
        return _merge_patch(positional, flags, state)
    assert positional == ["apply"], positional
    manifest = yaml.safe_load(Path(flags["filename"]).read_text(encoding="utf-8"))
    meta = manifest["metadata"]
    key = f"{flags['context']}/{meta.get('namespace', '')}/{manifest['kind']}/{meta['name']}"
    verb = (
        "unchanged" if state.get(key) == manifest else "configured" if key in state else "created"
    )
    state[key] = manifest
    print(f"{manifest['kind'].lower()}/{meta['name']} {verb}")
    return 0


def _merge_patch(positional: list[str], flags: dict[str, Any], state: dict[str, Any]) -> int:
    """A JSON merge patch of an existing ConfigMap's data: keys it names change, others stay."""
    assert flags["type"] == "merge" and positional[1] == "configmap", (positional, flags)
    patch = yaml.safe_load(Path(flags["patch-file"]).read_text(encoding="utf-8"))
    key = f"{flags['context']}/{flags['namespace']}/ConfigMap/{positional[2]}"
    live = state.setdefault(key, {"data": {"flag-set-by-the-operator": "kept"}})
    before = dict(live["data"])
    live["data"].update(patch["data"])
    print(f"configmap/{positional[2]} {'patched' if live['data'] != before else 'unchanged'}")
    return 0


def _kn(positional: list[str], flags: dict[str, Any], state: dict[str, Any]) -> int:
    noun, verb, name = positional[-3], positional[-2], positional[-1]
    ns = flags["namespace"]
    if noun == "service":
        assert verb == "apply", positional
        spec = yaml.safe_load(Path(flags["filename"]).read_text(encoding="utf-8"))["spec"]
        key = f"{flags['context']}/{ns}/Service/{name}"
        done = "unchanged" if state.get(key) == spec else "updated" if key in state else "created"
        state[key] = spec
        print(f"Service '{name}' {done} in namespace '{ns}'.")
        return 0
    kind = _KINDS[noun]
    key = f"{flags['context']}/{ns}/{kind}/{name}"
    if verb == "describe":
        if key not in state:
            print(f"error: {noun} '{name}' not found", file=sys.stderr)
            return 1
        print(json.dumps({"kind": kind, "metadata": {"name": name}, "spec": state[key]}))
        return 0
    if (verb == "create") == (key in state):
        print(f"error: {noun} '{name}' {'already exists' if key in state else 'not found'}")
        return 1
    state[key] = _spec(kind, flags, ns)
    print(f"{kind} '{name}' {verb}d in namespace '{ns}'.")
    return 0


def _ref(value: str, ns: str) -> dict[str, str]:
    prefix, name = value.split(":")
    api, kind = {"ksvc": (KSVC, "Service"), "broker": ("eventing.knative.dev/v1", "Broker")}[prefix]
    return {"apiVersion": api, "kind": kind, "name": name, "namespace": ns}


def _spec(kind: str, flags: dict[str, Any], ns: str) -> dict[str, Any]:
    if kind == "Broker":
        return {
            "delivery": {
                "retry": int(flags["retry"]),
                "backoffPolicy": flags["backoff-policy"],
                "backoffDelay": flags["backoff-delay"],
                "deadLetterSink": {"ref": _ref(flags["dl-sink"], ns)},
            }
        }
    if kind == "Trigger":
        attributes = dict(f.split("=", 1) for f in flags.get("filter", []))
        return {
            "broker": flags["broker"],
            "filter": {"attributes": attributes},
            "subscriber": {"ref": _ref(flags["sink"], ns)},
        }
    return {
        "schedule": flags["schedule"],
        "data": flags["data"],
        "sink": {"ref": _ref(flags["sink"], ns)},
        "ceOverrides": {"extensions": dict(o.split("=", 1) for o in flags.get("ce-override", []))},
    }
