"""The scoring agent: ``requests`` in, explored and ranked ``slates`` out.

Caches of ``user-state`` and ``items`` (compacted topics, read from the beginning) give each
request its logged state and its candidates; models arrive on ``models`` in a background
thread and replace the serving one atomically; a rejected model goes to ``dlq`` with its
reason and the old one keeps serving. Until a model arrives, popularity answers, then random.

An experiment (``AgentConfig.arms``) splits users between arms by a stable hash of the user id
(``agents.arms``): each arm serves its own policy key, with its own model once one arrives and
the fallbacks until then, and its slates name the arm. A micro-batch is scored per arm.

Every policy leaves out the request's ``exclude`` and what ``exclude_seen`` takes from the
user's history: a mask over the candidates, formed here once per request
(``agents.exclusion``). With fewer allowed candidates than the slate size, the slate is
shorter; with none, the request is dead-lettered as ``unanswerable`` (a slate holds at least
one item).

Requests are read in micro-batches that never wait to fill: one blocking poll for the first,
then whatever else is already fetched. A request that waited in Kafka longer than the deadline
is skipped; its age counts from the broker's append time, not from its frontend's clock
(``agents.deadline``). Slates are flushed before the requests' offsets are
committed, so a crash re-answers requests rather than losing them. Replicas in one consumer
group share the partitions.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_LOG_APPEND_TIME, Consumer, TopicPartition

from shelfq.agents.arms import Arm, ArmSplit
from shelfq.agents.config import AgentConfig
from shelfq.agents.deadline import arrival_time, past_deadline
from shelfq.agents.exclusion import allowed_mask, excluded_items
from shelfq.agents.metrics import AgentMetrics
from shelfq.agents.policies import Ask, DQNPolicy, Explorer, Popularity, PopularityPolicy, RandomPolicy, SlateChoice
from shelfq.agents.serving import ServedVersions
from shelfq.contracts.decisions import ModelDecision, decode_decision, read_decisions
from shelfq.contracts.errors import EventError
from shelfq.contracts.events import Item, Request, Slate, State, UserState, encode
from shelfq.contracts.kafka import CompactedReader, EventConsumer, Received, ReliableProducer, topic_partitions
from shelfq.contracts.models import ModelHeaders
from shelfq.contracts.outage import BrokerWatch, install
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import ITEMS, MODEL_DECISIONS, MODELS, REQUESTS, SLATES, USER_STATE
from shelfq.learner.artifact import LoadedModel, load_model

log = logging.getLogger("shelfq.agent")
CACHE_EVERY_S = 0.05
WATCH_RETRY_S = 5.0  # the model watcher starts again this long after a failure


def build_state(request: Request, user: UserState | None) -> State:
    """The state the slate logs, and the one the model scores: the user's recent history as
    user-state has it, plus the request context."""
    return State(history=list(user.history) if user is not None else [], context=dict(request.context or {}))


def form_ask(request: Request, user: UserState | None, candidates: Sequence[str], exclude_seen: str,
             max_candidates: int, positions: Callable[[], Mapping[str, int]] | None = None) -> Ask | None:
    """What the policies answer for ``request``: its state, its candidates with the excluded
    ones masked (the request's ``exclude``, and the user's history as ``exclude_seen`` says),
    and a slate size of at most the allowed candidates; None when none is allowed.

    ``positions`` gives the candidates' indices (the catalog's, built on first use), so that a
    mask over a long catalog costs the excluded items only.

    >>> req = Request(request_id="r", user_id="u", ts=1.0, slate_size=3, exclude=["a"])
    >>> ask = form_ask(req, None, ["a", "b", "c"], "purchased", 1000)
    >>> ask.slate_size, ask.allowed.tolist()   # two allowed: a shorter slate, never an excluded item
    (2, [False, True, True])
    >>> form_ask(req, None, ["a"], "purchased", 1000) is None
    True
    """
    state = build_state(request, user)
    excluded = excluded_items(request.exclude, state.history, exclude_seen)
    allowed = allowed_mask(candidates, excluded, positions() if excluded and positions is not None else None)
    n = len(candidates) if allowed is None else int(allowed.sum())
    if n == 0:
        return None
    return Ask(state, candidates, min(request.slate_size, n, max_candidates), allowed, request.user_id)


class RunStats(NamedTuple):
    answered: int
    skipped: int
    seconds: float


def _requests(received: Sequence[Received]) -> list[Request]:
    """The events of a poll of ``requests``: its consumer decodes Requests only, and a request
    has no tombstones."""
    return cast("list[Request]", [r.event for r in received])


class Agent:
    def __init__(self, settings: Settings, config: AgentConfig, *, replica: int = 0,
                 metrics: AgentMetrics | None = None) -> None:
        self.settings, self.config = settings, config
        self.metrics = metrics or AgentMetrics()
        # Scoring is many small products: one thread each, and replicas for more cores.
        torch.set_num_threads(1)
        self.rng = np.random.default_rng(config.seed + 7919 * replica)
        self.producer = ReliableProducer(settings, component=None, **{"linger.ms": 1})
        group: dict[str, Any] = {"session.timeout.ms": int(config.session_timeout_s * 1000),
                                 "heartbeat.interval.ms": 3000, "fetch.wait.max.ms": 5}
        self.consumer = EventConsumer(settings, "agent", f"{settings.topic_prefix}agent", [REQUESTS],
                                      producer=self.producer, offset_reset="earliest", **group)
        #: Waits out a broker outage (``contracts.outage``): started, or running, without one.
        self.watch = install(BrokerWatch("agent", settings.bootstrap, settings.broker_outage_s, self._probe))
        self.users_reader = self.watch.wait_out(
            lambda: CompactedReader(settings, "agent", USER_STATE, producer=self.producer), "reading user-state")
        self.items_reader = self.watch.wait_out(
            lambda: CompactedReader(settings, "agent", ITEMS, producer=self.producer), "reading items")
        self.users: dict[str, UserState] = {}
        self.items: dict[str, Item] = {}
        self._catalog_ids: list[str] | None = None
        self._catalog_positions: dict[str, int] | None = None
        self.popularity = Popularity(config.popularity_half_life_s)
        explorer = Explorer(config.exploration, config.epsilon, config.temperature, config.diversity)
        self.explorer = explorer
        self.arms: tuple[Arm, ...] = config.served_arms()
        self.split = ArmSplit(self.arms)
        self.experiment = any(a.name for a in self.arms)  # else one unnamed arm: slates name none
        #: The model serving each policy key, once one has arrived (arms of one key share it);
        #: replaced, never changed in place, by the model thread.
        self.dqn: dict[str, DQNPolicy] = {}
        self.fallback_popular = PopularityPolicy(self.popularity, explorer)
        self.fallback_random = RandomPolicy()
        self._first_use_pending: set[str] = set()
        #: Every loaded version by policy; which one serves follows model-decisions (agents.serving).
        self.versions = ServedVersions()
        policies = list(dict.fromkeys(a.policy for a in self.arms))
        self._models = ModelWatcher(settings, policies, self._on_model, self._on_rejected,
                                    on_decision=self._on_decision, on_read_to_end=self._on_read_to_end)
        if self.experiment:
            log.info("experiment arms: %s", ", ".join(f"{a.name}={a.policy} ({a.weight:g})" for a in self.arms))
        self._next_cache = 0.0
        self.slates_topic = settings.topic(SLATES)
        self._said_create_time = False
        # The request path's series, looked up once (``labels`` costs more than the increment).
        self._answered = self.metrics.requests.labels("answered")
        self._skipped = self.metrics.requests.labels("skipped")
        self._children: dict[tuple[Any, ...], Any] = {}

    # -- the loop ----------------------------------------------------------------------------

    def run(self, max_seconds: float | None = None, max_requests: int | None = None,
            stop: threading.Event | None = None) -> RunStats:
        stop = stop or threading.Event()
        started = time.monotonic()
        answered = skipped = 0
        last_commit = time.monotonic()
        # Fewer, larger young-generation collections: the caches hold many small objects and a
        # full collection in the middle of a batch is a latency spike.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        # The catalog first: requests waiting in Kafka (a restarted agent's) would otherwise meet
        # an empty items cache and be dead-lettered as unanswerable (the chaos run saw 55).
        self._refresh_caches(items=self.watch.wait_out(self.items_reader.read_to_end, "reading items"))
        self._models.start()
        clean = False
        try:
            while not stop.is_set():
                if max_seconds is not None and time.monotonic() - started >= max_seconds:
                    break
                if max_requests is not None and answered + skipped >= max_requests:
                    break
                self.watch.check()  # raises once the broker was away for longer than the bound
                self._refresh_caches()
                received = self.consumer.poll(timeout=0.05, max_messages=1)
                if received:
                    received += self.consumer.poll(timeout=0, max_messages=self.config.batch_size - 1)
                    t0 = time.perf_counter()
                    a, s = self.answer(_requests(received), self._arrivals(received))
                    self.metrics.batch_time.observe(time.perf_counter() - t0)
                    answered, skipped = answered + a, skipped + s
                self.producer.poll(0)
                if time.monotonic() - last_commit >= self.config.commit_interval_s:
                    self.commit(stop)
                    last_commit = time.monotonic()
            clean = True
        finally:
            self._models.stop()
            if clean:
                self.commit(stop)
            else:
                # Stopped by an error: the batch in hand may be unanswered, so its offsets (and
                # those since the last commit) stay uncommitted and are read again next time.
                self.producer.flush()
        return RunStats(answered, skipped, time.monotonic() - started)

    def commit(self, stop: threading.Event | None = None) -> None:
        """Slates (and dead letters) durable first, then the requests' offsets. While the broker
        is away both wait (up to ``broker_outage_s``; a stop ends the wait, leaving the offsets
        uncommitted): the slates stay queued, and the offsets are committed once they are out."""
        self.watch.wait_out(self.producer.flush, "sending slates", stop)
        self.watch.wait_out(self.consumer.commit_unless_left, "committing offsets", stop)
        self.metrics.consumer.set_lag(self.consumer.lag())
        self.metrics.consumer.sync_dead_letters(self.consumer.dlq.by_reason)

    def _probe(self) -> None:
        """Raises unless the broker answers a metadata request (``BrokerWatch``)."""
        self.consumer.probe_broker(self.settings.topic(REQUESTS), timeout=2)

    def _arrivals(self, received: Sequence[Received]) -> list[float]:
        """When each request reached Kafka (``agents.deadline``); says once if the requests
        topic does not store the broker's time, so the frontends' clocks still decide."""
        if not self._said_create_time and any(r.timestamp_type != TIMESTAMP_LOG_APPEND_TIME for r in received):
            self._said_create_time = True
            log.warning("%s stores its producers' timestamps, not the broker's: the deadline counts from the "
                        "requests' own ts, so a frontend whose clock is off has its requests skipped (behind) or "
                        "answered late (ahead); run `shelfq topics create` to set message.timestamp.type="
                        "LogAppendTime", self.settings.topic(REQUESTS))
        return [arrival_time(request.ts, r.timestamp_type, r.timestamp_ms) for request, r in zip(_requests(received), received)]

    def close(self) -> None:
        self.consumer.close()
        self.users_reader.close()
        self.items_reader.close()
        self.producer.flush()

    # -- answering ---------------------------------------------------------------------------

    def answer(self, requests: Sequence[Request], arrivals: Sequence[float] | None = None) -> tuple[int, int]:
        """Score and answer a micro-batch, each arm's requests with its policy; returns
        (answered, skipped). ``arrivals``: when each request reached Kafka (``agents.deadline``;
        by default their own ``ts``), what the deadline and the latency count from."""
        now = time.time()
        by_arm: dict[int, tuple[list[Request], list[Ask], list[float]]] = {}  # in the order arms first appear
        fresh = 0
        for req, arrived in zip(requests, arrivals if arrivals is not None else [r.ts for r in requests], strict=True):
            if past_deadline(now, arrived, self.config.deadline_s):
                self._skipped.inc()
                continue
            candidates = req.candidates if req.candidates is not None else self._catalog()
            if not candidates:
                self._unanswerable(req, "no candidates: the request lists none and the items cache is empty")
                continue
            ask = form_ask(req, self.users.get(req.user_id), candidates, self.config.exclude_seen,
                           self.config.max_candidates, self._positions if candidates is self._catalog_ids else None)
            if ask is None:
                self._unanswerable(req, f"no candidates: all {len(candidates)} are excluded (the request's exclude, "
                                        f"or exclude_seen={self.config.exclude_seen} over the user's history)")
                continue
            reqs, asks, arrived_at = by_arm.setdefault(self.split.index_of(req.user_id) if self.experiment else 0,
                                                       ([], [], []))
            reqs.append(req)
            asks.append(ask)
            arrived_at.append(arrived)
            fresh += 1
        if not fresh:
            return 0, len(requests)
        self.metrics.batch_size.observe(fresh)
        unmodelled = 0
        for index, (reqs, asks, arrived_at) in by_arm.items():
            arm = self.arms[index]
            dqn = self.dqn.get(arm.policy)
            policy = dqn or (self.fallback_popular if len(self.popularity) else self.fallback_random)
            choices = policy.rank(asks, self.rng, limit=self.config.max_candidates)
            if dqn is None:
                unmodelled += len(asks)
            else:
                self._note_model_use(arm, dqn)
            sent = time.time()
            for req, ask, choice, arrived in zip(reqs, asks, choices, arrived_at):
                self._send(req, ask.state, choice, sent, arm.name or None, arrived)
        self.metrics.fallback.set(unmodelled / fresh)
        return fresh, len(requests) - fresh

    def _note_model_use(self, arm: Arm, dqn: DQNPolicy) -> None:
        headers = dqn.model.headers
        age = time.time() - headers.created_ts
        if self.experiment:
            self._series(self.metrics.arm_model_age, arm.name).set(age)
        # The unlabelled gauge is the oldest model any arm serves (what the staleness alert needs).
        self.metrics.model_age.set(max(time.time() - d.model.headers.created_ts for d in self.dqn.values()))
        if arm.policy in self._first_use_pending:
            self.metrics.model_freshness.set(age)
            self._first_use_pending.discard(arm.policy)

    def _unanswerable(self, req: Request, detail: str) -> None:
        self.consumer.dlq.send("unanswerable", self.settings.topic(REQUESTS), encode(req), key=req.user_id,
                               detail=detail)
        self.metrics.requests.labels("unanswerable").inc()

    def _send(self, req: Request, state: State, choice: SlateChoice, now: float, arm: str | None,
              arrived: float) -> None:
        slate = Slate(request_id=req.request_id, user_id=req.user_id, session_id=req.session_id or req.user_id,
                      ts=now, items=choice.items, scores=choice.scores, propensities=choice.propensities,
                      policy=choice.policy, model_version=choice.model_version, state=state, arm=arm)
        self.producer.produce(self.slates_topic, encode(slate), req.user_id)
        self._answered.inc()
        self._series(self.metrics.slates, choice.policy).inc()
        if arm is not None:
            self._series(self.metrics.arm_slates, arm, choice.policy).inc()
        self.metrics.latency.observe(max(0.0, now - arrived))  # the deadline's clock, not the frontend's

    def _series(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per metric and labels."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- caches and models -------------------------------------------------------------------

    def _catalog(self) -> list[str]:
        """The items cache's ids as one list object, rebuilt only when the cache changed (the
        DQN policy keeps the catalog's item vectors while the object stays the same)."""
        if self._catalog_ids is None:
            self._catalog_ids, self._catalog_positions = list(self.items), None
        return self._catalog_ids

    def _positions(self) -> dict[str, int]:
        """Each catalog id's index in ``_catalog()``: masks cost the excluded items, not the catalog."""
        if self._catalog_positions is None:
            self._catalog_positions = {item: i for i, item in enumerate(self._catalog())}
        return self._catalog_positions

    def _refresh_caches(self, items: list[Received] | None = None) -> None:
        """Take in what the user-state and items readers have (``items``: what was read of
        items already); every CACHE_EVERY_S at most, unless ``items`` are given."""
        now = time.monotonic()
        if items is None and now < self._next_cache:
            return
        self._next_cache = now + CACHE_EVERY_S
        for r in self.users_reader.poll(timeout=0, max_messages=5000):
            if r.event is None:
                self.users.pop(r.key or "", None)
                continue
            state = cast(UserState, r.event)  # the user-state reader decodes UserStates only
            self.users[state.user_id] = state
            self.popularity.observe(state)
        polled = items if items is not None else self.items_reader.poll(timeout=0, max_messages=5000)
        fresh: list[Item] = []
        for r in polled:
            self._catalog_ids = None
            if r.event is None:
                self.items.pop(r.key or "", None)
            else:
                item = cast(Item, r.event)  # the items reader decodes Items only
                self.items[item.item_id] = item
                fresh.append(item)
        if self.dqn and polled:  # only when the catalog changed: this runs every few ms
            categories = {i: item.category for i, item in self.items.items()}
            for dqn in self.dqn.values():
                dqn.categories = categories
                dqn.know_items(fresh)
        self.metrics.cache.labels("items").set(len(self.items))
        self.metrics.cache.labels("users").set(len(self.users))
        self.metrics.cache.labels("popular").set(len(self.popularity))

    def _on_model(self, model: LoadedModel) -> None:
        """A new version of one policy key (the watcher's thread): kept by version, and served
        from the next batch on unless model-decisions names another (``agents.serving``)."""
        self.metrics.models.labels("loaded").inc()
        chosen = self.versions.add(model.headers.policy, model.headers.version, model)
        if chosen is not None:
            self._serve(chosen[1])
        else:
            log.info("loaded %s model version %d; serving version %s as model-decisions says", model.headers.policy,
                     model.headers.version, self.versions.serving.get(model.headers.policy))

    def _on_decision(self, decision: ModelDecision | None, policy: str) -> None:
        """A decision of the gate or an operator (None: a tombstone) for a watched policy."""
        if decision is None:
            chosen = self.versions.forget_decision(policy)
        else:
            log.info("model-decisions: %s serves version %d (%s of version %d by the %s)", policy,
                     decision.serving_version, decision.action, decision.version, decision.by)
            chosen = self.versions.decide(policy, decision.serving_version, decision.good)
        if chosen is not None:
            self._serve(chosen[1])

    def _on_read_to_end(self) -> None:
        for _policy, _version, model in self.versions.read_to_end():
            self._serve(model)

    def _serve(self, model: LoadedModel) -> None:
        """Every arm of the model's policy key serves it from its next batch on."""
        policy = model.headers.policy
        if model.config.content_dim:
            log.warning("model %s %d uses content features; this agent scores it without title vectors",
                        policy, model.headers.version)
        dqn = self.dqn.get(policy)
        if dqn is None:  # a new mapping, not an insert: the request path may be iterating the old one
            # This is the watcher's thread: take one snapshot of the items cache (a C-level copy,
            # whole under the GIL), never iterate the live dict the request thread changes.
            known = list(self.items.values())
            fresh = DQNPolicy(model, self.explorer, {i.item_id: i.category for i in known}, name=policy)
            fresh.know_items(known)
            self.dqn = {**self.dqn, policy: fresh}
            fresh.know_items(list(self.items.values()))  # items that arrived meanwhile
        else:
            dqn.swap(model)
        self._first_use_pending.add(policy)
        # Unlabelled: the version every arm serves at least (0 until each has a model).
        self.metrics.model_version.set(min(self.dqn[a.policy].model.headers.version if a.policy in self.dqn else 0
                                           for a in self.arms))
        if self.experiment:
            for arm in self.arms:
                if arm.policy == policy:
                    self.metrics.arm_model_version.labels(arm.name, policy).set(model.headers.version)
        log.info("serving %s model version %d", policy, model.headers.version)

    def _on_rejected(self, reason: EventError, value: bytes | None, key: str, partition: int, offset: int) -> None:
        self.metrics.models.labels("rejected").inc()
        self.consumer.dlq.send("invalid", self.settings.topic(MODELS), value, key=key,
                               partition=partition, offset=offset, detail=f"model rejected: {reason}")
        log.warning("rejected a %s model message at offset %d: %s", key, offset, reason)


class ModelWatcher:
    """Reads ``models`` from the beginning in a thread; loads each newer version of the policy
    keys it watches (one consumer for all of them, off the request path) and hands it over;
    reports the ones that fail the loader's checks.

    With ``on_decision``, it also follows ``model-decisions`` (``contracts.decisions``): read to
    its end before the first model, so a restarted agent knows the decided version before it
    loads any, then alongside ``models``. ``on_read_to_end`` is called once the models topic is
    read to the end offsets it had at the start. Without the decisions topic (a deployment
    from before it, or no ACL to read it), it says so and hands over models only."""

    def __init__(self, settings: Settings, policies: Sequence[str], on_model: Any, on_rejected: Any, *,
                 on_decision: Any = None, on_read_to_end: Any = None) -> None:
        self.settings, self.on_model, self.on_rejected = settings, on_model, on_rejected
        self.on_decision, self.on_read_to_end = on_decision, on_read_to_end
        self.versions: dict[bytes, int] = {p.encode(): 0 for p in policies}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shelfq-models", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(10)

    def _run(self) -> None:
        # Whatever goes wrong (the broker away, the topic not there yet), the agent keeps serving
        # what it has and the watcher starts again: a thread that died would leave a stale model
        # serving for ever.
        while not self._halt.is_set():
            try:
                self._watch()
            except Exception as exc:  # noqa: BLE001 - logged, retried; the agent keeps serving
                self.error = exc
                log.warning("model watcher: %s; watching again in %.0f s", exc, WATCH_RETRY_S)
                self._halt.wait(WATCH_RETRY_S)

    def _watch(self) -> None:
        big = self.settings.model_max_bytes + (1 << 16)
        consumer = Consumer(self.settings.confluent_config(**{
            "group.id": f"{self.settings.topic_prefix}agent-models", "enable.auto.commit": False,
            # Models are published in transactions (learner.publisher): one that a fenced
            # learner could not commit is never served.
            "isolation.level": "read_committed",
            "fetch.max.bytes": big, "max.partition.fetch.bytes": big, "enable.partition.eof": False}))
        topic = self.settings.topic(MODELS)
        decisions_topic = self.settings.topic(MODEL_DECISIONS)
        try:
            assigned = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in topic_partitions(consumer, topic)]
            marks = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10) for tp in assigned}
            ends = {p: high for p, (low, high) in marks.items() if high > low}
            if self.on_decision is not None:
                assigned += self._decisions_from(consumer, decisions_topic)
            consumer.assign(assigned)
            if not ends and self.on_read_to_end is not None:
                self.on_read_to_end()
            while not self._halt.is_set():
                msg = consumer.poll(0.2)
                if ends:
                    ends = self._short_of(consumer, topic, ends)
                if msg is None or msg.error() is not None or msg.key() not in self.versions:
                    continue
                if msg.topic() == decisions_topic:
                    self._decision(msg)
                    continue
                self.consider(msg)
        finally:
            consumer.close()

    def _decisions_from(self, consumer: Any, topic: str) -> list[TopicPartition]:
        """The watched policies' decisions so far, handed over; then where to follow the topic."""
        try:
            # Followed from where the read to the end starts off: no older decision comes again.
            follow = [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                      for p in topic_partitions(consumer, topic, timeout=5)]
            decided = read_decisions(self.settings)
        except Exception as exc:  # noqa: BLE001 - the topic missing or refused: the agent serves without a gate
            log.warning("cannot read %s (%s): serving each policy's newest model, not the gate's decisions", topic, exc)
            return []
        for policy, decision in decided.items():
            if policy.encode() in self.versions:
                self.on_decision(decision, policy)
        return follow

    def _decision(self, msg: Any) -> None:
        policy = msg.key().decode()
        if msg.value() is None:
            self.on_decision(None, policy)
            return
        try:
            decision = decode_decision(msg.value())
        except EventError as exc:
            log.warning("skipped an invalid %s decision at offset %d: %s", policy, msg.offset(), exc)
            return
        if decision.policy == policy:
            self.on_decision(decision, policy)

    def _short_of(self, consumer: Any, topic: str, ends: dict[int, int]) -> dict[int, int]:
        """The partitions of ``models`` not yet read to their start's end offsets; says once when
        none is left."""
        positions = consumer.position([TopicPartition(topic, p) for p in ends])
        left = {tp.partition: ends[tp.partition] for tp in positions if tp.offset < ends[tp.partition]}
        if not left and self.on_read_to_end is not None:
            self.on_read_to_end()
        return left

    def consider(self, msg: Any) -> None:
        """Load one ``models`` message if it is a newer version of a watched policy and hand it
        over; report it rejected if the loader refuses it (or fails); skip an older one."""
        key: bytes = msg.key()
        policy = key.decode()
        try:
            headers = ModelHeaders.from_headers(msg.headers())
            if headers.version <= self.versions[key]:
                return  # replayed or older: the serving one is newer
            model = load_model(msg.value(), msg.headers(), policy=policy)
        except EventError as exc:
            self.on_rejected(exc, msg.value(), policy, msg.partition(), msg.offset())
            return
        except Exception as exc:  # noqa: BLE001 - a loader bug must not stop the watcher; said, not served
            self.on_rejected(EventError("value", "invalid", f"the loader failed: {exc!r}"), msg.value(), policy,
                             msg.partition(), msg.offset())
            return
        self.on_model(model)  # first: a version whose hand-over failed is read again after the retry
        self.versions[key] = model.headers.version
