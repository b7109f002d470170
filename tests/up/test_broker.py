"""The local broker over real HTTP: Knative Broker/Trigger semantics, durability, dedupe, and
who may send what (Knative's OIDC sender identity and EventPolicies, with real tokens)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from functions.auth.oidc import Discovery, TokenVerifier
from functions.auth.senders import Senders
from functions.cloudevent import make_event, parse_http, to_binary, to_structured
from infra.local.broker import Broker, BrokerServer, BrokerTrigger, DeliveryPolicy
from infra.local.broker_faults import DeliveryFaults
from infra.local.broker_queue import BrokerQueue
from infra.template.catalog import PING_EVENT_TYPE
from tests.trust import NAMESPACE, TestIssuer, sub
from tests.up.subscriber import Answer, Subscriber, running, wait_until

BROKER = "eventing.knative.dev/broker/tollgate/default"
SUBSCRIBER = "serving.knative.dev/service/tollgate/subscriber"
SENDER = "producer"  # may send anything but T3 to the broker
REPLIER = "one-oidc-eventing.knative.dev-trigger"  # trigger "one" may publish its replies

T1 = "io.tollgate.test.one.v1"
T2 = "io.tollgate.test.two.v1"
T3 = "io.tollgate.test.three.v1"  # no policy lets the tests' producer send it
FAST = DeliveryPolicy(retry=3, backoff_policy="exponential", backoff_delay_s=0.05, timeout_s=5)


class TestBrokerServer(BrokerServer):
    """The broker and the bearer its tests' producer presents."""

    __test__ = False
    bearer: dict[str, str]


StartBroker = Callable[[Sequence[BrokerTrigger]], TestBrokerServer]


def broker_senders(issuer: TestIssuer) -> Senders:
    anything_but_t3 = ({"type": T1}, {"type": T2}, {"type": PING_EVENT_TYPE})
    rules = {SENDER: anything_but_t3, REPLIER: ({"type": T2},)}  # trigger "one" replies T2
    return issuer.senders(BROKER, rules)


def new_broker(
    queue: BrokerQueue,
    triggers: Sequence[BrokerTrigger],
    issuer: TestIssuer,
    workers: int = 8,
    faults: DeliveryFaults | None = None,
) -> Broker:
    named = [
        t if t.account else replace(t, account=f"{t.name}-oidc-eventing.knative.dev-trigger")
        for t in triggers
    ]
    return Broker(
        queue,
        [replace(t, audience=t.audience or SUBSCRIBER) for t in named],
        senders=broker_senders(issuer),
        tokens=issuer.issuer.token,
        namespace=NAMESPACE,
        workers=workers,
        faults=faults,
    )


@pytest.fixture
def start_broker(tmp_path: Path, issuer: TestIssuer) -> Iterator[StartBroker]:
    servers: list[TestBrokerServer] = []

    def start(triggers: Sequence[BrokerTrigger]) -> TestBrokerServer:
        queue = BrokerQueue(tmp_path / "broker.db")
        server = TestBrokerServer(new_broker(queue, triggers, issuer), 0)
        server.bearer = issuer.bearer(SENDER, BROKER)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def post(broker: TestBrokerServer, type: str, *, structured: bool = False, **extra: str) -> str:
    event = make_event(type, "/tests/broker", {"n": 1})
    message = to_structured(event) if structured else to_binary(event)
    headers = {**message.headers, **broker.bearer}
    for name, value in extra.items():
        headers[f"ce-{name}"] = value
    response = requests.post(broker.url, headers=headers, data=message.body, timeout=5)
    assert response.status_code == 202, response.text
    return str(event.get_id())


def test_exact_match_filters_route_each_event_to_its_triggers(
    start_broker: StartBroker,
) -> None:
    plain, pinged = Subscriber(), Subscriber()
    with running(plain, pinged):
        broker = start_broker(
            [
                BrokerTrigger("one", {"type": T1}, plain.url, FAST),
                BrokerTrigger(
                    "two-ping", {"type": PING_EVENT_TYPE, "tollgatetype": T2}, pinged.url, FAST
                ),
            ]
        )
        first = post(broker, T1)
        second = post(broker, T1, structured=True)
        post(broker, T2)  # no trigger filters on T2 itself
        ping = post(broker, PING_EVENT_TYPE, tollgatetype=T2)
        post(broker, PING_EVENT_TYPE, tollgatetype=T1)  # extension differs: no match
        wait_until(lambda: len(plain.received) == 2 and len(pinged.received) == 1)
        assert sorted(plain.ids()) == sorted([first, second])
        assert pinged.ids() == [ping]
        # Delivered in binary mode, data intact.
        event = parse_http(pinged.received[0].headers, pinged.received[0].body)
        assert event.extensions["tollgatetype"] == T2 and event.data == {"n": 1}


def test_not_a_cloudevent_is_refused(start_broker: StartBroker) -> None:
    broker = start_broker([])
    response = requests.post(broker.url, data=b"{}", headers=broker.bearer, timeout=5)
    assert response.status_code == 400
    assert "CloudEvent" in response.json()["error"]["message"]


def test_transient_failures_are_retried_with_backoff_then_delivered(
    start_broker: StartBroker,
) -> None:
    flaky = Subscriber([Answer(503), Answer(500), Answer(429)], default=Answer(204))
    with running(flaky):
        broker = start_broker([BrokerTrigger("one", {"type": T1}, flaky.url, FAST)])
        event_id = post(broker, T1)
        wait_until(lambda: len(flaky.received) == 4)
        assert flaky.ids() == [event_id] * 4
        gaps = [b.at - a.at for a, b in zip(flaky.received, flaky.received[1:], strict=False)]
        # Exponential from 0.05 s: 0.1, 0.2, 0.4 before retries 1, 2, 3.
        for gap, backoff in zip(gaps, (0.1, 0.2, 0.4), strict=True):
            assert gap >= backoff * 0.9
        wait_until(lambda: broker.broker.queue.counts() == {})


def test_linear_backoff() -> None:
    policy = DeliveryPolicy(retry=3, backoff_policy="linear", backoff_delay_s=0.5)
    assert [policy.backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
    assert [FAST.backoff(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]


def test_a_4xx_is_not_retried_and_goes_to_the_dead_letter_sink(
    start_broker: StartBroker,
) -> None:
    refusing = Subscriber(default=Answer(422, body=b'{"error": "never"}'))
    sink = Subscriber()
    policy = DeliveryPolicy(retry=5, backoff_delay_s=0.05, dead_letter_sink=sink.url)
    with running(refusing, sink):
        broker = start_broker([BrokerTrigger("one", {"type": T1}, refusing.url, policy)])
        event_id = post(broker, T1)
        wait_until(lambda: len(sink.received) == 1)
        assert len(refusing.received) == 1
        dead = parse_http(sink.received[0].headers, sink.received[0].body)
        assert (dead.id, dead.type, dead.data) == (event_id, T1, {"n": 1})
        assert dead.extensions["knativeerrordest"] == refusing.url
        assert dead.extensions["knativeerrorcode"] == "422"
        assert base64.b64decode(dead.extensions["knativeerrordata"]) == b'{"error": "never"}'
        wait_until(lambda: broker.broker.queue.counts() == {})


def test_retries_exhausted_go_to_the_dead_letter_sink(start_broker: StartBroker) -> None:
    failing = Subscriber(default=Answer(500, body=b"boom"))
    sink = Subscriber()
    policy = DeliveryPolicy(retry=2, backoff_delay_s=0.02, dead_letter_sink=sink.url)
    with running(failing, sink):
        broker = start_broker([BrokerTrigger("one", {"type": T1}, failing.url, policy)])
        post(broker, T1)
        wait_until(lambda: len(sink.received) == 1)
        assert len(failing.received) == 3  # the first try and two retries
        dead = parse_http(sink.received[0].headers, sink.received[0].body)
        assert dead.extensions["knativeerrorcode"] == "500"
        assert base64.b64decode(dead.extensions["knativeerrordata"]) == b"boom"


def test_an_unreachable_subscriber_is_retried_then_dead_lettered(
    start_broker: StartBroker,
) -> None:
    gone = Subscriber()
    gone.close()  # bound once, now refuses connections
    sink = Subscriber()
    policy = DeliveryPolicy(retry=1, backoff_delay_s=0.02, dead_letter_sink=sink.url)
    with running(sink):
        broker = start_broker([BrokerTrigger("one", {"type": T1}, gone.url, policy)])
        post(broker, T1)
        wait_until(lambda: len(sink.received) == 1)
        dead = parse_http(sink.received[0].headers, sink.received[0].body)
        assert dead.extensions["knativeerrordest"] == gone.url
        assert "knativeerrorcode" not in dead.extensions  # there was no HTTP answer
        assert b"ConnectionError" in base64.b64decode(dead.extensions["knativeerrordata"])


def test_a_reply_event_is_published_back_and_delivered(start_broker: StartBroker) -> None:
    reply = to_binary(make_event(T2, "/tests/replier", {"answer": 42}, id="reply-1"))
    replier = Subscriber(default=Answer(200, dict(reply.headers), reply.body))
    downstream = Subscriber()
    with running(replier, downstream):
        broker = start_broker(
            [
                BrokerTrigger("one", {"type": T1}, replier.url, FAST),
                BrokerTrigger("two", {"type": T2}, downstream.url, FAST),
            ]
        )
        post(broker, T1)
        post(broker, T1)  # another command, the same reply: deduped
        wait_until(lambda: len(replier.received) == 2 and len(downstream.received) == 1)
        event = parse_http(downstream.received[0].headers, downstream.received[0].body)
        assert (event.id, event.data) == ("reply-1", {"answer": 42})


def test_a_duplicate_ingest_is_delivered_once(start_broker: StartBroker) -> None:
    subscriber = Subscriber()
    with running(subscriber):
        broker = start_broker([BrokerTrigger("one", {"type": T1}, subscriber.url, FAST)])
        event = make_event(T1, "/tests/broker", {"n": 1})
        for message in (to_binary(event), to_structured(event), to_binary(event)):
            response = requests.post(
                broker.url, headers={**message.headers, **broker.bearer}, data=message.body
            )
            assert response.status_code == 202
        other = make_event(T1, "/tests/other-source", {"n": 2}, id=event.get_id())
        headers = {**to_binary(other).headers, **broker.bearer}
        requests.post(broker.url, headers=headers, data=b'{"n": 2}', timeout=5)
        wait_until(lambda: len(subscriber.received) == 2)
        wait_until(lambda: broker.broker.queue.counts() == {})
        sources = sorted(r.headers["ce-source"] for r in subscriber.received)
        assert sources == ["/tests/broker", "/tests/other-source"]


def test_what_was_queued_is_delivered_after_a_restart(start_broker: StartBroker) -> None:
    subscriber = Subscriber(default=Answer(503))
    slow = DeliveryPolicy(retry=10, backoff_delay_s=0.2, timeout_s=5)
    with running(subscriber):
        first = start_broker([BrokerTrigger("one", {"type": T1}, subscriber.url, slow)])
        event_id = post(first, T1)
        wait_until(lambda: len(subscriber.received) == 1)
        first.stop()
        subscriber.default = Answer(200)
        # A new process would pick new ports: deliveries follow the trigger's name, not its URL.
        second = start_broker([BrokerTrigger("one", {"type": T1}, subscriber.url, slow)])
        wait_until(lambda: len(subscriber.received) == 2)
        assert subscriber.ids() == [event_id, event_id]
        wait_until(lambda: second.broker.queue.counts() == {})


def test_queue_survives_reopening_and_dedupes_across_restarts(tmp_path: Path) -> None:
    queue = BrokerQueue(tmp_path / "q.db")
    assert queue.add("/s", "1", b"{}", ["a", "b"], now=1.0)
    queue.close()
    reopened = BrokerQueue(tmp_path / "q.db")
    assert not reopened.add("/s", "1", b"{}", ["a", "b"], now=2.0)
    assert sorted(d.trigger for d in reopened.due(5.0, 10, ())) == ["a", "b"]
    reopened.close()


def test_deliveries_run_concurrently_within_the_worker_bound(
    tmp_path: Path, issuer: TestIssuer
) -> None:
    slow = Subscriber(delay_s=0.1)
    with running(slow):
        broker = new_broker(
            BrokerQueue(tmp_path / "broker.db"),
            [BrokerTrigger("one", {"type": T1}, slow.url, FAST)],
            issuer,
            workers=4,
        )
        broker.start()
        try:
            for n in range(20):
                broker.publish(make_event(T1, "/tests/broker", {"n": n}))
            wait_until(lambda: len(slow.received) == 20)
            wait_until(lambda: broker.queue.counts() == {})
        finally:
            broker.stop()
    assert len(set(slow.ids())) == 20
    assert 2 <= slow.most_concurrent <= 4


def test_who_may_send_what_is_the_event_policys(
    start_broker: StartBroker, issuer: TestIssuer
) -> None:
    subscriber = Subscriber()
    with running(subscriber):
        broker = start_broker([BrokerTrigger("one", {"type": T1}, subscriber.url, FAST)])
        event = make_event(T1, "/tests/broker", {"n": 1})
        message = to_binary(event)

        def send(headers: dict[str, str], type_: str = T1) -> int:
            sent = {**message.headers, "ce-type": type_, **headers}
            return requests.post(broker.url, headers=sent, data=message.body, timeout=5).status_code

        expired = issuer.token(SENDER, BROKER, ttl_s=-60)
        assert send({}) == 401
        assert send({"Authorization": "Bearer not-a-token"}) == 401
        assert send({"Authorization": f"Bearer {expired}"}) == 401
        assert send(issuer.bearer(SENDER, SUBSCRIBER)) == 401  # another audience
        assert send(issuer.bearer("mallory", BROKER)) == 403  # no policy names mallory
        assert send(broker.bearer, T3) == 403  # the producer may not send T3
        assert broker.broker.queue.counts() == {}  # nothing refused was queued
        assert send(broker.bearer) == 202
        wait_until(lambda: len(subscriber.received) == 1)


def test_a_delivery_carries_its_triggers_identity_for_the_subscriber(
    start_broker: StartBroker, issuer: TestIssuer
) -> None:
    subscriber = Subscriber()
    with running(subscriber):
        broker = start_broker([BrokerTrigger("one", {"type": T1}, subscriber.url, FAST)])
        post(broker, T1)
        wait_until(lambda: len(subscriber.received) == 1)
        bearer = subscriber.received[0].headers["authorization"].removeprefix("Bearer ")
        check = TokenVerifier(Discovery(issuer.url), SUBSCRIBER)
        assert check.verify(bearer).subject == sub("one-oidc-eventing.knative.dev-trigger")


def test_a_reply_the_policy_refuses_fails_the_delivery_to_its_dead_letter_sink(
    start_broker: StartBroker,
) -> None:
    reply = make_event("forbidden.reply.v1", "/sub", {"x": 1}, id="r-9")
    answer = Answer(200, dict(to_binary(reply).headers), to_binary(reply).body)
    subscriber, dead = Subscriber(default=answer), Subscriber()
    policy = replace(FAST, dead_letter_sink="", retry=0)
    with running(subscriber, dead):
        policy = replace(policy, dead_letter_sink=dead.url)
        broker = start_broker([BrokerTrigger("one", {"type": T1}, subscriber.url, policy)])
        post(broker, T1)
        wait_until(lambda: len(dead.received) == 1)
        assert dead.received[0].headers["ce-knativeerrorcode"] == "403"
