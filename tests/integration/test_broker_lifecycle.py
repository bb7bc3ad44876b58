"""The embedded broker through the real command line: start, second start, status, stop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import free_port


def shelfq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shelfq", *args], env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture
def broker_env(tmp_path: Path) -> dict[str, str]:
    """An embedded broker of this test's own: its own home and ports, beside the suite's."""
    env = {k: v for k, v in os.environ.items() if k != "SHELFQ_BOOTSTRAP_SERVERS"}
    env.update(SHELFQ_HOME=str(tmp_path / "home"), SHELFQ_BROKER_PORT=str(free_port()),
               SHELFQ_CONTROLLER_PORT=str(free_port()))
    yield env
    shelfq(env, "broker", "stop")


def test_start_twice_status_topics_stop_restart(broker_env: dict[str, str]) -> None:
    port = broker_env["SHELFQ_BROKER_PORT"]
    status = shelfq(broker_env, "broker", "status")
    assert status.returncode == 3 and "not running" in status.stdout

    first = shelfq(broker_env, "broker", "start")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("started: running (pid") and f"127.0.0.1:{port}" in first.stdout
    pid = int(first.stdout.split("pid ")[1].split(")")[0])

    second = shelfq(broker_env, "broker", "start")
    assert second.returncode == 0 and second.stdout.startswith("already running")
    assert f"pid {pid}" in second.stdout

    status = shelfq(broker_env, "broker", "status")
    assert status.returncode == 0 and f"running (pid {pid}) at 127.0.0.1:{port}" in status.stdout

    assert shelfq(broker_env, "topics", "create").returncode == 0
    assert shelfq(broker_env, "topics", "create", "--check").returncode == 0

    stop = shelfq(broker_env, "broker", "stop")
    assert stop.returncode == 0 and stop.stdout.strip() == "stopped"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=5)
    assert shelfq(broker_env, "broker", "status").returncode == 3
    again = shelfq(broker_env, "broker", "stop")
    assert again.returncode == 0 and again.stdout.strip() == "not running"

    # Storage is formatted once: a restart keeps the topics created before.
    assert shelfq(broker_env, "broker", "start").returncode == 0
    check = shelfq(broker_env, "topics", "create", "--check")
    assert check.returncode == 0, check.stdout
    assert shelfq(broker_env, "broker", "stop").returncode == 0


def test_start_on_a_port_in_use_fails_clearly(broker_env: dict[str, str], tmp_path: Path) -> None:
    assert shelfq(broker_env, "broker", "start").returncode == 0
    other = {**broker_env, "SHELFQ_HOME": str(tmp_path / "other-home")}
    clash = shelfq(other, "broker", "start")
    assert clash.returncode == 1
    assert f"127.0.0.1:{broker_env['SHELFQ_BROKER_PORT']} is already in use" in clash.stderr


def test_a_broker_that_cannot_start_names_its_log(broker_env: dict[str, str]) -> None:
    bad = shelfq({**broker_env, "SHELFQ_BROKER_HEAP": "1k"}, "broker", "start")
    assert bad.returncode == 1
    assert "the broker exited with code" in bad.stderr and "stdout.log" in bad.stderr
    assert shelfq(broker_env, "broker", "status").returncode == 3


def test_broker_run_stops_what_it_started_also_on_failure(broker_env: dict[str, str]) -> None:
    run = shelfq(broker_env, "broker", "run", "--", sys.executable, "-c",
                 f"import socket; socket.create_connection(('127.0.0.1', {broker_env['SHELFQ_BROKER_PORT']})); raise SystemExit(7)")
    assert run.returncode == 7, run.stderr
    assert shelfq(broker_env, "broker", "status").returncode == 3
