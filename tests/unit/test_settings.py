"""Settings: environment and flags, pass-through of Kafka client properties, hidden secrets."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.settings import Secret, Settings, aiokafka_kwargs
from shelfq.cli.main import main

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


# Every client property whose value is, or may hold, a secret: librdkafka's names, the Java
# client's (users copy them from a cluster's docs) and aiokafka's keywords.
SECRET_PROPERTIES = [
    "sasl.password", "sasl.jaas.config", "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
    "sasl.oauthbearer.config", "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.assertion.private.key.pem", "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.file", "sasl.oauthbearer.token.endpoint.url",
    "sasl.kerberos.keytab", "sasl.kerberos.kinit.cmd",
    "ssl.key.password", "ssl.key.pem", "ssl.certificate.pem", "ssl.ca.pem", "https.ca.pem",
    "ssl.keystore.password", "ssl.keystore.key", "ssl.truststore.password", "ssl.truststore.certificates.pem",
    "sasl_plain_password", "sasl_oauth_token_provider", "ssl_key",
]
PLAIN_PROPERTIES = [
    "security.protocol", "sasl.mechanism", "sasl.username", "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id", "sasl.oauthbearer.scope", "sasl.kerberos.principal",
    "sasl.kerberos.service.name", "ssl.ca.location", "ssl.key.location", "ssl.certificate.location",
    "ssl.keystore.location", "ssl.endpoint.identification.algorithm", "client.id", "sasl_plain_username",
]


@pytest.mark.parametrize("name", SECRET_PROPERTIES)
def test_every_secret_bearing_property_is_hidden(name: str) -> None:
    s = Settings.from_env({}, kafka={name: "the-value-42"})
    assert s.kafka[name] == Secret("the-value-42")
    for text in (repr(s), str(s), str(s.redacted()), repr(s.kafka), repr(dict(s.kafka))):
        assert "the-value-42" not in text
    assert s.redacted()["kafka"][name] == "***"
    assert s.confluent_config()[name] == "the-value-42"  # hidden, not lost


def test_secret_properties_from_the_environment_are_hidden() -> None:
    env = {"SHELFQ_KAFKA_" + name.upper().replace(".", "_"): f"v{i}-secret-value"
           for i, name in enumerate(SECRET_PROPERTIES) if "_" not in name and "-" not in name}
    s = Settings.from_env(env)
    assert len(s.kafka) == len(env) and all(isinstance(v, Secret) for v in s.kafka.values())
    assert "secret-value" not in repr(s) + str(s.redacted())


@pytest.mark.parametrize("name", PLAIN_PROPERTIES)
def test_settings_that_hold_no_secret_stay_readable(name: str) -> None:
    s = Settings.from_env({}, kafka={name: "shown"})
    assert s.kafka[name] == "shown" and s.redacted()["kafka"][name] == "shown"


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
