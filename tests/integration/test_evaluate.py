"""`shelfq evaluate` against the real broker: transitions, the catalog and a model read from
their topics; the logging policy's figures and the off-policy estimates of the model."""

from __future__ import annotations

import json

import pytest

from shelfq.contracts.events import Item, State, Transition, encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.learner.artifact import model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.network import QNetwork
from shelfq.cli.main import main

SMALL = LearnerConfig(hash_buckets=256, context_buckets=16, embedding_dim=8, hidden_dim=8, history_length=4)
CATALOG = [Item(item_id=f"sku-{i}", category=f"c{i % 2}", ts=1.0) for i in range(6)]
UNIFORM = [1 / 6, 1 / 5, 1 / 4]  # a random slate of 3 from 6: each position's exact propensity


def impression(n: int, slate: list[str], clicks: set[int], propensities: list[float] | None) -> list[Transition]:
    return [Transition(
        transition_id=f"r{n}:{j}", request_id=f"r{n}", user_id=f"u{n % 2}", session_id="s", state=State(),
        action=item, position=j, slate=slate, reward=1.0 if j in clicks else 0.0,
        reward_parts={"click": 1} if j in clicks else {}, next_state=State(), done=False,
        ts_impression=100.0 + n, ts_emitted=101.0 + n,
        propensity=propensities[j] if propensities else None,
        policy="random" if propensities else None) for j, item in enumerate(slate)]


LOG = [
    impression(0, ["sku-0", "sku-1", "sku-2"], {0}, UNIFORM),
    impression(1, ["sku-3", "sku-1", "sku-5"], set(), UNIFORM),
    impression(2, ["sku-4", "sku-2", "sku-0"], {1, 2}, UNIFORM),  # u0 again: 2 of 3 items repeat
    impression(3, ["sku-5", "sku-4", "sku-3"], {0}, UNIFORM),     # u1 again: 2 of 3 repeat
    impression(4, ["sku-1", "sku-0", "sku-3"], {2}, None),        # u0: 1 of 3; a frontend's own slate, no propensities
]


def publish(settings: Settings) -> None:
    producer = ReliableProducer(settings, **{"message.max.bytes": settings.model_max_bytes})
    for item in CATALOG:
        producer.produce(settings.topic("items"), encode(item), item.item_id)
    for transitions in LOG:
        for t in transitions:
            producer.produce(settings.topic("transitions"), encode(t), t.user_id)
        producer.produce(settings.topic("transitions"), encode(transitions[0]), "u0")  # a repeat
    producer.produce(settings.topic("transitions"), b"not json", "u0")
    value, headers = model_message(QNetwork(SMALL), SMALL, version=1)
    producer.produce(settings.topic("models"), value, "dqn", headers=headers.to_headers())
    _, corrupt = model_message(QNetwork(SMALL), SMALL, version=2)
    producer.produce(settings.topic("models"), b"\x80\x04not safetensors", "dqn", headers=corrupt.to_headers())
    producer.flush()


def test_evaluate_reads_the_topics_and_estimates_a_model(settings: Settings, capsys: pytest.CaptureFixture) -> None:
    publish(settings)
    # A target that explores uniformly (epsilon 1) picks each slate exactly as the random
    # logging policy did, so every importance weight is 1 and IPS is the logged value.
    argv = ["evaluate", "--topic-prefix", settings.topic_prefix, "--model", "dqn", "--epsilon", "1", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[-1])
    assert "doubly robust" in out

    assert result["log"]["invalid"] == 1 and result["log"]["duplicates"] == 5
    assert result["catalog_items"] == 6
    overall = result["logging"]["overall"]
    assert (overall["impressions"], overall["transitions"]) == (5, 15)
    assert overall["ctr"]["value"] == pytest.approx(5 / 15)
    assert overall["reward_per_impression"]["value"] == pytest.approx(5 / 5)
    assert overall["repeat_rate"]["value"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)
    assert overall["coverage"] == 1.0
    # c0 = sku-0, 2, 4 and c1 = sku-1, 3, 5: r0, r3 and r4 mix 2 of their 3 pairs, r1 and r2 none
    assert overall["intra_list_diversity"]["value"] == pytest.approx(3 * (2 / 3) / 5)
    assert set(result["logging"]["by_policy"]) == {"random", "(none)"}

    target = result["target"]
    assert (target["policy"], target["model_version"], target["candidates"]) == ("dqn", 1, 6)
    assert target["candidate_source"] == "the catalog on the items topic"
    assert target["skipped"] == {"no_propensity": 1} and target["impressions"] == 4
    assert any("1 newer model versions failed" in n for n in target["notes"])
    assert target["mean_weight"] == pytest.approx(1.0)
    logged = (1 + 0 + 2 + 1) / 4
    assert target["logged_value"]["value"] == pytest.approx(logged)
    assert target["ips"]["value"] == pytest.approx(logged)
    assert target["snips"]["value"] == pytest.approx(logged)
    assert target["dr"]["low"] <= logged <= target["dr"]["high"]


def test_evaluate_without_a_model_and_with_a_limit(settings: Settings, capsys: pytest.CaptureFixture) -> None:
    publish(settings)
    assert main(["evaluate", "--topic-prefix", settings.topic_prefix, "--limit", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["log"]["read"] == 4 and result["target"] is None
    assert main(["evaluate", "--topic-prefix", settings.topic_prefix, "--model", "nobody"]) == 1
    assert "no valid model keyed 'nobody'" in capsys.readouterr().err
