"""``shelfq bench join``: the join's throughput, emit latency and memory on the real broker,
against a same-run baseline (a plain confluent-kafka consume-and-produce of the same messages).

Synthetic shoppers are loaded into fresh topics first; then the baseline copies them, and then
a ``shelfq streams`` worker joins them. Throughput is input events over the time from the
worker's first consumed event to its last (read from its /metrics every 100 ms); latency is
estimated from its emit-latency histogram as Prometheus' histogram_quantile does.

``measure_join_core`` times the pure join on the same events, no Kafka and no JSON: what the
join's own work costs per input event (``shelfq bench join --core-only`` runs only that).

``JoinBenchConfig`` is what the command runs; its fields are the command's flags.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer
from confluent_kafka.cimpl import murmur2

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.events import encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import FEEDBACK, IMPRESSIONS, SLATES
from shelfq.streams.gc_tuning import worker_gc
from shelfq.streams.join import Join, JoinConfig
from shelfq.streams.synthetic import SyntheticTraffic, synthetic_traffic
from shelfq.ops.ports import free_port

INPUTS = (SLATES, IMPRESSIONS, FEEDBACK)
EVENTS_PER_REQUEST = 3.4  # slate + impression + feedback at the synthetic click rates, about
#: Flags older than the fields they set (``shelfq.cli.dataclass_flags.add_fields``).
FLAG_RENAMES = {"window_s": "window"}


@dataclass(frozen=True)
class JoinBenchConfig:
    """What ``shelfq bench join`` runs (its flags: ``FLAG_RENAMES``, the others by field name).

    >>> JoinBenchConfig(events=999)
    Traceback (most recent call last):
    ...
    shelfq.contracts.errors.ConfigError: bench join: --events must be at least 1000
    """

    events: int = 300_000
    """Input events to load."""
    window_s: float = 5.0
    """Attribution window in seconds of event time."""
    light_rate: float | None = None
    """Also offer this many input events/s (up to 10000) steadily to a fresh worker and report
    its CPU share of one core (light_cpu_share over 60 s, idle_cpu_share over 20 s before)."""
    half_load_s: float = 30.0
    """Then offer half the measured maximum steadily to a fresh worker for this long (up to 600)
    and report its emit latency (half_load_emit_latency_p50_ms, _p99_ms); 0 skips."""
    workers: int = 1
    """Then join the same events again with this many workers (up to 64) in one group
    (workers_input_events_per_s, workers_scaling: its ratio to one worker); 1: not run."""
    core_only: bool = False
    """Only time the pure join on the events (join_core_us_per_event), no Kafka: needs no broker."""

    def __post_init__(self) -> None:
        if self.events < 1000:
            raise ConfigError("bench join: --events must be at least 1000")
        if self.light_rate is not None and not 0 < self.light_rate <= 10_000:
            raise ConfigError("bench join: --light-rate must be within 0 and 10000 events/s")
        if not 1 <= self.workers <= 64:
            raise ConfigError("bench join: --workers must be within 1 and 64")
        if not 0 <= self.half_load_s <= 600:
            raise ConfigError("bench join: --half-load-s must be within 0 and 600 seconds")
        if self.core_only and self.light_rate is not None:
            raise ConfigError("bench join: --light-rate needs the broker; it does not go with --core-only")


@dataclass
class WorkerRun:
    seconds: float
    transitions: int
    latency_p50_ms: float
    latency_p99_ms: float
    rss_mb: float


def run_bench(settings: Settings, events: int, window_s: float = 5.0, report=print, half_load_s: float = 30.0,
              workers: int = 1) -> dict:
    """The benchmark; with ``workers`` > 1, then the same events in fresh topics again, joined
    by that many workers in one group (``workers_input_events_per_s``, and ``workers_scaling``:
    its ratio to the one worker's rate in the same measurement)."""
    if workers < 1:
        raise ValueError("bench join: workers must be at least 1")
    bench = _fresh_topics(settings)
    prefix = bench.topic_prefix
    try:
        t0 = time.time() - 20 * window_s
        traffic = bench_traffic(events, window_s, t0)
        n = len(traffic.events)
        report("the pure join on the same events, no Kafka ...")
        core = measure_join_core(traffic, settings.partitions, window_s, now=t0 + 20 * window_s)
        report(f"  {core['join_core_us_per_event']:.1f} µs per input event")
        report(f"loading {n} events ({len(traffic.expected) // 25} users, {len(traffic.expected) // 5} slates, "
               f"window {window_s:g}s) into {prefix}* ...")
        _load(bench, traffic)

        report("baseline: plain confluent-kafka consume-and-produce of the same messages ...")
        passthrough = _passthrough(bench, n)
        report(f"  {passthrough:,.0f} events/s")
        report("ceiling: a Faust agent that reads the same topics and does nothing ...")
        faust_noop = _faust_noop(bench, n)
        report(f"  {faust_noop:,.0f} events/s")
        report("shelfq streams worker ...")
        run = _run_worker(bench, n, len(traffic.expected), window_s)
    finally:
        _delete_topics(bench)
    scaling: dict = {}
    if workers > 1:
        group = _fresh_topics(settings)
        try:
            report(f"{workers} workers in one group, the same events in {group.topic_prefix}* ...")
            _load(group, traffic)
            many = _run_worker(group, n, len(traffic.expected), window_s, workers=workers)
        finally:
            _delete_topics(group)
        report(f"  {n / many.seconds:,.0f} events/s")
        scaling = {"workers": workers, "workers_input_events_per_s": round(n / many.seconds, 1),
                   "workers_scaling": round(run.seconds / many.seconds, 3)}
    result = {
        "input_events": n,
        "input_events_per_s": round(n / run.seconds, 1),
        "transitions_per_s": round(run.transitions / run.seconds, 1),
        "emit_latency_p50_ms": round(run.latency_p50_ms, 2),
        "emit_latency_p99_ms": round(run.latency_p99_ms, 2),
        "rss_mb": round(run.rss_mb, 1),
        "passthrough_events_per_s": round(passthrough, 1),
        "ratio": round(n / run.seconds / passthrough, 3),
        "faust_noop_events_per_s": round(faust_noop, 1),
        "ratio_to_faust_noop": round(n / run.seconds / faust_noop, 3),
        "partitions": settings.partitions,
        **scaling,
        **core,
    }
    if half_load_s > 0:  # freshness at half the worker's maximum: a worker that keeps up, not a queue
        result.update(measure_light_load(settings, round(result["input_events_per_s"] / 2, 1), seconds=half_load_s,
                                         idle_s=0.0, report=report, window_s=window_s, name="half_load"))
    result.update(measure_pending_memory())
    return result


def _fresh_topics(settings: Settings) -> Settings:
    """Settings of a fresh topic prefix, its topics created."""
    from shelfq.ops.topic_admin import ensure_topics

    bench = Settings.from_env(topic_prefix=f"bench-{uuid.uuid4().hex[:6]}.", partitions=settings.partitions,
                              bootstrap_servers=settings.bootstrap_servers if settings.external_cluster else None)
    ensure_topics(bench)
    return bench


def _load(bench: Settings, traffic: SyntheticTraffic) -> None:
    producer = ReliableProducer(bench, component=None, **{"linger.ms": 20, "batch.size": 1_000_000})
    for topic, key, event in traffic.events:
        producer.produce(bench.topic(topic), encode(event), key)
    producer.flush(120)


def _delete_topics(bench: Settings) -> None:
    from shelfq.ops.topic_admin import delete_topics

    delete_topics(bench, [bench.topic(t) for t in ("requests", "slates", "impressions", "feedback", "items", "transitions",
                                                   "user-state", "models", "dlq", "passthrough",
                                                   "streams-join-records-changelog", "streams-__assignor-__leader")])


def bench_traffic(events: int, window_s: float, t0: float) -> SyntheticTraffic:
    """About ``events`` input events of synthetic shoppers, 5 requests of 5 items each per user,
    whose event times span ~20 windows from ``t0``, so windows keep closing while they flow."""
    requests = max(1, int(events / EVENTS_PER_REQUEST))
    span = 20 * window_s
    return synthetic_traffic(users=max(1, requests // 5), requests_per_user=5, slate_size=5, t0=t0, seed=1,
                             gap_s=span / 5, tag="b")


def run_core(events: int, partitions: int, window_s: float = 5.0, report=print) -> dict:
    """``shelfq bench join --core-only``: ``measure_join_core`` alone, on the events the full
    benchmark would load (event times end now, as there)."""
    t0 = time.time() - 20 * window_s
    traffic = bench_traffic(events, window_s, t0)
    report(f"the pure join on {len(traffic.events)} events, no Kafka ...")
    result = measure_join_core(traffic, partitions, window_s, now=t0 + 20 * window_s)
    report(f"  {result['join_core_us_per_event']:.1f} µs per input event")
    return {**result, "partitions": partitions}


def measure_join_core(traffic: SyntheticTraffic, partitions: int, window_s: float, now: float,
                      batch_size: int = 1000, repeats: int = 3, join_class: type = Join) -> dict:
    """CPU time of the pure join per input event on ``traffic``'s events, no Kafka, no JSON:
    each batch of ``batch_size`` (the worker's) goes through ``Join.process_batch`` at wall
    time ``now``, then every transition it emitted is acked, as the worker does once the
    broker has them; the join settings are the worker's in ``shelfq bench join``, and each
    event goes to the partition the producer's partitioner gives its key. Measured the same
    way with ``Join.process`` event by event (``join_core_single_us_per_event``). The events
    are made before the clock starts and kept out of the garbage collector's way (gc.freeze),
    since the worker never holds them all at once; the collector runs with the worker's
    thresholds (``streams.gc_tuning``), and with CPython's defaults for
    ``join_core_default_gc_us_per_event``. CPU time, the least of ``repeats`` runs
    of a fresh join: on a shared machine other work inflates a run, never shortens it.
    ``join_class`` is for measuring another implementation of the join."""
    if repeats < 1 or batch_size < 1:
        raise ValueError("measure_join_core: repeats and batch_size must be at least 1")
    config = JoinConfig(window_s=window_s, allowed_lateness_s=1.0, idle_advance_s=1.0)
    events = [(murmur2(key.encode(), partitions), topic, event) for topic, key, event in traffic.events]
    batches = [events[i:i + batch_size] for i in range(0, len(events), batch_size)]
    result: dict = {}
    for name, batched, tuned in (("join_core_us_per_event", True, True), ("join_core_single_us_per_event", False, True),
                                 ("join_core_default_gc_us_per_event", True, False)):
        best = math.inf
        for _ in range(repeats):
            with worker_gc() if tuned else contextlib.nullcontext():
                seconds, transitions = _time_join(join_class(config), batches, now, batched)
            best = min(best, seconds)
        result[name] = round(1e6 * best / max(1, len(events)), 2)
    result["join_core_events"] = len(events)
    result["join_core_transitions"] = transitions
    return result


def _time_join(join: Join, batches: list[list], now: float, batched: bool) -> tuple[float, int]:
    gc.collect()
    gc.freeze()
    try:
        transitions = 0
        start = time.process_time()
        for batch in batches:
            if batched:
                outputs = join.process_batch(batch, now)
            else:
                outputs = [join.process(p, topic, event, now) for p, topic, event in batch]
            for out in outputs:
                for transition in out.transitions:
                    join.acked(transition)
                transitions += len(out.transitions)
        return time.process_time() - start, transitions
    finally:
        gc.unfreeze()


def _passthrough(settings: Settings, n: int) -> float:
    consumer = Consumer(settings.confluent_config(**{
        "group.id": f"passthrough-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    consumer.subscribe([settings.topic(t) for t in INPUTS])
    producer = ReliableProducer(settings)
    sink = settings.topic("passthrough")
    _create(settings, sink)
    seen, start = 0, None
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 1.0):
            if msg.error() is not None:
                continue
            start = start or time.perf_counter()
            producer.produce(sink, msg.value(), msg.key())
            seen += 1
    producer.flush()
    consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return seen / elapsed if elapsed > 0 else 0.0


def _faust_noop(settings: Settings, n: int) -> float:
    env = {**os.environ, "SHELFQ_PARTITIONS": str(settings.partitions)}
    if settings.external_cluster:
        env["SHELFQ_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers
    out = subprocess.run([sys.executable, "-m", "shelfq.bench.faust_noop", settings.topic_prefix, str(n)],
                         env=env, capture_output=True, text=True, timeout=600).stdout
    found = re.search(r"events_per_s=([0-9.]+)", out)
    if found is None:
        raise RuntimeError(f"the Faust no-op reader printed no rate: {out[-1000:]}")
    return float(found[1])


def _create(settings: Settings, name: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.confluent_config())
    for f in admin.create_topics([NewTopic(name, settings.partitions, settings.replication_factor)]).values():
        f.result(30)


def _run_worker(settings: Settings, n: int, expected_transitions: int, window_s: float, workers: int = 1) -> WorkerRun:
    """``workers`` workers in one group join the ``n`` events loaded. The clock starts at the
    first scrape where the group has settled (every worker owns partitions, all of them
    between them) and some event was consumed, and counts the events consumed from there: with
    several workers, the first to join reads alone until the others have joined. Latency and
    RSS are the first worker's."""
    env = {**os.environ, "SHELFQ_PARTITIONS": str(settings.partitions), "SHELFQ_JOIN_WINDOW_S": str(window_s),
           "SHELFQ_JOIN_ALLOWED_LATENESS_S": "1", "SHELFQ_JOIN_IDLE_ADVANCE_S": "1"}
    if settings.external_cluster:
        env["SHELFQ_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers
    ports = [free_port() for _ in range(workers)]
    logs, procs = [], []
    try:
        for port in ports:
            log = tempfile.NamedTemporaryFile(prefix="shelfq-bench-worker-", suffix=".log", delete=False)
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "shelfq", "streams", "--topic-prefix",
                                           settings.topic_prefix, "--metrics-port", str(port), "--max-seconds", "900"],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        start = end = None
        counted_from = 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            scraped = [_scrape(port) for port in ports]
            consumed = sum(v for m in scraped for k, v in m.items() if k.startswith("shelfq_streams_input_events_total"))
            owned = [m.get("shelfq_streams_partitions", 0) for m in scraped]
            if start is None and consumed > 0 and min(owned) > 0 and sum(owned) == settings.partitions:
                start, counted_from = time.perf_counter(), consumed
            if consumed >= n and start is not None:
                end = time.perf_counter()
                break
            for proc, log in zip(procs, logs):
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker died; its log: {log.name}")
            time.sleep(0.1)
        if start is None or end is None or n - counted_from < n / 4:
            raise RuntimeError(f"the workers did not consume the events within 10 minutes, or the group settled too "
                               f"late to measure; their logs: {', '.join(log.name for log in logs)}")
        # Let the remaining windows close on the wall clock, so latency covers every emission.
        settle = time.monotonic() + 3 * window_s + 10
        transitions = 0.0
        while time.monotonic() < settle:
            scraped = [_scrape(port) for port in ports]
            transitions = sum(m.get("shelfq_streams_transitions_total", 0.0) for m in scraped)
            if transitions >= expected_transitions:
                break
            time.sleep(0.5)
        rss = _peak_rss_mb(procs[0].pid)
        buckets = sorted((float(le), v) for k, v in scraped[0].items()
                         if (le := _label(k, "shelfq_streams_emit_latency_seconds_bucket", "le")) is not None)
        # The rate over the events counted, as if all n had been: seconds for n at that rate.
        seconds = (end - start) * n / (n - counted_from)
        return WorkerRun(seconds, int(transitions), 1000 * _quantile(0.5, buckets), 1000 * _quantile(0.99, buckets), rss)
    finally:
        for proc in procs:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a worker cleanly, or kill it after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def measure_pending_memory(items: int = 1_000_000) -> dict:
    """Memory of the pure join holding ``items`` shown items whose windows are all open, measured
    in a fresh interpreter (RSS after minus before)."""
    code = (
        "import resource, gc\n"
        "from streams.join import Join, JoinConfig\n"
        "from streams.synthetic import synthetic_traffic\n"
        f"n = {items}\n"
        "join = Join(JoinConfig(window_s=1e9))\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "gc.collect(); before = rss(); done = 0; batch = 0\n"
        "while done < n:\n"
        "    t = synthetic_traffic(users=2000, requests_per_user=5, slate_size=5, t0=1e6, seed=batch, tag=str(batch), click_p=0.2, exit_p=0.0)\n"
        "    for topic, key, e in t.events:\n"
        "        if topic != 'feedback' or e.event != 'purchase':\n"
        "            join.process(0, topic, e, now=1e6)\n"
        "    batch += 1; done = join.pending_items()\n"
        "gc.collect(); print(done, (rss() - before) / 2**20)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    pending, mb = int(out[0]), float(out[1])
    return {"pending_items": pending, "pending_items_mb": round(mb, 1),
            "mb_per_1m_pending_items": round(mb * 1_000_000 / pending, 1)}


def _scrape(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _label(series: str, name: str, label: str) -> str | None:
    if not series.startswith(name + "{"):
        return None
    m = re.search(rf'{label}="([^"]+)"', series)
    return m[1] if m and m[1] != "+Inf" else None


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """histogram_quantile over cumulative (upper bound, count) buckets, linear within a bucket."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
        lower_bound, lower_count = bound, count
    return buckets[-1][0]


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def measure_light_load(settings: Settings, rate: float, seconds: float = 60.0, idle_s: float = 20.0,
                       report=print, window_s: float | None = None, name: str = "light") -> dict:
    """The worker's CPU share (of one core, all its threads, from /proc) idle for ``idle_s``,
    then while synthetic shoppers are offered at a steady ``rate`` input events/s with event
    times of now, as a frontend would (measured over ``seconds``, after 5 s of warm-up); and
    the emit latency of that traffic (p50, p99: from the event or tick that closed an item to
    its transition acknowledged). ``window_s`` sets the join window (default: the worker's);
    the figures are named ``{name}_...``."""
    from shelfq.ops.topic_admin import delete_topics, ensure_topics
    from shelfq.contracts.topics import topic_specs

    prefix = f"bench-light-{uuid.uuid4().hex[:6]}."
    bench = Settings.from_env(topic_prefix=prefix, partitions=settings.partitions,
                              bootstrap_servers=settings.bootstrap_servers if settings.external_cluster else None)
    ensure_topics(bench)
    warmup_s = 5.0
    n = int(rate * (warmup_s + seconds)) + 1
    traffic = synthetic_traffic(users=max(1, n // 15), requests_per_user=5, slate_size=5, seed=2, tag="light")
    events = traffic.events[:n]
    port = free_port()
    env = {**os.environ, "SHELFQ_PARTITIONS": str(bench.partitions)}
    if window_s is not None:
        env.update(SHELFQ_JOIN_WINDOW_S=str(window_s), SHELFQ_JOIN_ALLOWED_LATENESS_S="1", SHELFQ_JOIN_IDLE_ADVANCE_S="1")
    if bench.external_cluster:
        env["SHELFQ_BOOTSTRAP_SERVERS"] = bench.bootstrap_servers
    log = tempfile.NamedTemporaryFile(prefix=f"shelfq-bench-{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "shelfq", "streams", "--topic-prefix", prefix,
                             "--metrics-port", str(port), "--max-seconds", str(int(idle_s + seconds + 300))],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while _scrape(port).get("shelfq_streams_partitions", 0) < bench.partitions:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not take up its partitions; its log: {log.name}")
            time.sleep(0.2)
        report(f"{name} load: the worker idle for {idle_s:g}s, then {rate:g} input events/s for {seconds:g}s ...")
        before = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(idle_s)
        idle = _cpu_seconds(proc.pid), time.monotonic()
        producer = ReliableProducer(bench)
        start = time.monotonic()
        measured = None
        for i, (topic, key, event) in enumerate(events):
            due = start + i / rate
            if measured is None and due >= start + warmup_s:
                measured = _cpu_seconds(proc.pid), time.monotonic()
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            producer.produce(bench.topic(topic), encode(_stamped(event, time.time())), key)
        after = _cpu_seconds(proc.pid), time.monotonic()
        producer.flush()
        if measured is None:
            measured = idle
        settle = time.monotonic() + 15
        while True:  # the last fetch may wait for more (SHELFQ_STREAMS_FETCH_WAIT_S)
            m = _scrape(port)
            consumed = sum(v for k, v in m.items() if k.startswith("shelfq_streams_input_events_total"))
            if consumed >= len(events) or time.monotonic() > settle:
                break
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"the worker died; its log: {log.name}")
        buckets = sorted((float(le), v) for k, v in m.items()
                         if (le := _label(k, "shelfq_streams_emit_latency_seconds_bucket", "le")) is not None)
    finally:
        _stop(proc)
        delete_topics(bench, [spec.name for spec in topic_specs(bench).values()]
                      + [bench.topic("streams-join-records-changelog"), bench.topic("streams-__assignor-__leader")])
    figures = {
        f"{name}_rate_events_per_s": rate,
        f"{name}_cpu_share": round((after[0] - measured[0]) / (after[1] - measured[1]), 3),
        f"{name}_events_consumed": int(consumed),
        f"{name}_emit_latency_p50_ms": round(1000 * _quantile(0.5, buckets), 2) if buckets else None,
        f"{name}_emit_latency_p99_ms": round(1000 * _quantile(0.99, buckets), 2) if buckets else None,
    }
    if idle_s > 0:
        figures["idle_cpu_share"] = round((idle[0] - before[0]) / (idle[1] - before[1]), 3)
    return figures


def _stamped(event, ts: float):
    import msgspec

    return msgspec.structs.replace(event, ts=ts)


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads, in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
