"""``tollgate up``: the whole platform from template.yaml on one machine.

The broker (Knative Broker/Trigger semantics) and the ping scheduler run in this process; every
function runs as ``tollgate serve <function>`` in a child process, exactly as in its container,
with its log under ``<state-dir>/logs/``. State (the sqlite store, the broker queue, the admin
token, the demo key) lives in the state dir, so a restart keeps every balance and every event.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click
import requests
from rich.console import Console
from rich.table import Table

from functions.auth import keys
from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.senders import Senders
from infra.local.broker import Broker, BrokerServer
from infra.local.broker_queue import BrokerQueue
from infra.local.demo import KEY_FILE, Demo, admin_token, ensure_demo, token_file
from infra.local.issuer import Issuer, IssuerServer, TokenFiles
from infra.local.platform import ADMIN, ROUTE, LocalPlatform, free_port, plan, write_json
from infra.local.scheduler import Scheduler, http_sender
from infra.local.supervisor import ChildFailed, Supervisor
from infra.template.load import load_template
from infra.template.policies import broker_audience, ping_account
from infra.template.problems import TemplateError
from infra.template.schema import Template

WATCH_EVERY_S = 0.5
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
def up(port: int, state_dir: Path, template_path: Path, host: str, startup_timeout: float) -> None:
    """Run the whole platform locally: issuer, broker, ledger, route, ingress, an infer per tier."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # One access-log line per event would bury what matters (retries, dead letters).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        template = load_template(template_path)
    except (OSError, TemplateError) as exc:
        raise click.ClickException(str(exc)) from exc
    state_dir.mkdir(parents=True, exist_ok=True)
    token, generated = admin_token(state_dir)
    broker_port = free_port(host)
    issuer = IssuerServer(Issuer(template.namespace, state_dir / "issuer" / "key.jwk"), host)
    platform = plan(
        template,
        template_path,
        state_dir,
        ingress_port=port,
        broker_url=f"http://{host}:{broker_port}",
        issuer_url=issuer.url,
        admin_token=token,
        host=host,
    )
    write_json(platform.endpoints_file, platform.endpoints)
    write_json(platform.trust_file, platform.trust.to_json())
    keys.ensure(platform.keys_dir)
    running = _Running(template, platform, state_dir, broker_port, issuer)
    status = 0
    try:
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        running.start(startup_timeout)
        demo = ensure_demo(platform.url(ADMIN), token, state_dir)
        write_json(running.endpoints_json, _endpoints(platform, running, port, state_dir, host))
        _summary(template, platform, running, port, demo, generated, state_dir, host)
        status = _watch(running.supervisor)
    except _Stop as stop:
        console.print(f"\n[bold]{stop}[/]: stopping…")
    except (ChildFailed, requests.RequestException) as exc:
        console.print(str(exc), style="red", markup=False)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        running.stop()
        console.print("stopped.")
    sys.exit(status)


class _Running:
    """What ``tollgate up`` runs: the issuer, the function processes, the broker and the ping
    scheduler."""

    def __init__(
        self,
        template: Template,
        platform: LocalPlatform,
        state_dir: Path,
        broker_port: int,
        issuer: IssuerServer,
    ) -> None:
        # Children see none of this process's secrets but those the plan gives each of them.
        base_env = {k: v for k, v in os.environ.items() if k not in platform.secrets}
        self.supervisor = Supervisor(state_dir / "logs", base_env)
        self.issuer = issuer
        self.token_files = TokenFiles(issuer.issuer, list(platform.projections))
        audience = broker_audience(template)
        senders = Senders(
            TokenVerifier(Discovery(issuer.url), audience), platform.trust.policy(audience)
        )
        broker = Broker(
            BrokerQueue(state_dir / "broker.db"),
            platform.triggers,
            senders=senders,
            tokens=issuer.issuer.token,
            namespace=template.namespace,
        )
        host = platform.processes[0].host
        self.broker = BrokerServer(broker, broker_port, host)

        def ping_token(ping: str) -> str:
            return issuer.issuer.token(ping_account(ping), audience)

        send = http_sender(self.broker.url, ping_token)
        self.scheduler = Scheduler(template.namespace, template.eventing.pings, send)
        self.processes = platform.processes
        self.endpoints_json = state_dir / "endpoints.json"

    def start(self, startup_timeout: float) -> None:
        # Children are forked before this process starts any thread (fork + threads can leave
        # a child holding a lock nobody will release); the broker's and the issuer's sockets
        # already listen, so an early request waits in their backlog. Token files are written
        # first: a child reads its own when it first sends.
        self.token_files.write_all()
        children = [self.supervisor.start(spec) for spec in self.processes]
        self.issuer.start()
        self.token_files.start()
        self.broker.start()
        for child in children:
            self.supervisor.wait_healthy(child, startup_timeout)
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.supervisor.stop()
        self.broker.stop()
        self.token_files.stop()
        self.issuer.stop()
        # Stale URLs would mislead tools: the file exists exactly while the platform runs.
        self.endpoints_json.unlink(missing_ok=True)


CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_S = 60.0


def _watch(supervisor: Supervisor) -> int:
    """Block until a signal (raised as _Stop). A child that dies is restarted, as Knative
    restarts a crashed container; one that keeps dying (a crash loop) stops everything (1)."""
    restarts: list[float] = []
    while True:
        time.sleep(WATCH_EVERY_S)
        dead = supervisor.dead()
        if dead is None:
            continue
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < CRASH_LOOP_WINDOW_S] + [now]
        console.print(
            f"{dead.spec.name} exited with status {dead.process.returncode}; its last log "
            f"lines ({dead.log_path}):\n{dead.tail()}",
            style="red",
            markup=False,
        )
        if len(restarts) > CRASH_LOOP_RESTARTS:
            console.print(f"{len(restarts)} restarts within {CRASH_LOOP_WINDOW_S:.0f}s: stopping")
            return 1
        supervisor.restart(dead)
        console.print(f"restarted {dead.spec.name}")


def _endpoints(
    platform: LocalPlatform, running: _Running, port: int, state_dir: Path, host: str
) -> dict[str, Any]:
    ingress = f"http://{host}:{port}"
    return {
        "ingress": ingress,
        "admin": platform.url(ADMIN),
        "broker": running.broker.url,
        "issuer": running.issuer.url,
        "route": platform.url(ROUTE),
        "processes": {p.name: p.url for p in platform.processes},
        # The network-events endpoint (CAMARA, 3GPP) is served by the ingress.
        "events": ingress + "/events",
        "infer": dict(platform.infer),
        "admin_token_file": str(token_file(state_dir).resolve()),
    }


def _summary(
    template: Template,
    platform: LocalPlatform,
    running: _Running,
    port: int,
    demo: Demo,
    generated: bool,
    state_dir: Path,
    host: str,
) -> None:
    table = Table(title=f"tollgate up: {template.metadata.name}", title_justify="left")
    for column in ("process", "url", "pid"):
        table.add_column(column, no_wrap=True)
    table.add_row("issuer", running.issuer.url, "(this process)")
    table.add_row("broker", running.broker.url, "(this process)")
    for child in running.supervisor.children:
        table.add_row(child.spec.name, child.spec.url, str(child.process.pid))
    console.print(table)
    console.print(f"Logs: {running.supervisor.log_dir}/<process>.log", markup=False)
    rtt = ", ".join(f"{t} +{v.emulated_rtt_ms} ms" for t, v in template.local.tiers.items())
    console.print(f"Tiers (emulated RTT): {rtt}; model {template.local.model} on CPU everywhere.")
    # Secrets are never printed (logs keep what is printed): only where to read them.
    admin_file = token_file(state_dir)
    if generated:
        console.print(f"Admin token: generated, in {admin_file}")
    else:
        console.print(f"Admin token: $TOLLGATE_ADMIN_TOKEN (also in {admin_file})")
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
    console.print(
        f'\nBalance: curl -s -H "Authorization: Bearer $(cat {admin_file})" '
        f"{platform.url(ADMIN)}/accounts/{demo.account}/balance",
        markup=False,
    )
    console.print(f"Endpoints for tools: {state_dir / 'endpoints.json'}. Ctrl-C stops.")
