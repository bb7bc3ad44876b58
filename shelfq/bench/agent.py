"""``shelfq bench agent``: request-to-slate latency at a fixed offered load, and throughput at
saturation, through the real broker, against a same-run echo (produce -> consume round trip
with no scoring).

A catalog of 1,000 items and an (untrained) GRU model (SlateQ by default) are published first; a ``shelfq agent``
process then answers requests that list no candidates, so each one scores the whole catalog
for a slate of 10. Latency runs from the request's produce time (its event time) to its slate
being consumed by the benchmark. The echo is a plain confluent-kafka consume-and-produce process
timed the same way: what Kafka alone costs for the round trip.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable

import numpy as np
from confluent_kafka import Consumer

from shelfq.contracts.events import Item, Request, encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.models import ModelHeaders
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import topic_specs
from shelfq.learner.artifact import model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.network import QNetwork
from shelfq.bench.join import _quantile
from shelfq.ops.ports import free_port

CATALOG = 1000
SLATE = 10
ECHO_IN, ECHO_OUT = "bench-echo-in", "bench-echo-out"  # the echo has topics of its own


def run_bench(settings: Settings, rate: float, seconds: float, burst: int,
              report: Callable[[str], None] = print, objective: str = "slateq") -> dict:
    from shelfq.ops.topic_admin import delete_topics, ensure_topics

    prefix = f"bench-{uuid.uuid4().hex[:6]}."
    bench = Settings.from_env(topic_prefix=prefix, partitions=settings.partitions,
                              bootstrap_servers=settings.bootstrap_servers if settings.external_cluster else None)
    ensure_topics(bench)
    procs: list[subprocess.Popen] = []
    try:
        for name in (ECHO_IN, ECHO_OUT):
            _create(bench, bench.topic(name))
        _load_catalog_and_model(bench, objective)
        env = {**os.environ, "SHELFQ_PARTITIONS": str(bench.partitions)}
        report(f"kafka round trip: an echo process, {rate:g} requests/s for {seconds:g}s ...")
        procs.append(subprocess.Popen([sys.executable, "-m", "shelfq.bench.agent", "echo", prefix], env=env))
        _until_answered(bench, ECHO_IN, ECHO_OUT, "echo-ready")
        _offer(bench, ECHO_IN, ECHO_OUT, 100, 2, "echo-warm")
        echo = _offer(bench, ECHO_IN, ECHO_OUT, rate, seconds, "echo")
        procs.pop().terminate()
        report(f"  p50 {echo['p50']:.2f} ms, p99 {echo['p99']:.2f} ms")

        port = free_port()
        # A long deadline: the saturation burst queues requests that must be answered, not skipped.
        agent_env = {**env, "SHELFQ_AGENT_DEADLINE_S": "3600"}
        procs.append(subprocess.Popen([sys.executable, "-m", "shelfq", "agent", "--topic-prefix", prefix,
                                       "--metrics-port", str(port), "--log-level", "warning"], env=agent_env))
        _wait(lambda: _metric(port, "shelfq_agent_model_version") >= 1
              and _metric(port, 'shelfq_agent_cache_entries{cache="items"}') >= CATALOG, "the agent to load the model", 120)
        _offer(bench, "requests", "slates", 200, 2, "warm")  # first batches allocate
        report(f"agent: {rate:g} requests/s offered for {seconds:g}s ({CATALOG} candidates, slate of {SLATE}) ...")
        before = _buckets(port, "shelfq_agent_latency_seconds")
        offered = _offer(bench, "requests", "slates", rate, seconds, "load")
        inside = [(bound, count - dict(before).get(bound, 0.0)) for bound, count in _buckets(port, "shelfq_agent_latency_seconds")]
        report(f"  inside the agent (request time to slate produced): p50 {_quantile(0.5, inside) * 1000:.2f} ms, "
               f"p99 {_quantile(0.99, inside) * 1000:.2f} ms")
        report(f"  {offered['answered_per_s']:,.0f} answered/s, p50 {offered['p50']:.2f} ms, p99 {offered['p99']:.2f} ms")
        report(f"agent at saturation: a burst of {burst} requests ...")
        saturated = _offer(bench, "requests", "slates", None, burst, "burst")
        report(f"  {saturated['answered_per_s']:,.0f} requests/s")
        batch = _histogram_mean(port, "shelfq_agent_batch_size")
        report(f"  mean batch {batch:.1f} requests, {_histogram_mean(port, 'shelfq_agent_batch_seconds') * 1000:.2f} ms each")
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        delete_topics(bench, [s.name for s in topic_specs(bench).values()] + [bench.topic(ECHO_IN), bench.topic(ECHO_OUT)])
    return {
        "requests_per_s": round(offered["answered_per_s"], 1),
        "offered_requests_per_s": rate,
        "latency_p50_ms": round(offered["p50"], 2),
        "latency_p99_ms": round(offered["p99"], 2),
        "max_requests_per_s": round(saturated["answered_per_s"], 1),
        "kafka_rtt_p50_ms": round(echo["p50"], 2),
        "kafka_rtt_p99_ms": round(echo["p99"], 2),
        "p99_over_kafka_rtt_p99": round(offered["p99"] / echo["p99"], 2) if echo["p99"] else None,
        "agent_p50_ms": round(_quantile(0.5, inside) * 1000, 2),
        "agent_p99_ms": round(_quantile(0.99, inside) * 1000, 2),
        "mean_batch_size": round(batch, 1),
        "candidates": CATALOG,
        "slate_size": SLATE,
        "objective": objective,
    }


def catalog_items() -> list[Item]:
    """The benchmark's catalog: CATALOG items in 20 categories."""
    now = time.time()
    return [Item(item_id=f"sku-{i}", title=f"item {i}", category=f"c{i % 20}", ts=now) for i in range(CATALOG)]


def bench_model(objective: str) -> tuple[LearnerConfig, bytes, ModelHeaders]:
    """The served model: an untrained GRU network of ``objective``, as version 1's message."""
    config = LearnerConfig(objective=objective)
    value, headers = model_message(QNetwork(config), config, version=1)
    return config, value, headers


def bench_request(request_id: str, i: int, ts: float) -> Request:
    """The ``i``-th request the load sends: no candidates (the whole catalog), a slate of SLATE."""
    return Request(request_id=request_id, user_id=f"u-{i % 5000}", ts=ts, slate_size=SLATE)


def _load_catalog_and_model(settings: Settings, objective: str) -> None:
    producer = ReliableProducer(settings, component=None, **{"message.max.bytes": settings.model_max_bytes})
    for item in catalog_items():
        producer.produce(settings.topic("items"), encode(item), item.item_id)
    config, value, headers = bench_model(objective)
    producer.produce(settings.topic("models"), value, config.policy, headers=headers.to_headers())
    producer.flush()


def _until_answered(settings: Settings, asks: str, answers: str, tag: str, timeout: float = 120.0) -> None:
    """Send one request at a time until one is answered: the echo reads from the end of its
    topic, so whatever is sent before it has joined its group is never answered."""
    deadline = time.monotonic() + timeout
    for attempt in itertools.count():
        if _offer(settings, asks, answers, None, 1, f"{tag}-{attempt}", wait_s=2.0)["answered"]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered on {answers} within {timeout:g}s")


def _offer(settings: Settings, asks: str, answers: str, rate: float | None, amount: float, tag: str,
           wait_s: float = 120.0) -> dict:
    """Send requests to ``asks`` (``rate`` per second for ``amount`` seconds, or ``amount`` at
    once when ``rate`` is None) and time each one's answer on ``answers`` (logical names),
    waiting at most ``wait_s`` after the last send."""
    total = int(amount if rate is None else rate * amount)
    sent: dict[str, float] = {}
    got: list[float] = []
    first = last = 0.0
    consumer = Consumer(settings.confluent_config(**{"group.id": f"bench-{uuid.uuid4().hex[:6]}",
                                                     "auto.offset.reset": "latest", "fetch.wait.max.ms": 1}))
    consumer.subscribe([settings.topic(answers)])
    _wait_assigned(consumer)

    producer = ReliableProducer(settings, component=None, **{"linger.ms": 0})
    # Connected before the clock starts: a first send waits for metadata and a connection.
    producer.produce(settings.topic(asks), encode(Request(request_id=f"{tag}-warm", user_id="u", ts=time.time())), "u")
    producer.flush()

    def send() -> None:
        start = time.perf_counter()
        for i in range(total):
            if rate is not None:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            request_id = f"{tag}-{i}"
            now = time.time()
            sent[request_id] = now
            req = bench_request(request_id, i, now)
            producer.produce(settings.topic(asks), encode(req), req.user_id)
        producer.flush()

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + (amount if rate is not None else 0) + wait_s
    marker = f'"request_id":"{tag}-'.encode()
    while len(got) < total and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        value = msg.value() or b""
        at = time.time()
        start = value.find(marker)
        if start < 0:
            continue
        end = value.index(b'"', start + len('"request_id":"'))
        request_id = value[start + len('"request_id":"'):end].decode()
        if request_id in sent:
            got.append((at - sent.pop(request_id)) * 1000)
            first, last = first or at, at
    sender.join()
    consumer.close()
    span = last - first
    return {"p50": float(np.percentile(got, 50)) if got else 0.0, "p99": float(np.percentile(got, 99)) if got else 0.0,
            "answered_per_s": (len(got) - 1) / span if span > 0 else 0.0, "answered": len(got)}


def _echo(prefix: str) -> None:
    """The baseline: copy every request to the echo topic, nothing else."""
    settings = Settings.from_env(topic_prefix=prefix)
    consumer = Consumer(settings.confluent_config(**{"group.id": f"{prefix}echo", "auto.offset.reset": "latest",
                                                     "fetch.wait.max.ms": 1}))
    consumer.subscribe([settings.topic(ECHO_IN)])
    producer = ReliableProducer(settings, component=None, **{"linger.ms": 0})
    while True:
        msg = consumer.poll(0.1)
        if msg is not None and msg.error() is None:
            producer.produce(settings.topic(ECHO_OUT), msg.value(), msg.key())
        producer.poll(0)


def _wait_assigned(consumer: Consumer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.1)


def _wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _metric(port: int, series: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    found = re.findall(rf"^{re.escape(series)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found[0]) if found else 0.0


def _buckets(port: int, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of a histogram, +Inf left out."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return []
    found = re.findall(rf'^{name}_bucket{{le="([0-9.e+-]+)"}} ([0-9.e+-]+)$', text, re.MULTILINE)
    return [(float(le), float(n)) for le, n in found]


def _histogram_mean(port: int, name: str) -> float:
    total, count = _metric(port, f"{name}_sum"), _metric(port, f"{name}_count")
    return total / count if count else 0.0


def _create(settings: Settings, name: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.confluent_config())
    for future in admin.create_topics([NewTopic(name, settings.partitions, settings.replication_factor)]).values():
        future.result(30)


if __name__ == "__main__" and sys.argv[1:2] == ["echo"]:
    _echo(sys.argv[2])
