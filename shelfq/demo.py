"""``shelfq demo``: the whole pipeline on simulated shoppers, then a comparison of policies.

1. Topics under a prefix of this run's own (a fresh start: no old models or offsets).
2. Components as child processes, each with its /metrics: a streams worker (a short
   attribution window, so transitions come within seconds), two learners training side by side
   on the same transitions (off-policy: gamma > 0 and gamma = 0), and an agent serving the
   long-term model with epsilon-greedy exploration (popularity until the first model).
3. The simulator drives shoppers through the topics; a progress line every ``progress_s``.
4. The learners stop cleanly (a last model each); the newest valid models are read back from
   the ``models`` topic, as an agent reads them.
5. Random, popularity, the myopic and the long-term DQN each serve the same simulated shoppers
   (``evaluation.offline``) over several seeds; the report is written (``shelfq.demo_report``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.errors import ConfigError, ShelfqError
from contracts.settings import Settings
from shelfq.ports import free_port, port_free

LONGTERM, MYOPIC = "dqn-longterm", "dqn-myopic"
POLICY_NAMES = ("random", "popularity", "myopic_dqn", "longterm_dqn")


@dataclass(frozen=True)
class DemoConfig:
    """What ``shelfq demo`` runs; the defaults fit 10 minutes on 2 cores."""

    minutes: float = 10.0
    """Wall-clock budget of the whole run; the live traffic gets what setup and evaluation leave."""
    seeds: int = 5
    """Seeds of the policy comparison (each a different population of shoppers)."""
    sessions_per_seed: int = 1000
    """Simulated sessions per policy and seed in the comparison."""
    gamma: float = 0.9
    """Discount of the long-term learner (the myopic one has 0)."""
    epsilon: float = 0.2
    """Exploration of the serving agent (the logging policy both learners learn from)."""
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

    @property
    def traffic_s(self) -> float:
        """Live traffic: the budget less ~25 s of start-up and stopping and the comparison
        (about 6 ms a simulated session per policy on 2 cores, measured)."""
        comparison = 0.006 * len(POLICY_NAMES) * self.seeds * self.sessions_per_seed
        return max(20.0, self.minutes * 60 - 25 - comparison)


DEPLOY = Path(__file__).resolve().parents[1] / "deploy"  # the repository's deploy/ (alert rules)


def scrape(port: int) -> dict[str, float]:
    """A component's /metrics as {series name: sum over its labels}; empty if unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


@dataclass
class Component:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@dataclass
class LiveRun:
    """What the live part measured, for the report."""

    seconds: float = 0.0
    simulation: dict[str, Any] = field(default_factory=dict)
    transitions: int = 0
    model_versions: dict[str, int] = field(default_factory=dict)
    timeline: list[dict[str, float]] = field(default_factory=list)  # progress samples


class Demo:
    def __init__(self, settings: Settings, config: DemoConfig, say: Callable[[str], None] = print) -> None:
        self.base, self.config, self.say = settings, config, say
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
        self.settings = Settings.from_plain({**settings.to_plain(), "topic_prefix": f"{settings.topic_prefix}demo-{self.run_id}."})
        self.workdir = Path(".shelfq") / "demo" / self.run_id
        self.components: dict[str, Component] = {}
        self.sim_port = 0

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
        for name, policy, gamma in (("learner-longterm", LONGTERM, cfg.gamma), ("learner-myopic", MYOPIC, 0.0)):
            self._start(name, ["learner", "--policy", policy, "--gamma", str(gamma),
                               "--checkpoint-dir", str(self.workdir / name)], learner_env)
        self._start("agent", ["agent", "--policy", LONGTERM, "--exploration", "epsilon", "--epsilon", str(cfg.epsilon)], {})

    def start_prometheus(self) -> str:
        """A local Prometheus scraping the components with shelfq's alert rules; its URL."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise ShelfqError("--prometheus needs the prometheus binary: apt-get install prometheus (Debian's package)")
        c = self.components
        targets = [("shelfq-streams", c["streams"].port, {}),
                   ("shelfq-learner", c["learner-longterm"].port, {"policy": LONGTERM}),
                   ("shelfq-learner", c["learner-myopic"].port, {"policy": MYOPIC}),
                   ("shelfq-agent", c["agent"].port, {"policy": LONGTERM})]
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
        from shelfq.topic_admin import ensure_topics
        from simulator.runner import SimulateConfig, Simulation

        cfg = self.config
        self.workdir.mkdir(parents=True, exist_ok=True)
        ensure_topics(self.settings)
        self.say(f"topics: prefix {self.settings.topic_prefix} (logs and checkpoints in {self.workdir})")
        self.start_components()
        sim = Simulation(self.settings, SimulateConfig(duration_s=cfg.traffic_s, concurrency=cfg.concurrency,
                                                       slate_timeout_s=1.0, metrics_port=cfg.metrics_port))
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
        self.say(f"live traffic for {cfg.traffic_s:.0f} s: {cfg.concurrency} concurrent shoppers; agent serves "
                 f"{LONGTERM} (epsilon {cfg.epsilon}); learners {LONGTERM} (gamma {cfg.gamma}) and {MYOPIC} (gamma 0)")
        run = LiveRun()
        started = time.monotonic()
        asyncio.run(self._simulate_with_progress(sim, run, started))
        run.seconds = time.monotonic() - started
        self.say("traffic done; letting the join close the last windows, then stopping the learners (each publishes a last model)")
        time.sleep(cfg.window_s + 4)
        self.check_components()
        run.transitions = int(scrape(self.components["streams"].port).get("shelfq_streams_transitions_total", 0))
        self.stop_components(["learner-longterm", "learner-myopic"])
        self.stop_components(["agent", "streams"])
        run.simulation = sim.stats.summary()
        return run

    async def _simulate_with_progress(self, sim: Any, run: LiveRun, started: float) -> None:
        task = asyncio.create_task(sim.run())
        last_events, last_t, last_sessions, last_reward = 0, started, 0, 0.0
        while not task.done():
            await asyncio.wait([task], timeout=self.config.progress_s)
            self.check_components()
            now = time.monotonic()
            s, m = sim.stats, self._component_figures()
            rate = (s.events_sent - last_events) / max(1e-9, now - last_t)
            window = (s.reward - last_reward) / max(1, s.sessions - last_sessions)  # sessions ended in this interval
            last_events, last_t, last_sessions, last_reward = s.events_sent, now, s.sessions, s.reward
            run.timeline.append({"t": round(now - started, 1), "events_per_s": round(rate, 1), "ctr": round(s.ctr, 4),
                                 "reward_per_session": round(s.reward_per_session, 4), "sessions": s.sessions,
                                 "reward_per_session_interval": round(window, 4),
                                 **m})
            run.model_versions = {LONGTERM: int(m["longterm_version"]), MYOPIC: int(m["myopic_version"])}
            self.say(f"[{now - started:5.0f}s] {rate:6.0f} events/s | CTR {s.ctr:.3f} | reward/session "
                     f"{s.reward_per_session:5.2f} | {s.sessions} sessions | models v{int(m['longterm_version'])} "
                     f"long-term, v{int(m['myopic_version'])} myopic | learner lag {int(m['learner_lag'])} | "
                     f"transitions {int(m['transitions'])} | slate timeouts {s.timeouts}")
        task.result()

    def _component_figures(self) -> dict[str, float]:
        lt, my = (scrape(self.components[n].port) for n in ("learner-longterm", "learner-myopic"))
        st = scrape(self.components["streams"].port)
        return {"longterm_version": lt.get("shelfq_learner_model_version", 0.0),
                "myopic_version": my.get("shelfq_learner_model_version", 0.0),
                "learner_lag": lt.get("shelfq_consumer_lag", 0.0) + my.get("shelfq_consumer_lag", 0.0),
                "longterm_loss": lt.get("shelfq_learner_loss", 0.0),
                "transitions": st.get("shelfq_streams_transitions_total", 0.0)}

    def compare(self) -> dict[str, Any]:
        from agents.policies import DQNPolicy, Explorer, Popularity, PopularityPolicy, RandomPolicy
        from contracts.events import UserState, decode
        from contracts.topics import USER_STATE
        from evaluation.logs import newest_model, read_to_end
        from evaluation.offline import compare

        cfg = self.config
        # Popularity as the agent's fallback had it at the end: from the live run's user-state.
        states = [decode(msg.value(), UserState) for msg in read_to_end(self.settings, USER_STATE) if msg.value() is not None]

        def popularity() -> PopularityPolicy:
            counts = Popularity()
            for state in states:
                counts.observe(state)
            return PopularityPolicy(counts, Explorer("greedy"))

        factories: dict[str, Callable[[], Any]] = {"random": RandomPolicy, "popularity": popularity}
        versions: dict[str, int] = {}
        for name, policy in (("myopic_dqn", MYOPIC), ("longterm_dqn", LONGTERM)):
            try:
                model, _rejected = newest_model(self.settings, policy)
            except ShelfqError as exc:
                self.say(f"no {policy} model to compare ({exc}); the comparison leaves it out")
                continue
            versions[name] = model.headers.version
            factories[name] = lambda model=model: DQNPolicy(model, Explorer("greedy"))
        self.say(f"comparing {', '.join(factories)} on {cfg.seeds} seeds x {cfg.sessions_per_seed} simulated sessions "
                 f"(greedy slates; popularity from the live run's {len(states)} user-state records)")
        started = time.monotonic()
        table = compare(factories, seeds=range(cfg.seeds), sessions=cfg.sessions_per_seed)
        return {"policies": table, "model_versions": versions, "comparison_s": round(time.monotonic() - started, 1)}

    def cleanup(self) -> None:
        for c in self.components.values():
            if c.alive():
                c.proc.kill()
                c.proc.wait(10)
        if not self.config.keep_topics:
            from contracts.topics import topic_specs
            from shelfq.topic_admin import delete_topics

            try:
                delete_topics(self.settings, [spec.name for spec in topic_specs(self.settings).values()])
            except Exception as exc:  # noqa: BLE001 - a failed cleanup must not hide the run's result
                self.say(f"could not delete this run's topics ({exc}); prefix {self.settings.topic_prefix}")


def run_demo(settings: Settings, config: DemoConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything; the report's dict (also written to ``config.report_dir``)."""
    from shelfq.demo_report import write_report

    demo = Demo(settings, config, say)
    try:
        live = demo.live()
        result = demo.compare()
    finally:
        demo.cleanup()
    result["live"] = {"seconds": round(live.seconds, 1), "transitions": live.transitions,
                      "model_versions": live.model_versions, **live.simulation}
    result["settings"] = {"minutes": config.minutes, "seeds": config.seeds, "sessions_per_seed": config.sessions_per_seed,
                          "gamma": config.gamma, "epsilon": config.epsilon, "run": demo.run_id}
    paths = write_report(result, live.timeline, config.report_dir)
    say(f"report: {paths[0]}")
    return result
