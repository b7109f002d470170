"""``tollgate up``: the whole platform from template.yaml on one machine.

The ping scheduler, the issuer and, for each local tier's infer service, an activator and the
local autoscaler (Knative's KPA) run in this process; the broker (Knative Broker/Trigger
semantics) and every function run in child processes — each function as ``tollgate serve
<function>``, exactly as in its container — with their logs under ``<state-dir>/logs/``; infer
replicas come and go with the load (0..maxScale per service). A child that crashes is restarted
with its own back-off while the rest keeps serving. State (the store, the broker queue, the
outboxes, the admin token, the demo key) lives in the state dir, so a restart keeps every balance
and every event.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
import requests
from rich.console import Console
from rich.table import Table

from functions.auth import keys
from infra.local.activator import ActivatorServer
from infra.local.broker_process import broker_config
from infra.local.demo import (
    KEY_FILE,
    Demo,
    TokenSource,
    admin_token,
    ensure_demo,
    ledger_keys,
    token_file,
)
from infra.local.echo import LogEcho
from infra.local.issuer import Issuer, IssuerServer, TokenFiles
from infra.local.platform import (
    ADMIN,
    BROKER,
    ROUTE,
    LocalPlatform,
    free_port,
    plan,
    write_json,
)
from infra.local.scaler import TICK_S, Scaler
from infra.local.scheduler import Scheduler, http_sender
from infra.local.supervisor import BackOff, ChildFailed, Restarts, Supervisor
from infra.template.load import load_template
from infra.template.policies import broker_audience, ping_account
from infra.template.problems import TemplateError
from infra.template.schema import Template

STARTUP_TIMEOUT_S = 120.0

# soft_wrap: keys, tokens and commands must stay on one line to be copied.
console = Console(soft_wrap=True)


class _Stop(Exception):
    """SIGINT or SIGTERM arrived: leave whatever we were doing and shut down."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # Later signals are ignored: shutting down must not be cut short by an impatient Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


@click.command("up")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    help="Port of the ingress (the OpenAI-compatible API).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".tollgate"),
    show_default=True,
    help="Where the store, the broker queue, tokens and logs live.",
)
@click.option(
    "--template",
    "template_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("template.yaml"),
    show_default=True,
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address every process listens on (the ingress, the functions, the broker, the "
    "issuer). Only the ingress is meant for callers; the rest trust only signed tokens.",
)
@click.option(
    "--startup-timeout",
    type=float,
    default=STARTUP_TIMEOUT_S,
    show_default=True,
    help="Seconds each function may take to answer /healthz.",
)
@click.option(
    "--store",
    default=None,
    help="Store URL for every function (default: sqlite in the state dir). A DynamoDB table "
    "(dynamodb://host:port/table) must exist: tollgate table create.",
)
def up(
    port: int,
    state_dir: Path,
    template_path: Path,
    host: str,
    startup_timeout: float,
    store: str | None,
) -> None:
    """Run the whole platform locally: issuer, broker, ledger, route, ingress and, per tier, an
    infer service scaling from zero."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # One access-log line per event would bury what matters (retries, dead letters).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        template = load_template(template_path)
    except (OSError, TemplateError) as exc:
        raise click.ClickException(str(exc)) from exc
    state_dir.mkdir(parents=True, exist_ok=True)
    token, source = admin_token(state_dir)
    issuer = IssuerServer(Issuer(template.namespace, state_dir / "issuer" / "key.jwk"), host)
    platform = plan(
        template,
        template_path,
        state_dir,
        ingress_port=port,
        broker_url=f"http://{host}:{free_port(host)}",
        issuer_url=issuer.url,
        admin_token=token,
        store_url=store,
        ledger_keys=ledger_keys(state_dir),
        host=host,
    )
    write_json(platform.endpoints_file, platform.endpoints)
    write_json(platform.trust_file, platform.trust.to_json())
    keys.ensure(platform.keys_dir)
    running = _Running(template, platform, state_dir, issuer)
    status = 0
    try:
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        running.start(startup_timeout)
        _wait_routable(platform.url(ROUTE), startup_timeout)
        demo = ensure_demo(platform.url(ADMIN), token, state_dir)
        write_json(running.endpoints_json, _endpoints(platform, running, port, state_dir, host))
        _summary(template, platform, running, port, demo, source, state_dir, host)
        _watch(running)
    except _Stop as stop:
        console.print(f"\n[bold]{stop}[/]: stopping…")
    except (ChildFailed, requests.RequestException) as exc:
        console.print(str(exc), style="red", markup=False)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        running.stop()
    sys.exit(status)


class _Running:
    """What ``tollgate up`` runs: the issuer, the ping scheduler and the infer services'
    activators with the scaler in this process; the broker, the function processes and the infer
    replicas as its children."""

    def __init__(
        self, template: Template, platform: LocalPlatform, state_dir: Path, issuer: IssuerServer
    ) -> None:
        # Children see none of this process's secrets but those the plan gives each of them.
        base_env = {k: v for k, v in os.environ.items() if k not in platform.secrets}
        self.supervisor = Supervisor(state_dir / "logs", base_env)
        self.restarts = Restarts(BackOff())
        self.scaler = Scaler(self.supervisor, platform.services, self.restarts)
        self.activators = [
            ActivatorServer(activator, service.port, service.host)
            for activator, service in zip(self.scaler.activators(), platform.services, strict=True)
        ]
        self.issuer = issuer
        self.token_files = TokenFiles(issuer.issuer, list(platform.projections))
        audience = broker_audience(template)
        self.broker_url = platform.url(BROKER)

        def ping_token(ping: str) -> str:
            return issuer.issuer.token(ping_account(ping), audience)

        send = http_sender(self.broker_url, ping_token)
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)
        # Models loading and unloading, told as they happen (from before any child starts).
        self.echo = LogEcho(state_dir / "logs", lambda line: console.print(line, markup=False))
        # The broker process checks senders and delivers as each trigger with the issuer's key.
        write_json(
            platform.broker_config,
            broker_config(
                platform.triggers,
                issuer_url=issuer.url,
                issuer_key=state_dir / "issuer" / "key.jwk",
                namespace=template.namespace,
                audience=audience,
                trust_file=platform.trust_file,
            ),
        )
        self.scheduler = Scheduler(template.namespace, template.eventing.pings, send)
        self.processes = platform.processes
        self.endpoints_json = state_dir / "endpoints.json"
        self.processes_json = state_dir / "processes.json"

    def write_pids(self) -> None:
        """processes.json: every child's current pid and URL, for tools (rewritten on each
        restart and as infer replicas come and go)."""
        children = self.supervisor.children
        pids = {c.spec.name: c.process.pid for c in children}
        urls = {c.spec.name: c.spec.url for c in children}
        write_json(self.processes_json, {"pid": os.getpid(), "children": pids, "urls": urls})

    def start(self, startup_timeout: float) -> None:
        # Children are forked before this process starts any thread (fork + threads can leave
        # a child holding a lock nobody will release); the issuer's socket already listens, so
        # an early request waits in its backlog. Token files are written first: a child reads
        # its own when it first sends.
        self.token_files.write_all()
        children = [self.supervisor.start(spec) for spec in self.processes]
        self.write_pids()
        self.issuer.start()
        self.token_files.start()
        for activator in self.activators:
            activator.start()
        for child in children:
            self.supervisor.wait_healthy(child, startup_timeout)
        # Infer replicas are forked from here on, by this (the main) thread only.
        self.scaler.start()
        self.write_pids()
        self.scheduler.start()

    def stop(self) -> None:
        started = time.monotonic()
        self.scheduler.stop()
        self.scaler.stop()
        # The broker last: stopping functions deliver what they owe to it.
        self.supervisor.stop(last=(BROKER,))
        for activator in self.activators:
            activator.stop()
        self.token_files.stop()
        self.issuer.stop()
        # Stale URLs would mislead tools: the files exist exactly while the platform runs.
        self.endpoints_json.unlink(missing_ok=True)
        self.processes_json.unlink(missing_ok=True)
        console.print(f"stopped in {time.monotonic() - started:.1f}s", markup=False)


def _wait_routable(route: str, timeout_s: float) -> None:
    """Up means routable: the router sees every tier healthy (the route function's view of the
    shared tier state). Its prober may have tried the infer functions before they listened
    (under load they start slowly) and marked them unhealthy; its next round marks them
    healthy, and until then every request would be 503."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            answer = requests.get(f"{route}/tiers", timeout=5)
            clusters = answer.json()["clusters"]
            if all(m["healthy"] for c in clusters for m in c["models"].values()):
                return
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass  # not answering yet
        time.sleep(0.25)
    console.print(
        f"the router does not see every tier healthy after {timeout_s:.0f}s (GET {route}/tiers)",
        style="yellow",
        markup=False,
    )


def _watch(running: _Running) -> NoReturn:
    """Block until a signal (raised as _Stop). A child that dies is restarted as Kubernetes
    restarts a crashed container: at once the first time, then with its own growing back-off
    (CrashLoopBackOff); the others keep serving, and the platform never stops by itself. Each
    round the scaler starts and retires infer replicas (at once when an activator wakes it)."""
    supervisor = running.supervisor
    restarts = running.restarts
    scaler = running.scaler
    while True:
        scaler.wake.wait(TICK_S)
        scaler.wake.clear()
        running.echo.poll()
        for dead in supervisor.dead(waiting=restarts.waiting):
            restart = restarts.crashed(dead)
            wait = restart.due - time.monotonic()
            when = "now" if wait <= 0 else f"in {wait:.0f}s (back-off)"
            console.print(
                f"{dead.spec.name} exited with status {dead.process.returncode} "
                f"(crash {restart.crashes} in a row); restarting {when}. Its last log lines "
                f"({dead.log_path}):\n{dead.tail()}",
                style="red",
                markup=False,
            )
        for restart in restarts.due():
            child = supervisor.restart(restart.child)
            running.write_pids()
            console.print(f"restarted {child.spec.name} (pid {child.process.pid})", markup=False)
        before = {c.process.pid for c in supervisor.children}
        scaler.tick()
        if before != {c.process.pid for c in supervisor.children}:
            running.write_pids()


def _endpoints(
    platform: LocalPlatform, running: _Running, port: int, state_dir: Path, host: str
) -> dict[str, Any]:
    ingress = f"http://{host}:{port}"
    return {
        "ingress": ingress,
        "admin": platform.url(ADMIN),
        # The ops console (ledger_fn/console), served with the admin API; sign in with the token.
        "console": platform.url(ADMIN) + "/console",
        "broker": running.broker_url,
        "issuer": running.issuer.url,
        "route": platform.url(ROUTE),
        "processes": {p.name: p.url for p in platform.processes},
        # The network-events endpoint (CAMARA, 3GPP) is served by the ingress.
        "events": ingress + "/events",
        # Applications at that site connect here (same keys, same API; the home ledger).
        "site_ingresses": {platform.site: platform.site_ingress.url}
        if platform.site and platform.site_ingress
        else {},
        "infer": dict(platform.infer),
        "admin_token_file": str(token_file(state_dir).resolve()),
    }


def _summary(
    template: Template,
    platform: LocalPlatform,
    running: _Running,
    port: int,
    demo: Demo,
    source: TokenSource,
    state_dir: Path,
    host: str,
) -> None:
    table = Table(title=f"tollgate up: {template.metadata.name}", title_justify="left")
    for column in ("process", "url", "pid"):
        table.add_column(column, no_wrap=True)
    table.add_row("issuer", running.issuer.url, "(this process)")
    for child in running.supervisor.children:
        table.add_row(child.spec.name, child.spec.url, str(child.process.pid))
    console.print(table)
    services = Table(
        title="infer services: replicas scale on requests in flight, as Knative's autoscaler does",
        title_justify="left",
    )
    for column in ("service", "url (activator)", "replicas", "per replica"):
        services.add_column(column, no_wrap=True)
    for service in platform.services:
        scaling = service.scaling
        services.add_row(
            f"infer-{service.tier}",
            service.url,
            f"{scaling.min_scale}..{scaling.max_scale}",
            f"{scaling.concurrency} at once",
        )
    console.print(services)
    console.print(f"Logs: {running.supervisor.log_dir}/<process>.log", markup=False)
    rtt = ", ".join(f"{t} +{v.emulated_rtt_ms} ms" for t, v in template.local.tiers.items())
    console.print(f"Tiers (emulated RTT): {rtt}; model {template.local.model} on CPU everywhere.")
    for name, why in platform.unserved.items():
        served_name = template.model(name).served_name
        console.print(f"Not served locally: {served_name} ({name}): {why}.", markup=False)
    # Secrets are never printed (logs keep what is printed): only where to read them.
    admin_file = token_file(state_dir)
    if source == "environment":
        console.print("Admin token: $TOLLGATE_ADMIN_TOKEN (from the environment)")
    else:
        console.print(f"Admin token: {source}, in {admin_file}", markup=False)
    key_file = state_dir / KEY_FILE
    base = f"http://{host}:{port}/v1"
    model = template.model(template.local.model).served_name
    what = "created" if demo.created else "kept from the last run"
    console.print(f"\nDemo account [bold]{demo.account}[/] ({what}), API key in {key_file}\n")
    console.print("curl:", style="bold")
    console.print(
        f'curl -s {base}/chat/completions -H "Authorization: Bearer $(cat {key_file})" '
        f'-H \'Content-Type: application/json\' -d \'{{"model": "{model}", '
        f'"messages": [{{"role": "user", "content": "Say hello"}}], "max_tokens": 32}}\' -i',
        markup=False,
    )
    site = platform.site_ingress
    if site is not None:
        console.print(
            f"\nSite ingress of {platform.site} (applications there connect to it; same key, "
            "charged on the same ledger, routed from that site):",
            style="bold",
            markup=False,
        )
        console.print(
            f'curl -s {site.url}/v1/chat/completions -H "Authorization: Bearer $(cat {key_file})" '
            f'-H \'Content-Type: application/json\' -d \'{{"model": "{model}", '
            f'"messages": [{{"role": "user", "content": "Say hello"}}], "max_tokens": 32}}\' -i',
            markup=False,
        )
    console.print("\nPython (openai):", style="bold")
    console.print(
        "from pathlib import Path\nfrom openai import OpenAI\n"
        f'key = Path("{key_file}").read_text().strip()\n'
        f'client = OpenAI(base_url="{base}", api_key=key)\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{model}", max_tokens=32,\n'
        '    messages=[{"role": "user", "content": "Say hello"}],\n'
        ")\n"
        "print(reply.choices[0].message.content)",
        markup=False,
    )
    # The token as the shell should read it, never the secret itself: the variable, or the file.
    bearer = (
        '"Authorization: Bearer $TOLLGATE_ADMIN_TOKEN"'
        if source == "environment"
        else f'"Authorization: Bearer $(cat {admin_file})"'
    )
    console.print(
        f"\nBalance: curl -s -H {bearer} {platform.url(ADMIN)}/accounts/{demo.account}/balance",
        markup=False,
    )
    console.print(
        f"Ops console: {platform.url(ADMIN)}/console (sign in with the admin token)",
        markup=False,
    )
    console.print(
        f"Endpoints for tools: {state_dir / 'endpoints.json'}, process ids: "
        f"{state_dir / 'processes.json'}. Ctrl-C stops."
    )
