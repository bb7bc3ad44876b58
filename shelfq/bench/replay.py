"""``shelfq bench replay LOG``: a shop's own log through the real pipeline, predict then reveal,
scored beside a popularity list and a first-order Markov chain on the same events.

1. The log (the ``shelfq replay`` formats, read by ``frontend.replay``) gives its positive
   events (user, item, ts: clicks, add-to-carts, purchases) in time order
   (``evaluation.sequential.positives``), each user's sessions (a new one after
   ``session_gap_s`` of log time) and the catalog (every item it names, with category, price
   and title where the log has ``item`` lines).
2. Topics under a prefix of this run's own; the catalog goes to ``items``; a streams worker
   (a 5 s join window), a learner (its defaults: SlateQ; a checkpoint directory of its own) and
   an agent (greedy slates unless ``--exploration epsilon``) start as child processes; the
   learner counts what follows what (``SHELFQ_LEARNER_NEXT_CLICKS=16`` unless set) and starts
   its click model from the chain those counts make (``SHELFQ_LEARNER_NEXT_CLICK_PRIOR=1``).
3. Each event, in log order at a bounded rate: a request for its user (slate of 10, ts now, the
   event's session), the slate awaited; then the reveal: the true item in the slate gives an
   impression of that slate and a click on the item; otherwise an impression of the slate
   with no click on it (``show_misses``) and an organic impression of the true item alone
   (state inline: the user's revealed history; propensity 1; policy
   ``organic``) and a click on it. The last event of a session is followed by its exit. A
   user's next request waits ``user_gap_s`` after their last reveal, so that the click has
   reached user-state (and the agent) first; users' events otherwise overlap.
4. The agent's slates are scored like the baselines (HR@10, NDCG@10), overall and on the
   second half of the events; what the agent served (model or fallback, model version,
   whether the state it saw held the user's last click) is reported beside.

Every ``SHELFQ_*`` variable reaches the children, so ``SHELFQ_LEARNER_REPLAY_RATIO=4 shelfq
bench replay LOG`` measures a learner setting; the join's window is 5 s unless
``SHELFQ_JOIN_WINDOW_S`` says otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelfq.contracts.errors import ConfigError, ShelfqError
from shelfq.contracts.events import DEFAULT_HISTORY_LENGTH, ORGANIC, Feedback, Impression, Interaction, Item, Request, Slate, State
from shelfq.contracts.settings import Settings
from shelfq.evaluation.sequential import K, PREDICTORS, Positive, Score, catalog, positives, prequential, score, sessions, summary

FAUST_TOPICS = ("streams-join-records-changelog", "streams-__assignor-__leader")
#: The join's settings for this bench (a child's environment overrides them): transitions
#: within seconds, as the demo runs it.
JOIN_ENV = {"SHELFQ_JOIN_WINDOW_S": "5", "SHELFQ_JOIN_ALLOWED_LATENESS_S": "2", "SHELFQ_JOIN_IDLE_ADVANCE_S": "2"}
#: The learner's, likewise: a shop replaying logs of sequential behaviour counts what follows
#: what (``learner.next_clicks``; off in the learner's defaults, whose benchmark has no order),
#: and, since a replay at a bounded rate pays for few gradient steps (about 140 for the
#: synthetic log), takes the counts' Markov estimate as a fixed term of the click logit
#: instead of waiting for the table's two weights to be learnt (``next_click_prior``).
LEARNER_ENV = {"SHELFQ_LEARNER_NEXT_CLICKS": "16", "SHELFQ_LEARNER_NEXT_CLICK_PRIOR": "1"}


#: How the agent explores in the benchmark (``ReplayBenchConfig.exploration``).
EXPLORATIONS = ("greedy", "epsilon")


@dataclass(frozen=True)
class ReplayBenchConfig:
    """What ``shelfq bench replay`` runs."""

    rate: float = 10.0
    """Events replayed per second (each a request, a slate and its reveal): bounded, so the
    learner trains on what it has before much more arrives."""
    limit: int | None = None
    """Replay only the first this many positive events (in time order)."""
    exploration: str = "greedy"
    """The agent's exploration: greedy (its best slate; the baselines are deterministic lists
    too) or epsilon (the agent's default, SHELFQ_AGENT_EPSILON)."""
    slate_timeout_s: float = 5.0
    """A slate not back within this long is a miss (and counted)."""
    user_gap_s: float = 1.0
    """Wall-clock seconds between a user's reveal and their next request."""
    session_gap_s: float = 1800.0
    """Log time without an event after which a user's next event starts a new session."""
    progress_s: float = 10.0
    """Seconds between progress lines."""
    fmt: str | None = None
    """The log's format (csv, jsonl); None: from its suffix."""
    skip_bad: bool = False
    """Replay the valid events of a log with bad lines (else it is refused)."""
    show_misses: bool = True
    """A slate without the true item is logged as shown and not clicked, before the organic
    impression: the user did what the log says instead of clicking any of it, as a shop's
    slates mostly go without a click. False leaves it unshown: then every impression the
    learner sees was clicked, its choice model never meets the no-click option (its attractions
    grow against it as it trains), and nothing the agent showed wrongly counts against it."""

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1000:
            raise ConfigError(f"bench replay: --rate must be within 0 and 1000 events/s, got {self.rate}")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"bench replay: --limit must be at least 2 events, got {self.limit}")
        if self.exploration not in EXPLORATIONS:
            raise ConfigError(f"bench replay: --exploration must be greedy or epsilon, got {self.exploration!r}")
        for name in ("slate_timeout_s", "session_gap_s", "progress_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"bench replay: {name} must be > 0, got {getattr(self, name)}")
        if self.user_gap_s < 0:
            raise ConfigError(f"bench replay: user_gap_s must be >= 0, got {self.user_gap_s}")


@dataclass
class Served:
    """The agent's answer to one event's request."""

    items: list[str]
    policy: str | None = None  # None: no slate came in time
    model_version: int | None = None
    fresh: bool | None = None  # the state held the user's previous click (None: no previous one)


def load(source: str | Path, config: ReplayBenchConfig, max_bytes: int,
         report: Callable[[str], None]) -> tuple[list[Positive], dict[str, Item]]:
    """The log's positive events (the first ``limit``) and its catalog; a log with bad lines is
    refused as ``shelfq replay`` refuses it."""
    from shelfq.frontend.replay import MAX_ERRORS_SHOWN, ReplayError, read_file

    parsed = read_file(source, config.fmt, max_bytes)
    if parsed.bad:
        shown = "\n".join(f"  {b}" for b in parsed.bad[:MAX_ERRORS_SHOWN])
        if not config.skip_bad:
            raise ReplayError(f"{source}: {len(parsed.bad)} bad lines (fix them, or pass --skip-bad):\n{shown}")
        report(f"skipping {len(parsed.bad)} bad lines:\n{shown}")
    events = positives(parsed.events)
    if config.limit is not None:
        events = events[:config.limit]
    if len(events) < 2:
        raise ReplayError(f"{source}: {len(events)} positive events (clicks, add-to-carts, purchases); "
                          "the benchmark needs at least 2")
    return events, catalog(parsed.events)


class ReplayBench:
    def __init__(self, settings: Settings, config: ReplayBenchConfig, report: Callable[[str], None]) -> None:
        self.config, self.report = config, report
        self.run_id = uuid.uuid4().hex[:6]
        self.settings = Settings.from_plain({**settings.to_plain(), "topic_prefix": f"bench-replay-{self.run_id}."})
        self.workdir = Path(".shelfq") / "bench-replay" / self.run_id
        self.components: dict[str, Any] = {}
        self.checkpoints = Path(tempfile.mkdtemp(prefix="shelfq-bench-replay-"))

    # -- components ------------------------------------------------------------------------

    def start(self, items: dict[str, Item]) -> None:
        from shelfq.contracts.events import encode
        from shelfq.contracts.kafka import ReliableProducer
        from shelfq.ops.components import Component
        from shelfq.ops.ports import free_port
        from shelfq.ops.topic_admin import ensure_topics

        self.workdir.mkdir(parents=True, exist_ok=True)
        ensure_topics(self.settings)
        producer = ReliableProducer(self.settings)
        now = time.time()
        for item in items.values():
            producer.produce(self.settings.topic("items"), encode(Item(item_id=item.item_id, title=item.title,
                                                                       category=item.category, price=item.price, ts=now)),
                             item.item_id)
        producer.flush(60.0)
        base = {**os.environ, "SHELFQ_BOOTSTRAP_SERVERS": self.settings.bootstrap,
                "SHELFQ_PARTITIONS": str(self.settings.partitions)}
        commands = {
            "streams": (["streams", "--log-level", "warning"], {**JOIN_ENV, **base}),
            "learner": (["learner", "--checkpoint-dir", str(self.checkpoints), "--log-level", "warning"],
                        {**LEARNER_ENV, **base}),
            "agent": (["agent", "--exploration", self.config.exploration, "--log-level", "warning"], base),
        }
        for name, (args, env) in commands.items():
            port, log = free_port(), self.workdir / f"{name}.log"
            proc = subprocess.Popen([sys.executable, "-m", "shelfq", *args, "--topic-prefix", self.settings.topic_prefix,
                                     "--metrics-port", str(port)], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
            self.components[name] = Component(name, proc, port, log)
        self.report(f"topics: prefix {self.settings.topic_prefix}; streams, learner and agent started "
                    f"(logs in {self.workdir})")
        self._wait(lambda: self._metric("streams", "shelfq_streams_partitions") >= self.settings.partitions,
                   "the streams worker to own its partitions")
        self._wait(lambda: self._metric("agent", 'shelfq_agent_cache_entries{cache="items"}') >= len(items),
                   "the agent to load the catalog")

    def _metric(self, name: str, series: str) -> float:
        from shelfq.bench.agent import _metric

        return _metric(self.components[name].port, series)

    def check(self) -> None:
        for c in self.components.values():
            if not c.alive():
                tail = c.log.read_text(errors="replace")[-2000:]
                raise ShelfqError(f"the {c.name} process exited ({c.proc.returncode}); the end of {c.log}:\n{tail}")

    def _wait(self, condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                raise ShelfqError(f"timed out after {timeout:g} s waiting for {what} (logs in {self.workdir})")
            time.sleep(0.3)

    def stop(self) -> None:
        for c in self.components.values():
            try:
                c.stop(30.0)
            except Exception:  # noqa: BLE001 - one stuck child must not keep the others running
                pass
        from shelfq.contracts.topics import topic_specs
        from shelfq.ops.topic_admin import delete_topics

        try:
            # The streams worker's own topics (Faust's) too, as ``bench join`` deletes them.
            delete_topics(self.settings, [spec.name for spec in topic_specs(self.settings).values()]
                          + [self.settings.topic(name) for name in FAUST_TOPICS])
        except Exception as exc:  # noqa: BLE001 - a failed cleanup must not hide the run's result
            self.report(f"could not delete this run's topics ({exc}); prefix {self.settings.topic_prefix}")
        shutil.rmtree(self.checkpoints, ignore_errors=True)

    # -- the replay ------------------------------------------------------------------------

    async def drive(self, events: list[Positive], baselines: dict[str, list[Score]]) -> list[Served]:
        """Every event predicted by the agent, then revealed; their answers in log order."""
        from shelfq.frontend.client import ShopClient

        cfg = self.config
        session_ids, last_of_session = sessions(events, cfg.session_gap_s)
        served: list[Served | None] = [None] * len(events)
        histories: dict[str, deque[Interaction]] = defaultdict(lambda: deque(maxlen=DEFAULT_HISTORY_LENGTH))
        revealed_at: dict[str, float] = {}
        chains: dict[str, asyncio.Task[None]] = {}  # each user's newest event: the next one waits for it
        client = ShopClient(self.settings, read_slates=True, **{"linger.ms": 2})
        try:
            await self._until_answered(client)

            async def one(i: int, event: Positive, after: asyncio.Task[None] | None) -> None:
                if after is not None:
                    await after
                wait = revealed_at.get(event.user, 0.0) + cfg.user_gap_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                request_id, session = f"{self.run_id}-{i}", session_ids[i]
                slate = await client.slate(Request(request_id=request_id, user_id=event.user, session_id=session,
                                                   ts=time.time(), slate_size=K), cfg.slate_timeout_s)
                served[i] = self._served(slate, histories[event.user])
                now = time.time()
                if slate is not None and event.item in slate.items:
                    shown = Impression(request_id=request_id, user_id=event.user, session_id=session, ts=now, items=slate.items)
                else:
                    if slate is not None and cfg.show_misses:  # shown, and nothing of it clicked
                        client.send(Impression(request_id=request_id, user_id=event.user, session_id=session, ts=now,
                                               items=slate.items))
                    shown = Impression(request_id=f"{request_id}.{ORGANIC}", user_id=event.user, session_id=session, ts=now,
                                       items=[event.item], state=State(history=list(histories[event.user])),
                                       propensities=[1.0], policy=ORGANIC)
                client.send(shown)
                client.send(Feedback(request_id=shown.request_id, user_id=event.user, session_id=session, ts=now + 0.001,
                                     event="click", item_id=event.item))
                histories[event.user].append(Interaction(item_id=event.item, event="click", ts=now + 0.001))
                if last_of_session[i]:
                    client.send(Feedback(request_id=shown.request_id, user_id=event.user, session_id=session,
                                         ts=now + 0.002, event="exit"))
                client.producer.poll(0)
                revealed_at[event.user] = time.monotonic()

            loop = asyncio.get_running_loop()
            started = last_progress = loop.time()
            tasks: list[asyncio.Task[None]] = []
            for i, event in enumerate(events):
                due = started + i / cfg.rate
                if (delay := due - loop.time()) > 0:
                    await asyncio.sleep(delay)
                task = loop.create_task(one(i, event, chains.get(event.user)))
                chains[event.user] = task
                tasks.append(task)
                if loop.time() - last_progress >= cfg.progress_s:
                    last_progress = loop.time()
                    self.check()
                    self._progress(loop.time() - started, events, served, baselines)
            await asyncio.gather(*tasks)
            self._progress(loop.time() - started, events, served, baselines)
        finally:
            client.close()
        return [s if s is not None else Served([]) for s in served]

    async def _until_answered(self, client: Any, timeout: float = 120.0) -> None:
        """Ask for a probe user until a slate comes: the agent has joined its group and answers."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            probe = Request(request_id=f"{self.run_id}-probe-{attempt}", user_id="bench-replay-probe", ts=time.time(),
                            slate_size=K)
            if await client.slate(probe, 2.0) is not None:
                return
            self.check()
        raise ShelfqError(f"the agent answered no request within {timeout:g} s (logs in {self.workdir})")

    @staticmethod
    def _served(slate: Slate | None, history: deque[Interaction]) -> Served:
        if slate is None:
            return Served([])
        fresh = None
        if history:
            seen = slate.state.history[-1] if slate.state.history else None
            fresh = seen is not None and seen.item_id == history[-1].item_id and abs(seen.ts - history[-1].ts) < 1e-3
        return Served(list(slate.items), slate.policy, slate.model_version, fresh)

    def _progress(self, elapsed: float, events: list[Positive], served: list[Served | None],
                  baselines: dict[str, list[Score]]) -> None:
        answered = {i: s for i, s in enumerate(served) if s is not None}
        done = list(answered)
        if not done:
            self.report(f"[{elapsed:5.0f}s] 0/{len(events)} events")
            return
        agent = sum(score(answered[i].items, events[i].item).hit for i in done) / len(done)
        markov = sum(baselines["markov"][i].hit for i in done) / len(done)
        popular = sum(baselines["popularity"][i].hit for i in done) / len(done)
        version = max((s.model_version or 0 for s in served if s is not None), default=0)
        timeouts = sum(1 for i in done if answered[i].policy is None)
        self.report(f"[{elapsed:5.0f}s] {len(done)}/{len(events)} events | HR@{K} agent {agent:.3f}, popularity "
                    f"{popular:.3f}, markov {markov:.3f} | model v{version} | slate timeouts {timeouts}")

    def settle(self, expected: int, timeout: float) -> None:
        """Wait (at most ``timeout``) until the join has emitted the ``expected`` transitions of the
        reveals: every session ended with an exit, so none waits for its window."""
        deadline = time.monotonic() + timeout
        while self._metric("streams", "shelfq_streams_transitions_total") < expected and time.monotonic() < deadline:
            self.check()
            time.sleep(0.5)

    def figures(self) -> dict[str, float]:
        """The components' own counters, read before they stop."""
        from shelfq.ops.scrape import series as scrape

        return {"transitions": self._metric("streams", "shelfq_streams_transitions_total"),
                "streams_dead_letters": scrape(self.components["streams"].port).get("shelfq_dead_letters_total", 0.0),
                "learner_transitions": sum(self._metric("learner", f'shelfq_learner_transitions_total{{outcome="{o}"}}')
                                           for o in ("new", "duplicate")),
                "learner_steps": self._metric("learner", "shelfq_learner_train_steps_total"),
                "learner_model_version": self._metric("learner", "shelfq_learner_model_version")}


def expected_transitions(served: list[Served], events: list[Positive], show_misses: bool) -> int:
    """The transitions the reveals imply, one per shown item: a hit's slate; for a miss the
    organic impression's item, and the slate's items when misses are shown.

    >>> served, events = [Served(["a", "b"]), Served(["a", "b"]), Served([])], [Positive("u", i, 0.0) for i in "acd"]
    >>> expected_transitions(served, events, True), expected_transitions(served, events, False)  # hit, miss, no slate
    (6, 4)
    """
    return sum(len(s.items) if e.item in s.items else 1 + len(s.items) * show_misses for s, e in zip(served, events))


def run_bench(settings: Settings, source: str | Path, config: ReplayBenchConfig,
              report: Callable[[str], None] = print) -> dict[str, Any]:
    events, items = load(source, config, settings.max_event_bytes, report)
    baselines = prequential(events, K)
    half = len(events) // 2
    report(f"{source}: {len(events)} positive events of {len(set(e.user for e in events))} users, {len(items)} items; "
           f"replaying at {config.rate:g} events/s (about {len(events) / config.rate:.0f} s), agent {config.exploration}")
    bench = ReplayBench(settings, config, report)
    started = time.monotonic()
    try:
        bench.start(items)
        served = asyncio.run(bench.drive(events, baselines))
        expected = expected_transitions(served, events, config.show_misses)
        bench.settle(expected, timeout=30.0)
        counters = bench.figures()
    finally:
        bench.stop()
    agent = [score(s.items, e.item) for s, e in zip(served, events)]
    scored = {"agent": agent, **{name: baselines[name] for name in PREDICTORS}}
    answered = [s for s in served if s.policy is not None]
    modelled = [s.policy not in ("popularity", "random", None) for s in served]
    fresh = [s.fresh for s in served if s.fresh is not None]
    return {
        "events": len(events),
        "users": len(set(e.user for e in events)),
        "items": len(items),
        "sessions": len(set(sessions(events, config.session_gap_s)[0])),
        "k": K,
        "second_half_from": half,
        "overall": {name: summary(s) for name, s in scored.items()},
        "second_half": {name: summary(s, start=half) for name, s in scored.items()},
        "agent": {
            "exploration": config.exploration,
            "slates": len(answered),
            "slate_timeouts": len(served) - len(answered),
            "model_share": round(sum(modelled) / len(served), 4),
            "model_share_second_half": round(sum(modelled[half:]) / max(1, len(served) - half), 4),
            "last_model_version": max((s.model_version or 0 for s in served), default=0),
            "state_fresh_share": round(sum(fresh) / len(fresh), 4) if fresh else None,
            "distinct_items_second_half": len({i for s in served[half:] for i in s.items}),
        },
        "transitions_expected": expected,
        **{name: int(value) for name, value in counters.items()},
        "rate": config.rate,
        "seconds": round(time.monotonic() - started, 1),
    }


def lines(result: dict[str, Any]) -> list[str]:
    """The human-readable table of a result."""
    out = [f"{result['events']} events, {result['users']} users, {result['items']} items, {result['sessions']} sessions; "
           f"second half from event {result['second_half_from']}",
           f"{'':<18} {'HR@10':>7} {'NDCG@10':>8}   {'2nd half HR@10':>14} {'NDCG@10':>8}"]
    for name in result["overall"]:
        o, s = result["overall"][name], result["second_half"][name]
        out.append(f"{name:<18} {o['hr_at_10']:>7.4f} {o['ndcg_at_10']:>8.4f}   {s['hr_at_10']:>14.4f} {s['ndcg_at_10']:>8.4f}")
    a = result["agent"]
    out.append(f"agent: {a['slates']} slates ({a['slate_timeouts']} timeouts), {a['model_share']:.0%} from a model "
               f"({a['model_share_second_half']:.0%} in the second half, last version {a['last_model_version']}), "
               + (f"the state held the user's last click in {a['state_fresh_share']:.0%} of slates; "
                  if a["state_fresh_share"] is not None else "")
               + f"learner: {result['learner_steps']} steps on {result['learner_transitions']} transitions; join: "
               f"{result['transitions']} of {result['transitions_expected']} transitions, "
               f"{result['streams_dead_letters']} dead letters")
    return out
