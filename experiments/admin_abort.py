"""Reproduces the streams worker's librdkafka abort on a broker SIGKILL, without the worker.

The chaos run's worker died with exit -6 and, on stderr,

    rdkafka_queue.h:1086: rd_kafka_enq_once_del_source_return: Assertion `eonce->refcnt > 0' failed.

as the broker came back from a SIGKILL. librdkafka aborts there when a coordinator-targeted
Admin request (ListConsumerGroupOffsets, DescribeConsumerGroups, ...) fails to be sent on a
connection that just dropped: ``rd_kafka_admin_coord_request`` frees the request's enq-once
handle on that error path, and the dummy error response enqueued after it uses it again
(librdkafka issues #4605 and #3663, fix proposed in PR #5397, not merged in 2.16).

This script starts a private embedded broker (own SHELFQ_HOME and ports: the broker at
127.0.0.1:9092 is never touched), commits an offset for a group, then runs a child process
that asks for the group's committed offsets in a loop (``--via worker``: the streams worker
itself, ``-m shelfq streams`` of the tree ``--code``, under light synthetic load), the way the worker's backlog refresh
did (``--via admin``: ``AdminClient.list_consumer_group_offsets``; ``--via consumer``:
``Consumer.committed`` of a consumer that never joins the group, the worker's fix,
``shelfq.streams.group_offsets``), plus ``list_offsets`` and ``list_topics`` as the worker
asks them. The broker is SIGKILLed and started again ``--rounds`` times; the script prints,
per round, whether the child still lives, and at the end its exit status and the assertion
lines of its stderr.

    python experiments/admin_abort.py --via admin --rounds 6
    python experiments/admin_abort.py --via consumer --rounds 6
    python experiments/admin_abort.py --via worker --code /tmp/old-tree --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHILD = r"""
import sys, threading, time
from confluent_kafka import Consumer, IsolationLevel, TopicPartition, ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient, OffsetSpec
bootstrap, group, topic, via, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
admin = AdminClient({"bootstrap.servers": bootstrap})
calls = [0, 0]
def committed():
    if via == "admin":
        admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=10)
    else:
        from shelfq.streams.group_offsets import GroupOffsets
        reader = committed.reader = getattr(committed, "reader", None) or GroupOffsets({"bootstrap.servers": bootstrap}, group)
        reader.read([TopicPartition(topic, p) for p in range(3)], timeout_s=10)
def ends():
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(3)},
                                 isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=5)
    for f in futures.values():
        f.result(timeout=10)
def loop(work):
    while True:
        try:
            work()
            calls[0] += 1
        except Exception:
            calls[1] += 1
            time.sleep(0.05)
for i in range(threads):
    threading.Thread(target=loop, args=(committed,), daemon=True).start()
threading.Thread(target=loop, args=(ends,), daemon=True).start()
threading.Thread(target=loop, args=(lambda: admin.list_topics(timeout=2),), daemon=True).start()
while True:
    time.sleep(2)
    print("calls ok=%d failed=%d" % tuple(calls), flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--via", choices=("admin", "consumer", "worker"), default="admin")
    parser.add_argument("--code", default=".", help="the tree whose shelfq the child runs (with --via worker)")
    parser.add_argument("--rounds", type=int, default=6, help="broker SIGKILLs and restarts")
    parser.add_argument("--down-s", type=float, default=3.0, help="how long the broker stays down")
    parser.add_argument("--up-s", type=float, default=5.0, help="how long it runs between kills")
    parser.add_argument("--threads", type=int, default=2, help="threads asking for the committed offsets")
    args = parser.parse_args()

    from shelfq.contracts.settings import Settings
    from shelfq.ops.ports import free_port

    work = Path(tempfile.mkdtemp(prefix="shelfq-admin-abort-"))
    env = {k: v for k, v in os.environ.items() if k != "SHELFQ_BOOTSTRAP_SERVERS"}
    env.update(SHELFQ_HOME=str(work / "home"), SHELFQ_BROKER_PORT=str(free_port()),
               SHELFQ_CONTROLLER_PORT=str(free_port()), SHELFQ_TOPIC_PREFIX="abort.")
    settings = Settings.from_env(env)
    assert settings.bootstrap != "127.0.0.1:9092", "never the shared broker"

    def shelfq(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shelfq", *cmd], env=env, capture_output=True, text=True,
                              timeout=240, check=False)

    started = time.monotonic()
    assert shelfq("broker", "start").returncode == 0
    try:
        return run(args, env, settings, shelfq, work, started)
    finally:
        shelfq("broker", "stop")


def light_load(settings: Any) -> None:
    """A few synthetic shoppers every two seconds, for as long as the script runs; a producer
    that keeps what it cannot send while the broker is away, as a shop's would."""
    import msgspec
    from confluent_kafka import Producer

    from shelfq.contracts.events import encode
    from shelfq.streams.synthetic import synthetic_traffic

    producer = Producer(settings.confluent_config(**{"message.timeout.ms": 600_000, "log_level": 0}))
    for n in range(1_000_000):
        traffic = synthetic_traffic(users=2, requests_per_user=2, slate_size=3, seed=n, gap_s=0.2, tag=f"l{n}")
        shift = time.time()
        for topic, key, event in traffic.events:
            producer.produce(settings.topic(topic), encode(msgspec.structs.replace(event, ts=event.ts + shift)), key)
        producer.poll(2.0)


def run(args: argparse.Namespace, env: dict[str, str], settings: Any, shelfq: Callable[..., Any], work: Path,
        started: float) -> int:
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from shelfq.ops.broker import EmbeddedBroker

    topic, group = "abort.input", "abort.group"
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(timeout=30)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": group, "enable.auto.commit": False})
    for _ in range(60):  # the group coordinator takes a moment after the topic is made
        try:
            consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in range(3)], asynchronous=False)
            break
        except KafkaException:
            time.sleep(1)
    consumer.close()
    del admin  # its reconnection noise would drown the report

    log = work / "child.log"
    if args.via == "worker":  # the streams worker itself, of the tree at --code, under light load
        from shelfq.ops.topic_admin import ensure_topics

        ensure_topics(settings)
        command = [sys.executable, "-m", "shelfq", "streams", "--log-level", "info"]
        threading.Thread(target=light_load, args=(settings,), daemon=True).start()
    else:
        command = [sys.executable, "-c", CHILD, settings.bootstrap, group, topic, args.via, str(args.threads)]
    child = subprocess.Popen(command, env=env, cwd=args.code, stdout=open(log, "wb"),  # noqa: SIM115
                             stderr=subprocess.STDOUT)
    rounds = []
    try:
        deadline = time.monotonic() + 240
        while args.via == "worker" and b"join owns partitions" not in log.read_bytes():
            assert child.poll() is None and time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.5)  # a worker that cannot reach the broker as it starts exits: not the point here
        time.sleep(args.up_s)
        for r in range(1, args.rounds + 1):
            if child.poll() is not None:
                break
            pid = EmbeddedBroker(settings).status().pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            while EmbeddedBroker(settings).status().running:
                time.sleep(0.1)
            time.sleep(args.down_s)
            back = shelfq("broker", "start")
            assert back.returncode == 0, back.stderr[-2000:]
            time.sleep(args.up_s)
            rounds.append({"round": r, "child_alive": child.poll() is None})
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        status = child.poll()
        if status is None:
            child.send_signal(signal.SIGKILL)
            child.wait()
    text = log.read_text(errors="replace")
    asserts = [line for line in text.splitlines() if "Assertion" in line or "assert" in line]
    calls = [line for line in text.splitlines() if line.startswith("calls")]
    print(json.dumps({"via": args.via, "rounds_run": len(rounds), "child_exit": status,
                      "aborted": status == -signal.SIGABRT, "assertions": asserts[:3],
                      "last_calls": calls[-1] if calls else None, "seconds": round(time.monotonic() - started),
                      "log": str(log)}, indent=1))
    return 1 if status is not None else 0


if __name__ == "__main__":
    sys.exit(main())
