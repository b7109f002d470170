"""What proving who sent something costs: an OIDC token checked per event, a capability signed
per attempt (the ingress) and checked per request (infer) and per metering event (the ledger),
an event policy decision. In-process, with tollgate up's own issuer serving discovery and keys
over HTTP as the API server would.

Run: `.venv/bin/python bench/trust.py` (bench/gateway.py prints the same figures in its run).
Aim (issue 10): under 0.2 ms per token and per capability check on these machines.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from events.capability import Capability, sign, verify  # noqa: E402
from functions.auth.keys import SigningKey, VerifyKeys, rotate  # noqa: E402
from functions.auth.oidc import Discovery, TokenVerifier  # noqa: E402
from functions.auth.senders import Senders  # noqa: E402
from infra.local.issuer import Issuer, IssuerServer  # noqa: E402
from infra.template.load import load_template  # noqa: E402
from infra.template.policies import broker_audience, knative_placement, sink_policies  # noqa: E402

N = 2000
AUDIENCE = "eventing.knative.dev/broker/tollgate/default"


def timed_us(n: int, step: Callable[[int], object]) -> tuple[float, float]:
    """p50 and p99 of ``step`` in microseconds."""
    samples = []
    for i in range(n):
        started = time.perf_counter()
        step(i)
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def bench_capability(hold_id: str, cluster: str, attempt: str, max_tokens: int) -> Capability:
    """A capability as the ingress mints it for the bench's model."""
    return Capability(
        hold_id=hold_id,
        account_id=hold_id.split(":", 1)[0],
        model="SmolLM2-135M-Instruct",
        cluster=cluster,
        tier=cluster.split("-", 1)[0],
        max_tokens=max_tokens,
        engine_ms=300_000,
        deadline=int(time.time()) + 600,
        attempt=attempt,
    )


def figures() -> list[tuple[str, float, float]]:
    """(what, p50 us, p99 us) of each check."""
    issuer = Issuer("tollgate")
    server = IssuerServer(issuer)
    server.start()
    try:
        verifier = TokenVerifier(Discovery(server.url), AUDIENCE)
        fresh = [issuer.mint("infer-smollm2-135m", AUDIENCE) for _ in range(N // 4)]
        verifier.verify(issuer.mint("warm", AUDIENCE))  # discovery and keys fetched once
        first = timed_us(len(fresh), lambda i: verifier.verify(fresh[i]))
        repeated = timed_us(N, lambda i: verifier.verify(fresh[0]))
        template = load_template(ROOT / "template.yaml")
        policy = sink_policies(template, knative_placement(template))[broker_audience(template)]
        senders = Senders(verifier, policy)
        sub = "system:serviceaccount:tollgate:infer-smollm2-135m"
        attributes = {"type": "io.tollgate.inference.completed.v1", "source": "/x", "id": "1"}
        decided = timed_us(N, lambda i: policy.check(sub, attributes))
        headers = {"Authorization": f"Bearer {fresh[0]}"}
        whole = timed_us(N, lambda i: senders.authorize(senders.authenticate(headers), attributes))
    finally:
        server.stop()
    keys = Path(tempfile.mkdtemp()) / "keys"
    rotate(keys)
    signing, public = SigningKey(keys), VerifyKeys(keys)

    def capability(i: int) -> Capability:
        return bench_capability(f"acme:{i}", "edge-lyon-5g-1", f"r{i}#edge-lyon-5g-1", 64)

    signed = [sign(capability(i), signing.get()) for i in range(N // 4)]
    minting = timed_us(N // 4, lambda i: sign(capability(i), signing.get()))
    checking = timed_us(
        len(signed), lambda i: verify(signed[i], public.get(), audience="edge-lyon-5g-1")
    )
    late = timed_us(
        len(signed),
        lambda i: verify(signed[i], public.get(), audience=None, check_deadline=False),
    )
    return [
        ("OIDC token, first sight (signature, claims)", *first),
        ("OIDC token, seen before (per event)", *repeated),
        ("event policy decision", *decided),
        ("sender check per event (token + policy)", *whole),
        ("capability signed (ingress, per attempt)", *minting),
        ("capability checked (infer, per request)", *checking),
        ("capability checked (settle/refund, per event)", *late),
    ]


def table(rows: list[tuple[str, float, float]]) -> Table:
    out = Table(title="what proving the sender costs, in-process (us)")
    for column in ("check", "p50", "p99"):
        out.add_column(column, justify="right" if column != "check" else "left")
    for what, p50, p99 in rows:
        out.add_row(what, f"{p50:.1f}", f"{p99:.1f}")
    return out


def main() -> None:
    console = Console()
    console.print(f"[bold]bench/trust.py[/] on {describe()}")
    console.print(table(figures()))
    console.print("aim: under 200 us per token check and per capability check")


if __name__ == "__main__":
    main()
