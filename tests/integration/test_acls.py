"""Models can only come from the learner: on a broker that authenticates with SASL/SCRAM and
authorizes with Kafka's StandardAuthorizer, the learner's principal publishes a model, the
agent's principal reads it and is refused when it writes to ``models`` itself; the streams
worker and a frontend do their work with nothing more than their own ACLs.

The broker is this module's own (not the suite's): one embedded KRaft node with an extra
SASL_PLAINTEXT listener. Each principal holds the ACLs docs/security.md gives its component,
and every client is configured only through ``SHELFQ_KAFKA_*`` variables.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from shelfq.contracts.errors import ShelfqError
from shelfq.contracts.events import Feedback, Transition, UserState, decode, encode
from shelfq.contracts.examples import EXAMPLES
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.ops.broker import KAFKA_DEPLOY_DIR, EmbeddedBroker
from shelfq.ops.topic_admin import ensure_topics
from tests.integration.conftest import ShelfqProcess, free_port, read_topic

PREFIX = "acl."
PASSWORDS = {"admin": "admin-pw-1", "learner": "learner-pw-2", "agent": "agent-pw-3", "streams": "streams-pw-4",
             "frontend": "frontend-pw-5"}

# The PLAINTEXT and CONTROLLER listeners stay open to User:ANONYMOUS, a super user: the embedded
# broker's readiness probe, inter-broker and controller traffic use them. Everything this test
# checks goes through the SASL_PLAINTEXT listener, where every principal is a SCRAM user.
SECURED = """
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SASL_PLAINTEXT://127.0.0.1:{port}
advertised.listeners=PLAINTEXT://127.0.0.1:9092,SASL_PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
"""


def allow(principal: str, kind: ResourceType, name: str, *operations: AclOperation,
          pattern: ResourcePatternType = ResourcePatternType.LITERAL) -> list[AclBinding]:
    return [AclBinding(kind, name, pattern, f"User:{principal}", "*", op, AclPermissionType.ALLOW) for op in operations]


TOPIC, GROUP, READ, WRITE = ResourceType.TOPIC, ResourceType.GROUP, AclOperation.READ, AclOperation.WRITE
TXN = ResourceType.TRANSACTIONAL_ID
CREATE, PREFIXED = AclOperation.CREATE, ResourcePatternType.PREFIXED

# What docs/security.md grants each component (READ and WRITE imply DESCRIBE). Readers that
# join no group still name one, and librdkafka looks up its coordinator: hence the group ACLs.
ACLS = [
    *allow("learner", TOPIC, f"{PREFIX}transitions", READ),
    *allow("learner", TOPIC, f"{PREFIX}items", READ),
    *allow("learner", TOPIC, f"{PREFIX}models", READ, WRITE),
    *allow("learner", TOPIC, f"{PREFIX}dlq", WRITE),
    *allow("learner", GROUP, f"{PREFIX}learner-", READ, pattern=PREFIXED),
    *allow("learner", TXN, f"{PREFIX}learner-", WRITE, pattern=PREFIXED),  # models go out in transactions
    *allow("agent", TOPIC, f"{PREFIX}requests", READ),
    *allow("agent", TOPIC, f"{PREFIX}user-state", READ),
    *allow("agent", TOPIC, f"{PREFIX}items", READ),
    *allow("agent", TOPIC, f"{PREFIX}models", READ),
    *allow("agent", TOPIC, f"{PREFIX}slates", WRITE),
    *allow("agent", TOPIC, f"{PREFIX}dlq", WRITE),
    *allow("agent", GROUP, f"{PREFIX}agent", READ, pattern=PREFIXED),
    *allow("streams", TOPIC, f"{PREFIX}slates", READ),
    *allow("streams", TOPIC, f"{PREFIX}impressions", READ),
    *allow("streams", TOPIC, f"{PREFIX}feedback", READ),
    *allow("streams", TOPIC, f"{PREFIX}transitions", WRITE),
    *allow("streams", TOPIC, f"{PREFIX}user-state", READ, WRITE),
    *allow("streams", TOPIC, f"{PREFIX}dlq", WRITE),
    *allow("streams", TOPIC, f"{PREFIX}streams-", READ, WRITE, CREATE, pattern=PREFIXED),  # Faust's own topics
    *allow("streams", GROUP, f"{PREFIX}streams", READ, pattern=PREFIXED),
    *allow("frontend", TOPIC, f"{PREFIX}requests", WRITE),
    *allow("frontend", TOPIC, f"{PREFIX}impressions", WRITE),
    *allow("frontend", TOPIC, f"{PREFIX}feedback", WRITE),
    *allow("frontend", TOPIC, f"{PREFIX}items", WRITE),
    *allow("frontend", TOPIC, f"{PREFIX}slates", READ),
    *allow("frontend", GROUP, f"{PREFIX}frontend-slates", READ),
]


@dataclass(frozen=True)
class SecuredCluster:
    bootstrap: str

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        """What a deployment sets for one component: nothing but SHELFQ_* variables."""
        return {
            "SHELFQ_BOOTSTRAP_SERVERS": self.bootstrap,
            "SHELFQ_TOPIC_PREFIX": PREFIX,
            "SHELFQ_PARTITIONS": "2",
            "SHELFQ_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SHELFQ_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "SHELFQ_KAFKA_SASL_USERNAME": user,
            "SHELFQ_KAFKA_SASL_PASSWORD": PASSWORDS[user] if password is None else password,
        }

    def settings(self, user: str) -> Settings:
        return Settings.from_env(self.env(user))


def _create_users(plaintext: str) -> None:
    admin = AdminClient({"bootstrap.servers": plaintext, "log_level": 0})
    upserts = [UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
                                            password.encode()) for user, password in PASSWORDS.items()]
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result(timeout=30)


def _wait_until_admin_logs_in(settings: Settings, timeout: float = 30.0) -> AdminClient:
    """SCRAM credentials reach the broker's cache as metadata records: a moment after they
    are created, not at once."""
    admin = AdminClient(settings.confluent_config(log_level=0))
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=5)
            return admin
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _create_acls(admin: AdminClient, timeout: float = 30.0) -> None:
    for future in admin.create_acls(ACLS).values():
        future.result(timeout=30)
    # DescribeAcls is answered by the broker's authorizer: once it lists them, it enforces them.
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    deadline = time.monotonic() + timeout
    while set(admin.describe_acls(everything).result(timeout=30)) != set(ACLS):
        assert time.monotonic() < deadline, "the broker never listed the ACLs it was given"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    """A private embedded broker with SCRAM users admin, learner and agent, shelfq's topics
    (created by the admin through SASL) and the learner's and the agent's ACLs."""
    root = tmp_path_factory.mktemp("acls")
    deploy = root / "deploy"
    shutil.copytree(KAFKA_DEPLOY_DIR, deploy)
    port = free_port()
    base = [line for line in (deploy / "server.properties").read_text().splitlines()
            if not line.startswith(("listeners=", "advertised.listeners=", "listener.security.protocol.map="))]
    (deploy / "server.properties").write_text("\n".join(base) + SECURED.format(port=port))
    settings = Settings(home=root / "home", broker_port=free_port(), controller_port=free_port())
    broker = EmbeddedBroker(settings, deploy_dir=deploy)
    broker.start()
    try:
        _create_users(settings.bootstrap)
        secured = SecuredCluster(f"127.0.0.1:{port}")
        admin_settings = secured.settings("admin")
        admin = _wait_until_admin_logs_in(admin_settings)
        ensure_topics(admin_settings)
        _create_acls(admin)
        yield secured
    finally:
        broker.stop()


def _learner(settings: Settings, checkpoint_dir: Path):
    from shelfq.learner.config import LearnerConfig
    from shelfq.learner.service import Learner

    config = LearnerConfig(hash_buckets=256, context_buckets=16, embedding_dim=8, hidden_dim=8, history_length=4,
                           device="cpu", metrics_port=0, checkpoint_dir=checkpoint_dir)
    return Learner(settings, config)


def test_the_learner_publishes_a_model_and_the_agent_serves_it(cluster: SecuredCluster, tmp_path: Path) -> None:
    from shelfq.agents.service import ModelWatcher

    learner = _learner(cluster.settings("learner"), tmp_path / "ck")  # reads models and items first
    try:
        headers = learner.publish()
    finally:
        learner.close()
    assert headers.version >= 1

    loaded, rejected, arrived = [], [], threading.Event()
    watcher = ModelWatcher(cluster.settings("agent"), [headers.policy],
                           on_model=lambda m: (loaded.append(m), arrived.set()),
                           on_rejected=lambda *why: rejected.append(why))
    watcher.start()
    try:
        assert arrived.wait(60), f"the agent never loaded the model (watcher error: {watcher.error!r})"
    finally:
        watcher.stop()
    assert [m.headers.version for m in loaded] == [headers.version] and not rejected


def test_the_agent_may_not_write_models(cluster: SecuredCluster) -> None:
    settings = cluster.settings("agent")
    reports: dict[str, KafkaError | None] = {}
    producer = Producer(settings.confluent_config(**{"enable.idempotence": True, "message.timeout.ms": 20000}))
    slate = msgspec.structs.replace(EXAMPLES["slates"][1], request_id="req-acl-probe", user_id="u-acl-probe")
    for logical, value in (("slates", encode(slate)), ("models", b"not a model")):
        producer.produce(settings.topic(logical), value, b"u-acl-probe" if logical == "slates" else b"dqn",
                         on_delivery=lambda err, msg, logical=logical: reports.__setitem__(logical, err))
    assert producer.flush(30) == 0
    assert reports["slates"] is None, f"the agent writes its slates: {reports['slates']}"
    assert reports["models"] is not None and reports["models"].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # shelfq's own producer says so instead of dropping the message.
    reliable = ReliableProducer(settings, "agent")
    reliable.produce(settings.topic("models"), b"not a model", key="dqn")
    with pytest.raises(ShelfqError, match="acl.models: Broker: Topic authorization failed"):
        reliable.flush(30)

    # Nor may it take the learner's transactional id, which would fence the learner.
    from shelfq.contracts.outage import BrokerWatch
    from shelfq.learner.publisher import ModelPublisher

    watch = BrokerWatch("agent", cluster.bootstrap, 30.0, lambda: None)
    with pytest.raises(ShelfqError, match="refuses the transactional id 'acl.learner-dqn'"):
        ModelPublisher(settings, "dqn", watch)



def test_the_streams_worker_and_a_frontend_work_with_their_own_acls(cluster: SecuredCluster, tmp_path: Path) -> None:
    from shelfq.frontend.client import ShopClient

    (_, slate), (_, impression), (_, purchase) = EXAMPLES["slates"], EXAMPLES["impressions"], EXAMPLES["feedback"]
    leave = Feedback(request_id=purchase.request_id, user_id=purchase.user_id, session_id=purchase.session_id,
                     ts=purchase.ts + 1, event="exit")
    with ShopClient(cluster.settings("frontend")) as shop:  # reads slates from now on
        agent = ReliableProducer(cluster.settings("agent"), "agent")
        agent.produce(cluster.settings("agent").topic("slates"), encode(slate), slate.user_id)
        agent.flush(30)
        for event in (impression, purchase, leave):
            shop.send(event)
        shop.flush()
        deadline = time.monotonic() + 30
        while shop.slates_received < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert shop.slates_received == 1 and shop.failure is None

    worker = ShelfqProcess(["streams"], cluster.settings("streams"), tmp_path / "streams.log", env=cluster.env("streams"))
    admin = cluster.settings("admin")
    try:
        values = read_topic(admin, "transitions", lambda v: len(v) >= 3, timeout=90)
    finally:
        assert worker.stop() == 0, (tmp_path / "streams.log").read_text()[-3000:]
    assert sorted(decode(v, Transition).transition_id for v in values) == [f"{slate.request_id}:{i}" for i in range(3)]
    [state] = [decode(v, UserState) for v in read_topic(admin, "user-state", lambda v: len(v) >= 1, timeout=30)]
    assert [(i.item_id, i.event) for i in state.history][-1] == (purchase.item_id, "purchase")
    assert read_topic(admin, "dlq", lambda v: True, timeout=5) == []
