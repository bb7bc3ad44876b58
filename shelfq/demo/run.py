"""``shelfq demo``: the whole pipeline on simulated shoppers, then a comparison of policies.

1. Topics under a prefix of this run's own (a fresh start: no old models or offsets).
2. Components as child processes, each with its /metrics: a streams worker (a short
   attribution window, so transitions come within seconds), an agent running an experiment of
   two arms, users split 50/50 by a stable hash of their id (``agents.arms``): ``longterm``
   serves the long-term model, ``myopic`` the myopic one, each explored epsilon-greedily
   (popularity until its first model); and two learners, gamma > 0 and gamma = 0, each
   training on its own arm's transitions only, so each learns from the data it logged.
3. The simulator drives shoppers through the topics; a progress line every ``progress_s``.
   The last ``new_users`` shoppers of the population never come: they stay new to the shop.
4. The learners stop cleanly (a last model each); the newest valid models are read back from
   the ``models`` topic, as an agent reads them.
5. Random, popularity, the myopic and the long-term DQN each serve the same simulated shoppers
   (``evaluation.offline``) over several seeds, in copies of the world as the live run left
   it: returning shoppers (those the live traffic met, with their histories) and new ones.
   The report (``shelfq.demo.report``) has both, and each live arm's figures with intervals.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shelfq.contracts.errors import ConfigError, ShelfqError
from shelfq.contracts.settings import Settings
from shelfq.ops import scrape
from shelfq.ops.components import Component
from shelfq.ops.ports import free_port, port_free
from shelfq.ops.resources import deploy_dir

LONGTERM, MYOPIC = "dqn-longterm", "dqn-myopic"
POLICY_NAMES = ("random", "popularity", "myopic_dqn", "longterm_dqn")
#: The live experiment: arm name -> the policy key it serves (each learner trains on its arm).
ARMS = {"longterm": LONGTERM, "myopic": MYOPIC}
ARMS_SETTING = ",".join(f"{arm}={policy}:0.5" for arm, policy in ARMS.items())
GROUPS = ("returning", "new")


@dataclass(frozen=True)
class DemoConfig:
    """What ``shelfq demo`` runs; the defaults fit 10 minutes on 2 cores."""

    minutes: float = 10.0
    """Wall-clock budget of the whole run; the live traffic gets what setup and evaluation leave."""
    seeds: int = 5
    """Seeds of the policy comparison (each a different draw of sessions and choices of the
    live run's shoppers)."""
    sessions_per_seed: int = 500
    """Simulated sessions per policy, seed and group (returning and new shoppers) in the comparison."""
    gamma: float = 0.9
    """Discount of the long-term learner (the myopic one has 0)."""
    epsilon: float = 0.2
    """Exploration of the serving agent in both arms (each arm's logging policy)."""
    new_users: int = 400
    """Shoppers the live traffic never meets (the population's last ones): the comparison's new
    shoppers. The others are the returning ones; in 10 minutes nearly all of them come."""
    concurrency: int = 32
    """Shopper sessions in progress at once during the live traffic."""
    window_s: float = 5.0
    """Attribution window of the join (shoppers here decide within a second)."""
    report_dir: Path = Path("reports/latest")
    """Where report.md, report.json and the plots go."""
    keep_topics: bool = False
    """Leave this run's topics on the broker for inspection (they are deleted by default)."""
    progress_s: float = 10.0
    """Seconds between progress lines."""
    metrics_port: int = 9105
    """Port of the simulator's /metrics inside the demo (0 turns it off); the components it
    starts get free ports of their own."""
    prometheus: bool = False
    """Start a local Prometheus (the ``prometheus`` binary) that scrapes every component."""

    def __post_init__(self) -> None:
        if self.minutes < 0.5:
            raise ConfigError(f"demo: minutes must be >= 0.5, got {self.minutes}")
        if self.seeds < 2:
            raise ConfigError(f"demo: seeds must be >= 2 for a confidence interval, got {self.seeds}")
        if self.sessions_per_seed < 10:
            raise ConfigError(f"demo: sessions_per_seed must be >= 10, got {self.sessions_per_seed}")
        if not 0 < self.gamma < 1:
            raise ConfigError(f"demo: gamma must be in (0, 1), got {self.gamma}")
        from shelfq.simulator.world import WorldConfig

        if not 10 <= self.new_users <= WorldConfig().users - 10:
            raise ConfigError(f"demo: new_users must leave at least 10 shoppers in each group, got {self.new_users}")

    @property
    def traffic_s(self) -> float:
        """Live traffic: the budget less ~25 s of start-up and stopping and the comparison
        (about 6 ms a simulated session per policy on 2 cores, measured; two groups)."""
        comparison = 0.006 * len(POLICY_NAMES) * len(GROUPS) * self.seeds * self.sessions_per_seed
        return max(20.0, self.minutes * 60 - 25 - comparison)


DEPLOY = deploy_dir()  # the shipped deploy/ (alert rules)


@dataclass
class LiveRun:
    """What the live part measured, for the report."""

    seconds: float = 0.0
    simulation: dict[str, Any] = field(default_factory=dict)
    transitions: int = 0
    model_versions: dict[str, int] = field(default_factory=dict)
    timeline: list[dict[str, float]] = field(default_factory=list)  # progress samples
    experiment: dict[str, Any] = field(default_factory=dict)  # each arm's figures (demo_report.live_arms)


class Demo:
    def __init__(self, settings: Settings, config: DemoConfig, say: Callable[[str], None] = print) -> None:
        self.base, self.config, self.say = settings, config, say
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
        self.settings = Settings.from_plain({**settings.to_plain(), "topic_prefix": f"{settings.topic_prefix}demo-{self.run_id}."})
        self.workdir = Path(".shelfq") / "demo" / self.run_id
        self.components: dict[str, Component] = {}
        self.sim_port = 0
        self.world: Any = None  # the simulator's world after the live run, with the shoppers' histories

    # -- components ------------------------------------------------------------------------

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> Component:
        port = free_port()
        log = self.workdir / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "shelfq", *args, "--topic-prefix", self.settings.topic_prefix, "--metrics-port", str(port)],
            env={**os.environ, "SHELFQ_BOOTSTRAP_SERVERS": self.settings.bootstrap, **env},
            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        self.components[name] = c = Component(name, proc, port, log)
        return c

    def start_components(self) -> None:
        cfg = self.config
        # SlateQ learns what a click is worth from clicked transitions, about 2 per 100 shown
        # items: the learners keep the whole run (~550,000 transitions, 140 MB each) rather than
        # the default 100,000, which would hold ~2,000 clicks. Measured, long-term vs myopic:
        # 1.05x with 100,000; 1.28x and 1.10x in two runs with 600,000 (README, "The demo").
        learner_env = {"SHELFQ_LEARNER_PUBLISH_EVERY_S": "10", "SHELFQ_LEARNER_CHECKPOINT_EVERY_S": "30",
                       "SHELFQ_LEARNER_REPLAY_RATIO": "2", "SHELFQ_LEARNER_REPLAY_CAPACITY": "600000"}
        self._start("streams", ["streams", "--log-level", "warning"],
                    {"SHELFQ_JOIN_WINDOW_S": str(cfg.window_s), "SHELFQ_JOIN_ALLOWED_LATENESS_S": "2",
                     "SHELFQ_JOIN_IDLE_ADVANCE_S": "2"})
        for (arm, policy), gamma in zip(ARMS.items(), (cfg.gamma, 0.0)):
            name = f"learner-{arm}"
            self._start(name, ["learner", "--policy", policy, "--gamma", str(gamma),
                               "--checkpoint-dir", str(self.workdir / name)], {**learner_env, "SHELFQ_LEARNER_ARM": arm})
        self._start("agent", ["agent", "--exploration", "epsilon", "--epsilon", str(cfg.epsilon)],
                    {"SHELFQ_AGENT_ARMS": ARMS_SETTING})

    def start_prometheus(self) -> str:
        """A local Prometheus scraping the components with shelfq's alert rules; its URL."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise ShelfqError("--prometheus needs the prometheus binary: apt-get install prometheus (Debian's package)")
        c = self.components
        targets = [("shelfq-streams", c["streams"].port, {}),
                   ("shelfq-learner", c["learner-longterm"].port, {"policy": LONGTERM}),
                   ("shelfq-learner", c["learner-myopic"].port, {"policy": MYOPIC}),
                   ("shelfq-agent", c["agent"].port, {})]
        if self.sim_port:
            targets.append(("shelfq-simulator", self.sim_port, {}))
        jobs: dict[str, list[str]] = {}
        for job, port, labels in targets:
            jobs.setdefault(job, []).append(f"      - targets: ['127.0.0.1:{port}']\n        labels: {json.dumps(labels)}\n")
        config = self.workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
                          f"rule_files:\n  - {DEPLOY / 'prometheus' / 'alerts.yml'}\nscrape_configs:\n"
                          + "".join(f"  - job_name: {job}\n    static_configs:\n{''.join(entries)}" for job, entries in jobs.items()))
        port = 9090 if port_free(9090) else free_port()
        log = self.workdir / "prometheus.log"
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        self.components["prometheus"] = Component("prometheus", proc, port, log)
        return f"http://127.0.0.1:{port}"

    def check_components(self) -> None:
        for c in self.components.values():
            if not c.alive():
                tail = c.log.read_text(errors="replace")[-2000:]
                raise ShelfqError(f"the {c.name} process exited ({c.proc.returncode}); the end of {c.log}:\n{tail}")

    def stop_components(self, names: list[str]) -> None:
        for name in names:
            c = self.components.get(name)
            if c is not None:
                c.stop()

    # -- the run ---------------------------------------------------------------------------

    def live(self) -> LiveRun:
        from shelfq.demo.report import live_arms
        from shelfq.ops.topic_admin import ensure_topics
        from shelfq.simulator.runner import SimulateConfig, Simulation
        from shelfq.simulator.world import WorldConfig

        cfg = self.config
        self.workdir.mkdir(parents=True, exist_ok=True)
        ensure_topics(self.settings)
        self.say(f"topics: prefix {self.settings.topic_prefix} (logs and checkpoints in {self.workdir})")
        self.start_components()
        sim = Simulation(self.settings, SimulateConfig(duration_s=cfg.traffic_s, concurrency=cfg.concurrency,
                                                       slate_timeout_s=1.0, metrics_port=cfg.metrics_port,
                                                       users=WorldConfig().users - cfg.new_users))
        self.sim_port = cfg.metrics_port
        if self.sim_port:
            try:
                sim.metrics.serve(self.sim_port)
            except OSError:  # taken (another demo?): any free port will do
                self.sim_port = free_port()
                sim.metrics.serve(self.sim_port)
        self.say("metrics: " + ", ".join(f"{c.name} :{c.port}" for c in self.components.values())
                 + (f", simulator :{self.sim_port}" if self.sim_port else ""))
        if cfg.prometheus:
            self.say(f"Prometheus: {self.start_prometheus()} (scrapes every component; the alert rules are loaded)")
        self.say(f"live traffic for {cfg.traffic_s:.0f} s: {cfg.concurrency} concurrent shoppers; agent arms "
                 f"{ARMS_SETTING} by user hash (epsilon {cfg.epsilon}); learners {LONGTERM} (gamma {cfg.gamma}) on the "
                 f"longterm arm and {MYOPIC} (gamma 0) on the myopic arm")
        run = LiveRun()
        started = time.monotonic()
        asyncio.run(self._simulate_with_progress(sim, run, started))
        run.seconds = time.monotonic() - started
        run.experiment = live_arms(sim.stats.session_log, started, time.monotonic())
        self.say("traffic done; letting the join close the last windows, then stopping the learners (each publishes a last model)")
        time.sleep(cfg.window_s + 4)
        self.check_components()
        run.transitions = int(scrape.series(self.components["streams"].port).get("shelfq_streams_transitions_total", 0))
        self.stop_components(["learner-longterm", "learner-myopic"])
        self.stop_components(["agent", "streams"])
        run.simulation = sim.stats.summary()
        self.world = returning_world(sim.world, sim.histories)
        return run

    async def _simulate_with_progress(self, sim: Any, run: LiveRun, started: float) -> None:
        task = asyncio.create_task(sim.run())
        last_events, last_t, last_sessions, last_reward = 0, started, 0, 0.0
        logged = 0  # sessions of the simulator's log already in a progress interval
        while not task.done():
            await asyncio.wait([task], timeout=self.config.progress_s)
            self.check_components()
            now = time.monotonic()
            s, m = sim.stats, self._component_figures()
            rate = (s.events_sent - last_events) / max(1e-9, now - last_t)
            window = (s.reward - last_reward) / max(1, s.sessions - last_sessions)  # sessions ended in this interval
            last_events, last_t, last_sessions, last_reward = s.events_sent, now, s.sessions, s.reward
            ended, logged = s.session_log[logged:], len(s.session_log)
            per_arm = {}
            for arm in ARMS:  # each arm's sessions that ended in this interval
                mine = [r.reward for r in ended if r.arm == arm]
                if mine:
                    per_arm[f"arm_reward_per_session_interval_{arm}"] = round(sum(mine) / len(mine), 4)
            run.timeline.append({"t": round(now - started, 1), "events_per_s": round(rate, 1), "ctr": round(s.ctr, 4),
                                 "reward_per_session": round(s.reward_per_session, 4), "sessions": s.sessions,
                                 "reward_per_session_interval": round(window, 4), **per_arm,
                                 **m})
            run.model_versions = {LONGTERM: int(m["longterm_version"]), MYOPIC: int(m["myopic_version"])}
            arms = " ".join(f"{arm} {per_arm[f'arm_reward_per_session_interval_{arm}']:.2f}" for arm in ARMS
                            if f"arm_reward_per_session_interval_{arm}" in per_arm)
            self.say(f"[{now - started:5.0f}s] {rate:6.0f} events/s | CTR {s.ctr:.3f} | reward/session "
                     f"{s.reward_per_session:5.2f} ({arms or 'no arm yet'} this interval) | {s.sessions} sessions | "
                     f"models v{int(m['longterm_version'])} long-term, v{int(m['myopic_version'])} myopic | learner lag "
                     f"{int(m['learner_lag'])} | transitions {int(m['transitions'])} | slate timeouts {s.timeouts}")
        task.result()

    def _component_figures(self) -> dict[str, float]:
        lt, my = (scrape.series(self.components[n].port) for n in ("learner-longterm", "learner-myopic"))
        st = scrape.series(self.components["streams"].port)
        return {"longterm_version": lt.get("shelfq_learner_model_version", 0.0),
                "myopic_version": my.get("shelfq_learner_model_version", 0.0),
                "learner_lag": lt.get("shelfq_consumer_lag", 0.0) + my.get("shelfq_consumer_lag", 0.0),
                "longterm_loss": lt.get("shelfq_learner_loss", 0.0),
                "transitions": st.get("shelfq_streams_transitions_total", 0.0)}

    def compare(self) -> dict[str, Any]:
        from shelfq.agents.policies import DQNPolicy, Explorer, Popularity, PopularityPolicy, RandomPolicy
        from shelfq.contracts.events import UserState, decode
        from shelfq.contracts.topics import USER_STATE
        from shelfq.evaluation.logs import newest_model, read_to_end
        from shelfq.evaluation.offline import compare

        cfg = self.config
        # Popularity as the agent's fallback had it at the end: from the live run's user-state.
        states = [decode(msg.value(), UserState) for msg in read_to_end(self.settings, USER_STATE) if msg.value() is not None]
        counts = Popularity()
        for state in states:
            counts.observe(state)

        factories: dict[str, Callable[[], Any]] = {
            "random": RandomPolicy, "popularity": lambda: PopularityPolicy(copy.deepcopy(counts), Explorer("greedy"))}
        versions: dict[str, int] = {}
        for name, policy in (("myopic_dqn", MYOPIC), ("longterm_dqn", LONGTERM)):
            try:
                model, _rejected = newest_model(self.settings, policy)
            except ShelfqError as exc:
                self.say(f"no {policy} model to compare ({exc}); the comparison leaves it out")
                continue
            versions[name] = model.headers.version
            factories[name] = functools.partial(DQNPolicy, model, Explorer("greedy"), name=model.headers.policy)
        groups = shopper_groups(self.world)
        self.say(f"comparing {', '.join(factories)} on {cfg.seeds} seeds x {cfg.sessions_per_seed} simulated sessions of "
                 f"{len(groups['returning'])} returning shoppers (their live histories) and as many of "
                 f"{len(groups['new'])} new ones (greedy slates; popularity from the live run's {len(states)} user-state records)")
        started = time.monotonic()
        comparison = {group: {"users": len(users), "policies": compare(factories, range(cfg.seeds), cfg.sessions_per_seed,
                                                                          world=self.world, users=users)}
                      for group, users in groups.items()}
        return {"policies": comparison["returning"]["policies"], "comparison": comparison, "model_versions": versions,
                "comparison_s": round(time.monotonic() - started, 1)}

    def cleanup(self) -> None:
        for c in self.components.values():
            if c.alive():
                c.proc.kill()
                c.proc.wait(10)
        if not self.config.keep_topics:
            from shelfq.contracts.topics import topic_specs
            from shelfq.ops.topic_admin import delete_topics

            try:
                delete_topics(self.settings, [spec.name for spec in topic_specs(self.settings).values()])
            except Exception as exc:  # noqa: BLE001 - a failed cleanup must not hide the run's result
                self.say(f"could not delete this run's topics ({exc}); prefix {self.settings.topic_prefix}")


def returning_world(world: Any, histories: dict[int, list[Any]]) -> Any:
    """A copy of the simulator's world as the live run left it (drifted interests) holding each
    shopper's history as the shop saw it: the returning shoppers of the comparison. Its clock
    starts after the newest interaction, so what the comparison appends comes later."""
    live = copy.deepcopy(world)
    live.histories = {user: list(h) for user, h in histories.items()}
    newest = [i.ts for h in histories.values() for i in h]
    live.clock = max(newest, default=live.clock)
    return live


def shopper_groups(world: Any) -> dict[str, list[int]]:
    """Returning shoppers (those with a live session; their histories are in the world) and
    new ones (the rest of the population).

    >>> from shelfq.simulator.world import World, WorldConfig
    >>> w = World(WorldConfig(items=20, users=5))
    >>> w.histories = {3: [], 1: []}
    >>> shopper_groups(w)
    {'returning': [1, 3], 'new': [0, 2, 4]}
    """
    came = set(world.histories)
    return {"returning": sorted(came), "new": [u for u in range(world.config.users) if u not in came]}


def run_demo(settings: Settings, config: DemoConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything; the report's dict (also written to ``config.report_dir``)."""
    from shelfq.demo.report import write_report

    demo = Demo(settings, config, say)
    try:
        live = demo.live()
        result = demo.compare()
    finally:
        demo.cleanup()
    result["live"] = {"seconds": round(live.seconds, 1), "transitions": live.transitions,
                      "model_versions": live.model_versions, **live.simulation, "experiment": live.experiment}
    result["settings"] = {"minutes": config.minutes, "seeds": config.seeds, "sessions_per_seed": config.sessions_per_seed,
                          "gamma": config.gamma, "epsilon": config.epsilon, "new_users": config.new_users,
                          "arms": ARMS_SETTING, "run": demo.run_id}
    paths = write_report(result, live.timeline, config.report_dir)
    say(f"report: {paths[0]}")
    return result
