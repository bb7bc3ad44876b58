"""A real Prometheus (Debian's package) scrapes a short pipeline: every component's key series
exist and move, and every query of the Grafana dashboard and of the alert rules evaluates and
returns data. The configs themselves pass promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from tests.integration.conftest import REPO, ShelfqProcess, free_port

DEPLOY = REPO / "deploy"
THRESHOLD = re.compile(r"^(?P<series>.*?)\s*(?:>|<|>=|<=|==|!=)\s*[0-9.e+-]+\s*$", re.DOTALL)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's prometheus package (apt-get install prometheus); "
                    ".ci/run does", pytrace=False)
    return path


def test_the_configs_pass_promtool() -> None:
    promtool = _binary("promtool")
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def dashboard_queries() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "shelfq-dashboard.json").read_text())
    return [t["expr"] for panel in dash["panels"] for t in panel.get("targets", [])]


def alert_series() -> list[tuple[str, str]]:
    """(alert, its expression without the threshold): what the alert watches."""
    import yaml  # PyYAML comes with faust-streaming's dependencies

    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            match = THRESHOLD.match(rule["expr"].strip())
            assert match, f"{rule['alert']}: expected '<series> <comparison> <threshold>'"
            out.append((rule["alert"], match["series"]))
    return out


class Prometheus:
    def __init__(self, tmp: Path, targets: dict[str, tuple[int, dict[str, str]]]) -> None:
        jobs = "\n".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            + (f"        labels: {json.dumps(labels)}\n" if labels else "")
            for job, (port, labels) in targets.items())
        config = tmp / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          f"rule_files:\n  - {DEPLOY / 'prometheus' / 'alerts.yml'}\nscrape_configs:\n{jobs}")
        self.port = free_port()
        self.log = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [_binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = json.loads(urllib.request.urlopen(url, timeout=5).read())
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with the reason
            body = json.loads(exc.read())
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 120.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                result = self.query(expr)
            except OSError:
                result = []
            if result:
                return result
            assert time.monotonic() < deadline, f"no data for {expr} after {timeout:.0f} s"
            time.sleep(1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[dict[str, ShelfqProcess]]:
    # Two arms of one policy, so the dashboard's experiment panels have series to show.
    env = {"SHELFQ_JOIN_WINDOW_S": "2", "SHELFQ_JOIN_ALLOWED_LATENESS_S": "1", "SHELFQ_LEARNER_PUBLISH_EVERY_S": "2",
           "SHELFQ_LEARNER_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "SHELFQ_AGENT_ARMS": "a=dqn:1,b=dqn:1"}
    procs = {
        "shelfq-streams": ShelfqProcess(["streams"], settings, tmp_path / "streams.log", env),
        "shelfq-learner": ShelfqProcess(["learner"], settings, tmp_path / "learner.log", env),
        "shelfq-agent": ShelfqProcess(["agent"], settings, tmp_path / "agent.log", env),
        "shelfq-gate": ShelfqProcess(["gate"], settings, tmp_path / "gate.log", env),  # the rollback alert's series
        "shelfq-simulator": ShelfqProcess(["simulate", "--seconds", "240", "--concurrency", "8", "--think-s", "0.1"],
                                          settings, tmp_path / "simulator.log", env),
    }
    yield procs
    for p in procs.values():
        p.stop()


def test_prometheus_sees_every_component_and_every_query_returns_data(
        settings: Settings, pipeline: dict[str, ShelfqProcess], tmp_path: Path) -> None:
    prom = Prometheus(tmp_path, {job: (p.port, {"policy": "dqn"} if job in ("shelfq-learner", "shelfq-agent") else {})
                                 for job, p in pipeline.items()})
    try:
        # One malformed request, so the dead-letter series exist (the agent sends it to dlq).
        producer = ReliableProducer(settings)
        producer.produce(settings.topic("requests"), b"{not json", "u1")
        producer.flush()
        for job in pipeline:
            prom.wait_for(f'up{{job="{job}"}} == 1', timeout=60)
        moving = {
            "shelfq-streams": "shelfq_streams_transitions_total",
            "shelfq-learner": "shelfq_learner_train_steps_total",
            "shelfq-agent": "shelfq_agent_requests_total",
            "shelfq-simulator": "shelfq_simulator_requests_total",
        }
        for job, series in moving.items():
            prom.wait_for(f'sum(increase({series}{{job="{job}"}}[20s])) > 0', timeout=150)
        prom.wait_for('shelfq_learner_model_version{job="shelfq-learner"} >= 2', timeout=120)
        prom.wait_for('shelfq_agent_model_first_use_delay_seconds{job="shelfq-agent"}', timeout=60)
        for job in ("shelfq-streams", "shelfq-learner", "shelfq-agent"):
            prom.wait_for(f'shelfq_consumer_lag{{job="{job}"}}', timeout=30)
        prom.wait_for('shelfq_dead_letters_total{job="shelfq-agent", reason="invalid"}', timeout=30)
        time.sleep(5)  # rates over [5m] need a few samples of each series
        empty = []
        for expr in dashboard_queries() + [series for _alert, series in alert_series()]:
            try:
                prom.wait_for(expr, timeout=30)
            except AssertionError:
                empty.append(expr)
        assert empty == [], "queries that returned no data"
    finally:
        prom.stop()
