"""Settings: environment and flags, pass-through of Kafka client properties, hidden secrets."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from contracts.errors import ConfigError
from contracts.settings import Secret, Settings, aiokafka_kwargs
from shelfq.cli import main

SASL_SSL_ENV = {
    "SHELFQ_BOOTSTRAP_SERVERS": "kafka-1.example:9093,kafka-2.example:9093",
    "SHELFQ_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SHELFQ_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "SHELFQ_KAFKA_SASL_USERNAME": "shelfq",
    "SHELFQ_KAFKA_SASL_PASSWORD": "s3cr3t-pa55",
}


def test_defaults_use_the_embedded_broker() -> None:
    s = Settings.from_env({})
    assert (s.bootstrap, s.external_cluster, s.partitions) == ("127.0.0.1:9092", False, 6)


def test_environment_is_parsed_into_typed_fields() -> None:
    s = Settings.from_env({"SHELFQ_PARTITIONS": "12", "SHELFQ_BROKER_PORT": "19092", "SHELFQ_HOME": "/tmp/x",
                           "SHELFQ_BROKER_START_TIMEOUT_S": "5.5", "SHELFQ_UNRELATED": "ignored"})
    assert (s.partitions, s.broker_port, s.home, s.broker_start_timeout_s) == (12, 19092, Path("/tmp/x"), 5.5)
    assert s.bootstrap == "127.0.0.1:19092"


def test_flags_override_the_environment() -> None:
    s = Settings.from_env({"SHELFQ_TOPIC_PREFIX": "env.", "SHELFQ_KAFKA_CLIENT_ID": "env"},
                          topic_prefix="flag.", kafka={"client.id": "flag"})
    assert s.topic("items") == "flag.items"
    assert s.confluent_config()["client.id"] == "flag"


def test_an_explicit_bootstrap_means_an_existing_cluster() -> None:
    s = Settings.from_env(SASL_SSL_ENV)
    assert s.external_cluster and s.bootstrap == "kafka-1.example:9093,kafka-2.example:9093"


@pytest.mark.parametrize(
    "env,message",
    [
        ({"SHELFQ_PARTITIONS": "many"}, "SHELFQ_PARTITIONS: expected int"),
        ({"SHELFQ_PARTITIONS": "0"}, "partitions: must be >= 1"),
        ({"SHELFQ_BROKER_PORT": "70000"}, "broker_port: must be a TCP port"),
        ({"SHELFQ_CONTROLLER_PORT": "9092"}, "must differ"),
        ({"SHELFQ_TOPIC_PREFIX": "bad prefix/"}, "topic_prefix"),
        ({"SHELFQ_KAFKA_BOOTSTRAP_SERVERS": "x:1"}, "SHELFQ_BOOTSTRAP_SERVERS"),
    ],
)
def test_impossible_settings_are_refused_with_a_reason(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_kafka_properties_pass_through_to_confluent_kafka_unchanged() -> None:
    conf = Settings.from_env(SASL_SSL_ENV).confluent_config(**{"group.id": "g"})
    conf.pop("logger")
    assert conf == {
        "bootstrap.servers": "kafka-1.example:9093,kafka-2.example:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "shelfq",
        "sasl.password": "s3cr3t-pa55",
        "group.id": "g",
    }


def test_kafka_properties_translate_to_aiokafka() -> None:
    kwargs = Settings.from_env(SASL_SSL_ENV).aiokafka_config()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("shelfq", "s3cr3t-pa55")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_aiokafka_refuses_security_settings_it_cannot_honour() -> None:
    with pytest.raises(ConfigError, match="sasl.oauthbearer.method"):
        aiokafka_kwargs("b:1", {"sasl.oauthbearer.method": "oidc"})
    with pytest.warns(UserWarning, match="linger.ms"):
        assert "linger_ms" not in aiokafka_kwargs("b:1", {"linger.ms": "5"})


def test_secrets_never_show() -> None:
    s = Settings.from_env({**SASL_SSL_ENV, "SHELFQ_KAFKA_SSL_KEY_PASSWORD": "key-pa55"})
    assert s.kafka["sasl.password"] == Secret("s3cr3t-pa55")
    for text in (repr(s), str(s), str(s.redacted()), repr(s.kafka)):
        assert "s3cr3t-pa55" not in text and "key-pa55" not in text
    assert s.redacted()["kafka"]["sasl.password"] == "***"


def test_settings_command_hides_secrets(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SASL_SSL_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["settings", "-X", "sasl.password=flag-pa55"]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t-pa55" not in out and "flag-pa55" not in out
    assert '"sasl.password": "***"' in out and '"sasl.username": "shelfq"' in out


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.partitions = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.kafka["x"] = "y"  # type: ignore[index]
