"""Offline check, not part of shelfq: what one micro-batch costs the agent, in process, no Kafka.

``shelfq bench agent``'s setting (its catalog of 1,000 items, its untrained GRU model, its
requests: no candidates, a slate of 10) served by a real ``Agent`` whose Kafka clients are
stand-ins: ``Agent.answer`` runs as in ``shelfq agent`` (forming the asks, the policy's
``rank``, building and encoding each Slate, the metrics), and the stand-in producer only keeps
the last value. The model is installed the way the model watcher hands one over (``_serve``).
Prints ms per batch (median and p99) for each batch size, then a cProfile of one size,
top 25 by cumulative time; ``--json`` prints the figures as one JSON object instead.

    cd <worktree> && /work/main/.venv/bin/python -m experiments.agent_batch_profile
    ... -m experiments.agent_batch_profile --objective item --batches 500 --profile 15
    ... -m experiments.agent_batch_profile --history 20   # users with 20 interactions each
    ... -m experiments.agent_batch_profile --digest --history 20   # what is served, as one hash

``--digest`` answers 100 batches of each size with every weight of the model drawn (one
seed: the weights, the agent's draws; the untrained model scores all items alike) and prints a hash of the slates (request, items, scores, propensities, policy,
version): two trees that serve the same give the same hash.

Run from a worktree (``-m``): that tree's agent is what is measured, so two trees' figures
can be taken alternately (the machine is shared: say the load next to them).
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import sys
import time
from typing import Any
from unittest import mock

import numpy as np

from shelfq.agents import service
from shelfq.agents.config import AgentConfig
from shelfq.bench.agent import SLATE, bench_model, bench_request, catalog_items
from shelfq.contracts.events import Interaction, Request, Slate, UserState, decode
from shelfq.contracts.settings import Settings
from shelfq.learner.artifact import load_model

SIZES = (1, 4, 15, 32)


class _Producer:
    """Keeps the last value produced (so encoding is not optimised away), or all of them when
    ``keep`` is set; sends nothing."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.last: bytes | None = None
        self.kept: list[bytes] | None = None

    def produce(self, _topic: str, value: bytes, _key: Any = None, **_kw: Any) -> None:
        self.last = value
        if self.kept is not None:
            self.kept.append(value)

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float | None = None) -> int:
        return 0


class _Client:
    """A consumer or reader that never connects; the agent's dead-letter path is not exercised."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.dlq = mock.Mock()

    def close(self) -> None:
        pass


def offline_agent(objective: str = "slateq", history: int = 0, seed: int = 0, perturb: bool = False) -> service.Agent:
    """An Agent serving the bench's catalog and model (its weights drawn from ``seed``), its
    Kafka clients stand-ins."""
    import torch

    torch.manual_seed(seed)
    with mock.patch.object(service, "ReliableProducer", _Producer), \
            mock.patch.object(service, "EventConsumer", _Client), \
            mock.patch.object(service, "CompactedReader", _Client):
        agent = service.Agent(Settings.from_env(topic_prefix="profile."), AgentConfig(seed=seed))
    items = catalog_items()
    agent.items = {item.item_id: item for item in items}
    if history:
        rng = np.random.default_rng(seed)
        events = ("click", "add_to_cart", "purchase")
        for u in range(5000):
            picks = rng.integers(len(items), size=history)
            kinds = rng.choice(len(events), size=history, p=(0.8, 0.15, 0.05))
            agent.users[f"u-{u}"] = UserState(user_id=f"u-{u}", ts=1.0, history=[
                Interaction(item_id=items[int(i)].item_id, event=events[int(k)], ts=float(t))
                for t, (i, k) in enumerate(zip(picks, kinds))])
    _config, value, headers = bench_model(objective)
    model = load_model(value, headers.to_headers())
    if perturb:  # every weight drawn: the untrained model scores all items alike (zero item rows)
        with torch.no_grad():
            for weights in model.network.parameters():
                weights.normal_(0.0, 0.5)
    agent._serve(model)  # noqa: SLF001 - as the model watcher hands it over
    return agent


def batches(size: int, count: int) -> list[list[Request]]:
    """``count`` micro-batches of ``size`` bench requests (answered with fresh arrival times:
    ``answer_now``)."""
    now = time.time()
    return [[bench_request(f"r-{b}-{i}", b * size + i, now) for i in range(size)] for b in range(count)]


def answer_now(agent: service.Agent, batch: list[Request]) -> int:
    """``Agent.answer`` with the batch just arrived (well inside the deadline)."""
    answered, _skipped = agent.answer(batch, [time.time()] * len(batch))
    return answered


def time_batches(agent: service.Agent, size: int, count: int, warm: int = 20) -> tuple[list[float], list[float]]:
    """ms per ``Agent.answer`` of ``count`` batches of ``size`` (after ``warm`` untimed ones):
    wall time, and this thread's CPU time (less disturbed by other processes on shared cores)."""
    work = batches(size, warm + count)
    wall, cpu = [], []
    for b, batch in enumerate(work):
        t0, c0 = time.perf_counter(), time.thread_time()
        answered = answer_now(agent, batch)
        ms, cpu_ms = (time.perf_counter() - t0) * 1000, (time.thread_time() - c0) * 1000
        assert answered == size, f"answered {answered} of {size}"
        if b >= warm:
            wall.append(ms)
            cpu.append(cpu_ms)
    return wall, cpu


def profile(agent: service.Agent, size: int, count: int) -> str:
    work = batches(size, count)
    profiler = cProfile.Profile()
    profiler.enable()
    for batch in work:
        answer_now(agent, batch)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    return text.getvalue()


def digest(agent: service.Agent, sizes: list[int], count: int = 100) -> str:
    """A hash of what ``count`` batches of each size are served (the slates' times left out)."""
    producer = agent.producer
    assert isinstance(producer, _Producer)
    producer.kept = []
    for size in sizes:
        for batch in batches(size, count):
            answer_now(agent, batch)
    h = hashlib.sha256()
    for value in producer.kept:
        slate = decode(value, Slate)
        h.update(repr((slate.request_id, slate.items, slate.scores, slate.propensities, slate.policy,
                       slate.model_version)).encode())
    producer.kept = None
    return f"{h.hexdigest()[:16]} ({sum(sizes) * count} slates)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="slateq", choices=("slateq", "item"))
    parser.add_argument("--batches", type=int, default=300, help="timed batches per size")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--profile", type=int, default=15, help="batch size to profile (0: none)")
    parser.add_argument("--history", type=int, default=0, help="interactions per user (the bench has none)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--digest", action="store_true", help="print a hash of what is served, and stop")
    args = parser.parse_args(argv)
    agent = offline_agent(args.objective, args.history, perturb=args.digest)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.digest:
        print(f"{args.objective}, history {args.history}: {digest(agent, sizes)}")
        return
    import torch

    figures: dict[str, Any] = {"objective": args.objective, "candidates": len(agent.items), "slate": SLATE,
                               "history": args.history, "torch_threads": torch.get_num_threads(),
                               "load": os.getloadavg()[0], "ms_per_batch": {}}
    for size in sizes:
        wall, cpu = (np.array(x) for x in time_batches(agent, size, args.batches))
        figures["ms_per_batch"][size] = {"p50": round(float(np.median(wall)), 3),
                                         "p99": round(float(np.percentile(wall, 99)), 3),
                                         "cpu_p50": round(float(np.median(cpu)), 3),
                                         "cpu_p99": round(float(np.percentile(cpu, 99)), 3)}
    if args.json:
        json.dump(figures, sys.stdout)
        print()
        return
    print(f"{args.objective}, {figures['candidates']} candidates, slate of {SLATE}, history {args.history}, "
          f"torch threads {figures['torch_threads']}, load {figures['load']:.2f}")
    for size, f in figures["ms_per_batch"].items():
        print(f"  batch {size:>3}: p50 {f['p50']:.3f} ms, p99 {f['p99']:.3f} ms; CPU p50 {f['cpu_p50']:.3f} ms, "
              f"p99 {f['cpu_p99']:.3f} ms ({args.batches} batches)")
    if args.profile:
        print(profile(agent, args.profile, args.batches))


if __name__ == "__main__":
    main()
