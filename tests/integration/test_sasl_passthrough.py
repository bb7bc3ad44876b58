"""Kafka client security settings pass through to both client libraries with no code changes:
a broker that demands SASL/PLAIN, reached with nothing but SHELFQ_KAFKA_* variables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from shelfq.contracts.events import Feedback, decode, encode
from shelfq.contracts.examples import EXAMPLES
from shelfq.contracts.settings import Settings
from shelfq.ops.broker import KAFKA_DEPLOY_DIR, EmbeddedBroker
from tests.integration.conftest import aiokafka_round_trip, free_port

SASL_LISTENER = """
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SASL_PLAINTEXT://127.0.0.1:{port}
advertised.listeners=PLAINTEXT://127.0.0.1:9092,SASL_PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_alice="alice-secret";
"""


@pytest.fixture(scope="module")
def sasl_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded broker whose extra listener demands SASL/PLAIN (user alice)."""
    root = tmp_path_factory.mktemp("sasl")
    deploy = root / "deploy"
    shutil.copytree(KAFKA_DEPLOY_DIR, deploy)
    port = free_port()
    base = [line for line in (deploy / "server.properties").read_text().splitlines()
            if not line.startswith(("listeners=", "advertised.listeners=", "listener.security.protocol.map="))]
    (deploy / "server.properties").write_text("\n".join(base) + SASL_LISTENER.format(port=port))
    broker = EmbeddedBroker(
        Settings(home=root / "home", broker_port=free_port(), controller_port=free_port()), deploy_dir=deploy
    )
    broker.start()
    yield f"127.0.0.1:{port}"
    broker.stop()


def sasl_env(bootstrap: str, password: str) -> dict[str, str]:
    return {
        "SHELFQ_BOOTSTRAP_SERVERS": bootstrap,
        "SHELFQ_TOPIC_PREFIX": "sasl.",
        "SHELFQ_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SHELFQ_KAFKA_SASL_MECHANISM": "PLAIN",
        "SHELFQ_KAFKA_SASL_USERNAME": "alice",
        "SHELFQ_KAFKA_SASL_PASSWORD": password,
    }


def test_confluent_kafka_clients_authenticate_from_the_environment(sasl_bootstrap: str) -> None:
    env = {**os.environ, **sasl_env(sasl_bootstrap, "alice-secret")}
    run = lambda *args: subprocess.run([sys.executable, "-m", "shelfq", *args], env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    created = run("topics", "create")
    assert created.returncode == 0, created.stderr
    assert run("topics", "create", "--check").returncode == 0
    shown = run("settings")
    assert "alice-secret" not in shown.stdout + shown.stderr


def test_a_wrong_password_is_refused(sasl_bootstrap: str) -> None:
    env = {**os.environ, **sasl_env(sasl_bootstrap, "wrong")}
    check = subprocess.run([sys.executable, "-m", "shelfq", "topics", "create", "--check"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1
    assert "Kafka refused the connection" in check.stderr and "Authentication failed" in check.stderr
    assert "wrong" not in check.stdout + check.stderr.replace("wrong password", "")


def test_aiokafka_authenticates_from_the_same_environment(sasl_bootstrap: str) -> None:
    settings = Settings.from_env(sasl_env(sasl_bootstrap, "alice-secret"))
    subprocess.run([sys.executable, "-m", "shelfq", "topics", "create"], check=True, capture_output=True,
                   env={**os.environ, **sasl_env(sasl_bootstrap, "alice-secret")}, timeout=120)
    key, event = EXAMPLES["feedback"]
    value = aiokafka_round_trip(settings, settings.topic("feedback"), key.encode(), encode(event), "sasl-test")
    assert decode(value, Feedback) == event
