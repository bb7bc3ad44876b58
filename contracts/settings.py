"""One frozen, typed settings object, read from ``SHELFQ_*`` environment variables and flags.

Kafka client settings pass through unchanged: every ``SHELFQ_KAFKA_<NAME>`` variable becomes
the librdkafka property ``<name>`` with ``_`` turned into ``.`` (``SHELFQ_KAFKA_SASL_USERNAME``
-> ``sasl.username``), and ``-X name=value`` on the command line does the same. They reach
confluent-kafka as they are and aiokafka (Faust) translated, so SASL and SSL need no code
changes. Values of secret properties (passwords, secrets, tokens, private keys) are wrapped in
``Secret`` and never printed.

>>> s = Settings.from_env({"SHELFQ_KAFKA_SASL_PASSWORD": "hunter2", "SHELFQ_PARTITIONS": "3"})
>>> s.partitions, s.kafka["sasl.password"]
(3, Secret('***'))
>>> s.confluent_config()["sasl.password"]
'hunter2'
>>> s.topic("requests")
'shelfq.requests'
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from shelfq.contracts.errors import ConfigError

ENV_PREFIX = "SHELFQ_"
KAFKA_ENV_PREFIX = "SHELFQ_KAFKA_"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
KAFKA_LOGGER = logging.getLogger("shelfq.kafka")
# Names of the client properties whose values are, or may hold, secrets: passwords and
# passphrases, client secrets and tokens, private keys and PEM blobs, JAAS and OAUTHBEARER
# configs (they carry credentials inline), keytabs and the kinit command that reads them.
# Both spellings match: librdkafka's dotted names and aiokafka's underscored keywords.
_SECRET_NAME = re.compile(
    r"password|passphrase|secret|token|jaas|private|keytab|kinit"
    r"|oauthbearer[._]config|[._]pem$|(?:^|[._])key$"
)


def is_secret_name(name: str) -> bool:
    """Whether a Kafka client property's value is hidden as a ``Secret``.

    >>> [is_secret_name(n) for n in ("sasl.password", "sasl.oauthbearer.config", "ssl.key.pem")]
    [True, True, True]
    >>> [is_secret_name(n) for n in ("sasl.username", "ssl.key.location", "security.protocol")]
    [False, False, False]
    """
    return _SECRET_NAME.search(name.lower()) is not None


class Secret:
    """A string that does not show itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings every shelfq component shares. Build with ``Settings.from_env()``."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    """Kafka bootstrap servers. Setting SHELFQ_BOOTSTRAP_SERVERS means an existing cluster:
    no embedded broker is started or stopped then."""
    external_cluster: bool = False
    """True when bootstrap_servers was given explicitly (SHELFQ_BOOTSTRAP_SERVERS or a flag)."""
    topic_prefix: str = "shelfq."
    """Prefix of every topic name, so several deployments can share one cluster."""
    partitions: int = 6
    """Partitions of the user-keyed topics (requests, slates, impressions, feedback,
    transitions, user-state); they must agree so one user's events meet in one worker."""
    replication_factor: int = 1
    """Replication factor of every topic; 1 suits the embedded single-node broker."""
    max_event_bytes: int = 1 << 20
    """Largest accepted event payload; bigger ones go to the dead-letter topic."""
    dlq_max_value_bytes: int = 16 << 10
    """How much of an offending message's value a dead letter keeps."""
    model_max_bytes: int = 64 << 20
    """max.message.bytes of the models topic (safetensors weights)."""
    kafka: Mapping[str, str | Secret] = dataclasses.field(default_factory=dict)
    """librdkafka client properties passed through to every client (SASL, SSL, ...)."""
    home: Path = Path("~/.local/state/shelfq").expanduser()
    """Where the embedded broker keeps its data, logs and pid file."""
    cache_dir: Path = Path("~/.cache/shelfq").expanduser()
    """Where the embedded broker's jars are resolved to (shared by every checkout)."""
    broker_port: int = 9092
    """Client port of the embedded broker (127.0.0.1 only)."""
    controller_port: int = 9093
    """KRaft controller port of the embedded broker."""
    broker_heap: str = "512m"
    """JVM heap of the embedded broker (-Xmx); small, to leave the cores' memory to the pipeline."""
    broker_start_timeout_s: float = 90.0
    """How long `broker start` waits for the broker to accept connections."""
    broker_outage_s: float = 300.0
    """How long the streams worker, the learner and the agent wait out a broker they cannot
    reach (stopped, restarting, a network fault), retrying with backoff, before they exit
    non-zero. Nothing uncommitted is lost either way: offsets follow the work they cover."""

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigError("bootstrap_servers: must not be empty")
        for name in ("partitions", "replication_factor", "max_event_bytes", "dlq_max_value_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("broker_port", "controller_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ConfigError(f"{name}: must be a TCP port, got {getattr(self, name)}")
        if self.broker_port == self.controller_port:
            raise ConfigError("broker_port and controller_port must differ")
        if not self.broker_outage_s > 0:
            raise ConfigError(f"broker_outage_s: must be > 0, got {self.broker_outage_s}")
        if self.model_max_bytes < self.max_event_bytes:
            raise ConfigError("model_max_bytes: must be >= max_event_bytes")
        if not re.fullmatch(r"[A-Za-z0-9._-]*", self.topic_prefix):
            raise ConfigError(f"topic_prefix: only letters, digits, '.', '_' and '-', got {self.topic_prefix!r}")
        if "bootstrap.servers" in self.kafka:
            raise ConfigError("set the bootstrap servers with SHELFQ_BOOTSTRAP_SERVERS, not a Kafka property")
        # Hide secrets however the mapping was built, and freeze it.
        hidden = {k: Secret(_reveal(v)) if is_secret_name(k) else v for k, v in self.kafka.items()}
        object.__setattr__(self, "kafka", MappingProxyType(hidden))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``SHELFQ_*`` variables, then keyword overrides (flags) on top."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        kafka: dict[str, str] = {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, raw in env.items():
            if key.startswith(KAFKA_ENV_PREFIX):
                kafka[key[len(KAFKA_ENV_PREFIX):].lower().replace("_", ".")] = raw
            elif key.startswith(ENV_PREFIX):
                name = key[len(ENV_PREFIX):].lower()
                if name in fields and name not in ("kafka", "external_cluster"):
                    values[name] = parse_value(key, raw, _kind(fields[name].type))
        kafka.update(overrides.pop("kafka", None) or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "bootstrap_servers" in values:
            values["external_cluster"] = True
        unknown = set(values) - set(fields)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(kafka=kafka, **values)

    def to_plain(self) -> dict[str, Any]:
        """Every field as plain JSON-able values, secrets revealed: for handing the settings to
        a child process of this one (never to print or to store)."""
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain["kafka"] = {k: _reveal(v) for k, v in self.kafka.items()}
        plain["home"], plain["cache_dir"] = str(self.home), str(self.cache_dir)
        return plain

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> Settings:
        """The inverse of ``to_plain``.

        >>> s = Settings.from_env({"SHELFQ_KAFKA_SASL_PASSWORD": "pw"}, topic_prefix="t.")
        >>> Settings.from_plain(s.to_plain()) == s
        True
        """
        return cls(**{**plain, "home": Path(plain["home"]), "cache_dir": Path(plain["cache_dir"])})

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the given cluster, or the embedded broker's port."""
        return self.bootstrap_servers if self.external_cluster else f"127.0.0.1:{self.broker_port}"

    def topic(self, name: str) -> str:
        """Full topic name of a logical topic (``requests`` -> ``shelfq.requests``)."""
        return f"{self.topic_prefix}{name}"

    def confluent_config(self, **extra: Any) -> dict[str, Any]:
        """A confluent-kafka (librdkafka) configuration: bootstrap, pass-through, then extra."""
        # librdkafka logs through Python logging ("shelfq.kafka"), so levels and handlers are
        # the application's, and informational chatter stays quiet by default.
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": KAFKA_LOGGER}
        config.update({k: _reveal(v) for k, v in self.kafka.items()})
        config.update(extra)
        return config

    def aiokafka_config(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (and so Faust) with the same security settings."""
        return aiokafka_kwargs(self.bootstrap, {k: _reveal(v) for k, v in self.kafka.items()})

    def redacted(self) -> dict[str, Any]:
        """Every setting as printable values, secrets shown as ***."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["kafka"] = {k: ("***" if isinstance(v, Secret) else v) for k, v in self.kafka.items()}
        out["bootstrap"] = self.bootstrap
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(raw: str) -> bool:
    """A boolean setting's value: one word set for every ``SHELFQ_*`` variable.

    >>> parse_bool("Yes"), parse_bool("off")
    (True, False)
    >>> parse_bool("maybe")
    Traceback (most recent call last):
    ...
    ValueError: expected one of 1, true, yes, on, 0, false, no, off; got 'maybe'
    """
    word = raw.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError(f"expected one of {', '.join(TRUE_WORDS + FALSE_WORDS)}; got {raw!r}")
    return word in TRUE_WORDS


def parse_value(variable: str, raw: str, kind: str) -> Any:
    """The value of environment variable ``variable`` for a field annotated ``kind``: bool
    (``parse_bool``), int, float or Path (``~`` expanded); any other kind stays text. Every
    ``SHELFQ_*`` variable is read through here.

    >>> parse_value("SHELFQ_PARTITIONS", "6", "int"), parse_value("SHELFQ_X_ON", "Yes", "bool")
    (6, True)
    >>> parse_value("SHELFQ_PARTITIONS", "six", "int")
    Traceback (most recent call last):
    ...
    shelfq.contracts.errors.ConfigError: SHELFQ_PARTITIONS: expected int, got 'six'
    """
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return parse_bool(raw)
        if kind == "Path":
            return Path(raw).expanduser()
    except ValueError:
        raise ConfigError(f"{variable}: expected {kind}, got {raw!r}") from None
    return raw


def _kind(annotation: Any) -> str:
    """A field's annotation as ``parse_value`` reads it (a string under postponed annotations)."""
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


# librdkafka property -> aiokafka keyword, for the settings aiokafka has.
_AIOKAFKA_NAMES = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "sasl.kerberos.service.name": "sasl_kerberos_service_name",
    "client.id": "client_id",
    "request.timeout.ms": "request_timeout_ms",
    "metadata.max.age.ms": "metadata_max_age_ms",
}
_SSL_FILES = {
    "ssl.ca.location": "cafile",
    "ssl.certificate.location": "certfile",
    "ssl.key.location": "keyfile",
    "ssl.key.password": "password",
}


def aiokafka_kwargs(bootstrap: str, props: Mapping[str, str]) -> dict[str, Any]:
    """Translate librdkafka properties into aiokafka keyword arguments.

    Security properties aiokafka cannot honour raise ``ConfigError`` (silently dropping them
    would connect without the protection asked for); other librdkafka tuning is skipped with a
    warning, since it concerns only the confluent-kafka clients.
    """
    kwargs: dict[str, Any] = {"bootstrap_servers": bootstrap}
    ssl_files: dict[str, str] = {}
    for name, value in props.items():
        if name in _AIOKAFKA_NAMES:
            target = _AIOKAFKA_NAMES[name]
            kwargs[target] = int(value) if target.endswith("_ms") else value
        elif name in _SSL_FILES:
            ssl_files[_SSL_FILES[name]] = value
        elif name == "enable.ssl.certificate.verification":
            ssl_files["verify"] = value
        elif name.startswith(("sasl.", "ssl.", "security.")):
            raise ConfigError(f"Kafka property {name!r} has no aiokafka equivalent; Faust clients cannot honour it")
        else:
            warnings.warn(f"Kafka property {name!r} applies to confluent-kafka clients only", stacklevel=2)
    if "security_protocol" in kwargs:
        kwargs["security_protocol"] = kwargs["security_protocol"].upper()
    if "sasl_mechanism" in kwargs:
        kwargs["sasl_mechanism"] = kwargs["sasl_mechanism"].upper()
    if ssl_files or kwargs.get("security_protocol", "").endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        try:
            verify = parse_bool(ssl_files.pop("verify", "true"))
        except ValueError as exc:
            raise ConfigError(f"Kafka property 'enable.ssl.certificate.verification': {exc}") from None
        context = create_ssl_context(**ssl_files)
        if not verify:
            context.check_hostname = False
            context.verify_mode = 0  # ssl.CERT_NONE
        kwargs["ssl_context"] = context
    return kwargs


def fields_from_env(cls: type, prefix: str, env: Mapping[str, str] | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for the dataclass ``cls`` from ``<prefix><FIELD>`` variables, typed by
    the fields' annotations (bool, int, float, Path, str); overrides that are not None win.

    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class C:
    ...     rate: float = 1.0
    ...     on: bool = False
    >>> fields_from_env(C, "X_", {"X_RATE": "2.5", "X_ON": "yes"})
    {'rate': 2.5, 'on': True}
    """
    env = os.environ if env is None else env
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name.upper()
        raw = env.get(name)
        if raw is None:
            continue
        kw[f.name] = parse_value(name, raw, _kind(f.type))
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return kw
