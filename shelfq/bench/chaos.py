"""``shelfq bench chaos``: the real components under faults, against a private embedded broker,
with steady seeded load whose output is known; then what came out is counted
(``shelfq.bench.chaos_checks``).

The run starts a broker of its own (own ``SHELFQ_HOME``, ports and topic prefix; a broker
already running is never touched), a ``shelfq streams`` worker, a ``shelfq learner`` and a
``shelfq agent`` as subprocesses, and the load (``shelfq.bench.chaos_inputs.Load``). Then, one after
another in a seeded order and after seeded gaps of steady load, the faults of
``ChaosConfig.faults``; after each it waits until every component it touched makes progress
again (transitions sent, transitions taken in, requests answered) and notes how long that took.
A component that exits when nobody stopped it is a crash: noted, and started again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelfq.ops import scrape

FAULTS = ("kill-streams", "kill-learner", "kill-learner-checkpoint", "kill-agent", "replica-streams", "replica-agent",
          "stop-learner", "broker-term", "broker-kill", "hostile")
#: The metric that shows each kind of component making progress.
PROGRESS = {"streams": ("shelfq_streams_transitions_total", ""), "learner": ("shelfq_learner_transitions_total", ""),
            "agent": ("shelfq_agent_requests_total", 'outcome="answered"')}
#: The join's short windows (seconds, not the default half hour) and a small learner.
ENV = {
    "SHELFQ_JOIN_WINDOW_S": "2", "SHELFQ_JOIN_ALLOWED_LATENESS_S": "0", "SHELFQ_JOIN_IDLE_ADVANCE_S": "2",
    "SHELFQ_STREAMS_TICK_S": "0.2", "SHELFQ_MAX_EVENT_BYTES": "65536",
    "SHELFQ_LEARNER_HASH_BUCKETS": "1024", "SHELFQ_LEARNER_CONTEXT_BUCKETS": "16", "SHELFQ_LEARNER_HIDDEN_DIM": "16",
    "SHELFQ_LEARNER_EMBEDDING_DIM": "16", "SHELFQ_LEARNER_BATCH_SIZE": "32", "SHELFQ_LEARNER_LEARNING_STARTS": "32",
    "SHELFQ_LEARNER_REPLAY_CAPACITY": "5000", "SHELFQ_LEARNER_PUBLISH_EVERY_STEPS": "8",
    "SHELFQ_LEARNER_CHECKPOINT_EVERY_S": "1", "SHELFQ_LEARNER_DEVICE": "cpu", "SHELFQ_LEARNER_THREADS": "1",
    # Every request is to be answered, however long a fault held it up: none may be skipped.
    "SHELFQ_AGENT_DEADLINE_S": "3600",
}


@dataclass(frozen=True)
class ChaosConfig:
    """What ``shelfq bench chaos`` runs; the defaults take about 6 minutes on 2 cores."""

    seed: int = 14
    """Seeds the load, the order of the faults and the gaps between them."""
    faults: str = ",".join(FAULTS)
    """Comma-separated faults, run one at a time in a seeded order: kill-streams, kill-learner,
    kill-agent (SIGKILL, then a fresh process), kill-learner-checkpoint (SIGKILL while the learner
    writes a checkpoint), replica-streams and replica-agent (a second replica joins, the first is
    SIGSTOPped for stop_s so the group hands its partitions over, SIGCONT, the second leaves),
    stop-learner (SIGSTOP for stop_s, then SIGCONT), broker-term and broker-kill (the broker
    stopped with SIGTERM or SIGKILL, started again after outage_s), hostile (hostile messages on
    every topic a component reads)."""
    gap_s: float = 8.0
    """Mean seconds of steady load before each fault (each gap uniform in 0.5 to 1.5 times it)."""
    sessions_per_s: float = 4.0
    """Synthetic shoppers started per second (two slates of three items each)."""
    requests_per_s: float = 5.0
    """Requests per second to the agent."""
    stop_s: float = 15.0
    """How long a SIGSTOPped component stays stopped: past its 10 s session timeout."""
    outage_s: float = 10.0
    """How long the broker stays down."""
    partitions: int = 3
    """Partitions of the user-keyed topics."""
    recovery_timeout_s: float = 120.0
    """A component that makes no progress for this long after a fault has not recovered."""
    settle_timeout_s: float = 180.0
    """At the end, how long to wait for every expected output and a consumer lag of 0."""
    work_dir: str = ""
    """Where the broker's data, the checkpoints and the components' logs go (default: a fresh
    temporary directory, kept and named at the end)."""

    def __post_init__(self) -> None:
        unknown = set(self.fault_list) - set(FAULTS)
        if unknown or not self.fault_list:
            raise ValueError(f"faults: unknown {sorted(unknown)}; choose from {', '.join(FAULTS)}")
        for name in ("gap_s", "sessions_per_s", "requests_per_s", "stop_s", "outage_s", "recovery_timeout_s",
                     "settle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.partitions < 2:
            raise ValueError(f"partitions must be >= 2 (two replicas share them), got {self.partitions}")

    @property
    def fault_list(self) -> list[str]:
        return [f.strip() for f in self.faults.split(",") if f.strip()]

    @classmethod
    def quick(cls, work_dir: str = "") -> ChaosConfig:
        """The short seeded run of the test suite (about a minute and a half on 2 cores)."""
        return cls(faults="hostile,kill-streams,kill-learner-checkpoint,kill-agent", gap_s=1.0, settle_timeout_s=120.0,
                   work_dir=work_dir)


def _metrics_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999): a component binds it only once
    its imports are done (half a minute for the learner under load), and an ephemeral port may
    be taken by then by any process's outgoing connection."""
    import socket

    while True:
        port = random.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def _stderr_tail(process: subprocess.Popen) -> str:
    """The end of what a finished child process (started with ``stderr=PIPE``, text) wrote to stderr."""
    return process.stderr.read()[-2000:] if process.stderr is not None else ""


class Component:
    """One ``shelfq <command>`` subprocess with its own /metrics port and log."""

    def __init__(self, role: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.role, self.kind, self.command, self.env, self.log = role, role.split("-")[0], command, env, log
        self.port = _metrics_port()
        self.expected_exit = False
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "shelfq", *command, "--metrics-port", str(self.port)],
                                     env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def metric(self, name: str, label: str = "") -> float:
        """The sum of a metric's series whose labels contain ``label``; 0 if unreachable."""
        return scrape.metric(self.port, name, label)

    def progress(self) -> float:
        return self.metric(*PROGRESS[self.kind])

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.expected_exit = True
        self.signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then SIGKILL if it does not go; the exit status (-9 if it had to be killed)."""
        self.expected_exit = True
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)


class Chaos:
    """The run: broker, components, load, faults; ``run()`` returns the figures."""

    def __init__(self, config: ChaosConfig, report: Callable[[str], None] = lambda _line: None) -> None:
        from shelfq.contracts.settings import Settings
        from shelfq.ops.ports import free_port

        self.config, self.report = config, report
        self.dir = Path(config.work_dir or tempfile.mkdtemp(prefix="shelfq-chaos-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "SHELFQ_BOOTSTRAP_SERVERS"}
        env.update(ENV, SHELFQ_HOME=str(self.dir / "home"), SHELFQ_BROKER_PORT=str(free_port()),
                   SHELFQ_CONTROLLER_PORT=str(free_port()), SHELFQ_PARTITIONS=str(config.partitions),
                   SHELFQ_TOPIC_PREFIX="chaos.", SHELFQ_BROKER_OUTAGE_S="300",
                   SHELFQ_LEARNER_CHECKPOINT_DIR=str(self.dir / "checkpoints"))
        self.env = env
        self.settings = Settings.from_env(env)
        self.components: dict[str, Component] = {}
        self.crashes: list[dict[str, Any]] = []
        self.recoveries: list[dict[str, Any]] = []
        self.notes: dict[str, Any] = {}
        self.started = 0

    # -- processes ---------------------------------------------------------------------------

    def _shelfq(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shelfq", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start_broker(self) -> None:
        done = self._shelfq("broker", "start")
        if done.returncode != 0:
            raise RuntimeError(f"chaos: the private broker did not start: {done.stderr[-2000:]}")

    def start(self, role: str) -> Component:
        kind = role.split("-")[0]
        command = {"streams": ["streams", "--log-level", "info"], "learner": ["learner"],
                   "agent": ["agent", "--replica", "1" if role.endswith("-2") else "0"]}[kind]
        self.started += 1
        c = Component(role, command, self.env, self.dir / f"{role}.{self.started}.log")
        self.components[role] = c
        return c

    def watch_crashes(self) -> None:
        """A component that exited though nobody stopped it is a crash: noted, started again."""
        for role, c in list(self.components.items()):
            code = c.proc.poll()
            if code is not None and not c.expected_exit:
                tail = c.log.read_text(errors="replace")[-1500:]
                if "Address already in use" in tail:  # its metrics port was taken meanwhile: ours, not its
                    self.notes["port_clashes"] = self.notes.get("port_clashes", 0) + 1
                    self.start(role)
                    continue
                self.crashes.append({"component": role, "exit": code, "log": str(c.log), "tail": tail})
                self.report(f"chaos: {role} exited with {code} unasked: a crash ({c.log})")
                self.start(role)

    def wait_progress(self, fault: str, targets: dict[str, float], since: float) -> None:
        """Until each role's progress passes its baseline: note each one's recovery time."""
        pending = dict(targets)
        deadline = since + self.config.recovery_timeout_s
        while pending:
            self.watch_crashes()
            for role, baseline in list(pending.items()):
                if self.components[role].progress() > baseline:
                    self.recoveries.append({"fault": fault, "component": role,
                                            "recovery_s": round(time.monotonic() - since, 2)})
                    del pending[role]
            if time.monotonic() > deadline:
                for role in pending:
                    self.recoveries.append({"fault": fault, "component": role, "recovery_s": None})
                    self.report(f"chaos: {role} did not recover from {fault} within {self.config.recovery_timeout_s:.0f} s")
                return
            time.sleep(0.2)

    def idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.watch_crashes()
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    # -- faults ------------------------------------------------------------------------------

    def fault(self, name: str) -> None:
        self.report(f"chaos: {name}")
        if name.startswith("kill-"):
            role = name.split("-")[1]
            if name == "kill-learner-checkpoint":
                self._kill_learner_in_checkpoint()
            else:
                self.components[role].kill9()
            since = time.monotonic()
            self.start(role)
            self.wait_progress(name, {role: 0.0}, since)
        elif name.startswith("replica-"):
            self._replica(name, name.split("-")[1])
        elif name == "stop-learner":
            c = self.components["learner"]
            baseline = c.progress()
            c.signal(signal.SIGSTOP)
            time.sleep(self.config.stop_s)
            c.signal(signal.SIGCONT)
            self.wait_progress(name, {"learner": baseline}, time.monotonic())
        elif name.startswith("broker-"):
            self._broker_down(kill=name == "broker-kill")
            time.sleep(self.config.outage_s)
            # Taken with the broker down: what they sent while it stopped is no recovery.
            baselines = {role: c.progress() for role, c in self.components.items()}
            starting = subprocess.Popen([sys.executable, "-m", "shelfq", "broker", "start"], env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # Recovery counts from the moment the broker takes connections again.
            self.wait_progress(name, baselines, self._broker_listening(starting))
            if starting.wait(240) != 0:
                raise RuntimeError(f"chaos: the broker did not start again: {_stderr_tail(starting)}")
        elif name == "hostile":
            baselines = {role: c.progress() for role, c in self.components.items()}
            assert self.load is not None  # faults come between the load's start and stop (run)
            n = self.load.inject_hostile(len(self.notes.setdefault("hostile_rounds", [])))
            self.notes["hostile_rounds"].append(n)
            self.wait_progress(name, baselines, time.monotonic())

    def _kill_learner_in_checkpoint(self) -> None:
        """SIGKILL the learner while it writes a checkpoint: the moment its work directory
        (``.partial-*``, learner/checkpoint.py) appears; it writes one every second here."""
        root = Path(self.env["SHELFQ_LEARNER_CHECKPOINT_DIR"])
        learner = self.components["learner"]
        deadline = time.monotonic() + 30
        caught = False
        while time.monotonic() < deadline and not caught:
            try:
                caught = any(e.name.startswith(".partial-") for e in os.scandir(root))
            except FileNotFoundError:
                pass
            if not caught:
                time.sleep(0.0005)
        learner.kill9()
        left = sorted(e.name for e in os.scandir(root) if e.name.startswith(".partial-")) if root.is_dir() else []
        self.notes["learner_killed_mid_checkpoint"] = bool(caught and left)
        self.notes["learner_partial_checkpoint_left"] = left

    def _replica(self, fault: str, kind: str) -> None:
        first = self.components[kind]
        second = self.start(f"{kind}-2")
        self.wait_progress(f"{fault}:join", {f"{kind}-2": 0.0}, second.started_at)
        baseline = first.progress()
        first.signal(signal.SIGSTOP)
        time.sleep(self.config.stop_s)  # past the session timeout: the group hands its partitions over
        first.signal(signal.SIGCONT)
        self.wait_progress(f"{fault}:sigcont", {kind: baseline}, time.monotonic())
        code = second.stop()
        del self.components[f"{kind}-2"]
        self.notes.setdefault("replica_exit_codes", {})[f"{kind}-2"] = code
        self.wait_progress(f"{fault}:leave", {kind: first.progress()}, time.monotonic())

    def _broker_listening(self, starting: subprocess.Popen) -> float:
        """When (monotonic) the broker's port first took a connection."""
        import socket

        port = int(self.env["SHELFQ_BROKER_PORT"])
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and starting.poll() in (None, 0):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return time.monotonic()
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"chaos: the broker did not come back: {_stderr_tail(starting)}")

    def _broker_down(self, kill: bool) -> None:
        if not kill:
            done = self._shelfq("broker", "stop")
            if done.returncode != 0:
                raise RuntimeError(f"chaos: the broker did not stop: {done.stderr[-2000:]}")
            return
        from shelfq.ops.broker import EmbeddedBroker

        pid = EmbeddedBroker(self.settings).status().pid
        if pid is None:
            raise RuntimeError("chaos: no broker to kill")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while EmbeddedBroker(self.settings).status().running and time.monotonic() < deadline:
            time.sleep(0.1)

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from shelfq.bench.chaos_checks import account, produce_catalog, settle
        from shelfq.bench.chaos_inputs import Load, seeded_gaps
        from shelfq.ops.topic_admin import ensure_topics

        t0 = time.monotonic()
        self.start_broker()
        self.load: Load | None = None
        codes: dict[str, int] = {}
        try:
            ensure_topics(self.settings)
            produce_catalog(self.settings)
            for role in ("streams", "learner", "agent"):
                self.start(role)
            launched = time.monotonic()
            self.load = Load(self.settings, self.config.seed, self.config.sessions_per_s, self.config.requests_per_s)
            self.load.start()
            self.wait_progress("start", dict.fromkeys(("streams", "learner", "agent"), 0.0), launched)
            faults = self.config.fault_list
            random.Random(self.config.seed).shuffle(faults)
            for fault, gap in zip(faults, seeded_gaps(self.config.seed, len(faults), self.config.gap_s), strict=True):
                self.idle(gap)
                self.fault(fault)
            self.idle(self.config.gap_s)
            self.load.stop()
            self.report(f"chaos: faults done after {time.monotonic() - t0:.0f} s; settling")
            settled = settle(self, self.config.settle_timeout_s)
            self.watch_crashes()
        finally:
            if self.load is not None:
                self.load.halt()
            for role, c in list(self.components.items()):
                codes[role] = c.stop()
        figures = account(self, settled)
        self._shelfq("broker", "stop")
        figures.update(faults=faults, stop_exit_codes=codes, wall_s=round(time.monotonic() - t0, 1),
                       work_dir=str(self.dir), config=dataclasses.asdict(self.config))
        (self.dir / "figures.json").write_text(json.dumps(figures, indent=1))  # with the logs, to look into
        return figures


def run_chaos(config: ChaosConfig, report: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    return Chaos(config, report).run()


def main(config: ChaosConfig, as_json: bool, report: Callable[[str], None]) -> int:
    """``shelfq bench chaos``: prints the figures, and with ``--json`` one JSON line last."""
    figures = run_chaos(config, report)
    for key, value in figures.items():
        if not isinstance(value, (dict, list)):
            print(f"{key:<32}  {value}")
    if as_json:
        print(json.dumps(figures))
    ok = figures["transitions_missing"] == 0 and figures["hostile_crashes"] == 0 and figures["all_recovered"]
    return 0 if ok else 1
