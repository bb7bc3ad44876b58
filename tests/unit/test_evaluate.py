"""`shelfq evaluate` without Kafka: the log's figures from a JSON-lines file, and off-policy
estimates of a model on logs whose true value is known."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shelfq.agents import exploration
from shelfq.agents.policies import Ask, DQNPolicy, Explorer
from shelfq.contracts.errors import ShelfqError
from shelfq.contracts.events import Interaction, State, Transition, encode
from shelfq.evaluation.logs import LoggedImpression, LoggedPosition, read_file
from shelfq.evaluation.offpolicy import evaluate_model, next_item_probs
from shelfq.learner.artifact import load_model, model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.network import QNetwork
from shelfq.cli.main import main


def transition(request: str, user: str, slate: list[str], position: int, parts: dict[str, int], ts: float,
               policy: str = "dqn", propensity: float | None = 0.5, arm: str | None = None) -> Transition:
    weights = {"click": 1, "add_to_cart": 2, "purchase": 5}
    return Transition(
        transition_id=f"{request}:{position}", request_id=request, user_id=user, session_id=user, state=State(),
        action=slate[position], position=position, slate=slate, reward=float(sum(weights[k] * n for k, n in parts.items())),
        reward_parts=parts, next_state=State(), done=False, ts_impression=ts, ts_emitted=ts + 1,
        propensity=propensity, policy=policy, model_version=1 if policy == "dqn" else None, arm=arm)


LINES = [
    transition("r1", "u1", ["a", "b", "c"], 0, {"click": 1}, 100.0),
    transition("r1", "u1", ["a", "b", "c"], 1, {}, 100.0),
    transition("r1", "u1", ["a", "b", "c"], 2, {"click": 1, "purchase": 1}, 100.0),
    transition("r2", "u1", ["a", "d", "e"], 0, {}, 200.0),
    transition("r2", "u1", ["a", "d", "e"], 1, {}, 200.0),
    transition("r2", "u1", ["a", "d", "e"], 2, {}, 200.0),
    transition("r3", "u2", ["b", "c"], 0, {"click": 1}, 150.0, policy="random", propensity=0.2),
    transition("r3", "u2", ["b", "c"], 1, {}, 150.0, policy="random", propensity=0.25),
]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    lines = [encode(t).decode() for t in LINES]
    lines.insert(4, '{"schema":"shelfq.transition.v1","request_id":"r9"}')  # line 5: fields missing
    lines.insert(2, lines[0])                                                # a repeat of r1:0
    lines.append("")
    path = tmp_path / "transitions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_line_is_named_or_counted(log_file: Path) -> None:
    with pytest.raises(ShelfqError, match=r"transitions.jsonl, line 6: not a valid transition: transition_id: "
                                          r"required field is missing \(--skip-bad"):
        read_file(log_file)
    log = read_file(log_file, skip_bad=True)
    assert (log.read, log.invalid, log.duplicates, log.transitions, len(log.impressions)) == (10, 1, 1, 8, 3)
    assert log.errors == ["line 6: transition_id: required field is missing"]
    with pytest.raises(ShelfqError, match=r"cannot read .*missing.jsonl: No such file"):
        read_file(log_file.with_name("missing.jsonl"))


def test_figures_of_a_handmade_log(log_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--file", str(log_file), "--skip-bad", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[-1])
    assert "reward per impression" in out and "CTR" in out
    overall = result["logging"]["overall"]
    assert (overall["impressions"], overall["transitions"], overall["distinct_items"]) == (3, 8, 5)
    assert overall["ctr"]["value"] == pytest.approx(3 / 8)
    assert overall["ctr"]["n"] == 3, "transitions are clustered by impression"
    assert overall["conversion"]["value"] == pytest.approx(1 / 8)
    assert overall["reward_per_impression"]["value"] == pytest.approx((1 + 6 + 0 + 1) / 3)
    assert overall["purchases_per_impression"]["value"] == pytest.approx(1 / 3)
    assert overall["repeat_rate"]["value"] == pytest.approx(1 / 3)  # r2 repeats a of u1's r1
    assert overall["repeat_rate"]["low"] is None, "one impression: no interval"
    assert overall["coverage"] is None and overall["intra_list_diversity"] is None  # no catalog
    low, high = overall["reward_per_impression"]["low"], overall["reward_per_impression"]["high"]
    assert low < 8 / 3 < high
    by = result["logging"]["by_policy"]
    assert set(by) == {"dqn", "random"}
    assert by["dqn"]["ctr"]["value"] == pytest.approx(2 / 6) and by["random"]["ctr"]["value"] == pytest.approx(1 / 2)
    assert result["log"]["invalid"] == 1 and result["log"]["duplicates"] == 1 and result["target"] is None
    # sessions (here one per user): u1 earns 7 in r1 and 0 in r2, u2 1 in r3
    assert overall["sessions"] == 2 and overall["reward_per_session"]["value"] == pytest.approx((7 + 1) / 2)
    assert result["logging"]["by_arm"] == {}  # no experiment


def test_an_experiments_arms_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    slate = ["a", "b"]
    lines = [transition("r1", "u1", slate, 0, {"click": 1}, 1.0, arm="longterm"),
             transition("r1", "u1", slate, 1, {}, 1.0, arm="longterm"),
             transition("r2", "u1", slate, 0, {"click": 1, "purchase": 1}, 2.0, arm="longterm"),
             transition("r2", "u1", slate, 1, {}, 2.0, arm="longterm"),
             transition("r3", "u2", slate, 0, {}, 1.5, arm="myopic"),
             transition("r3", "u2", slate, 1, {"click": 1}, 1.5, arm="myopic")]
    path = tmp_path / "arms.jsonl"
    path.write_text("".join(encode(t).decode() + "\n" for t in lines))
    assert main(["evaluate", "--file", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    arms = json.loads(out.splitlines()[-1])["logging"]["by_arm"]
    assert set(arms) == {"longterm", "myopic"}
    assert arms["longterm"]["sessions"] == 1 and arms["longterm"]["reward_per_session"]["value"] == pytest.approx(7.0)
    assert arms["longterm"]["ctr"]["value"] == pytest.approx(2 / 4) and arms["myopic"]["ctr"]["value"] == pytest.approx(1 / 2)
    assert "arm longterm: 2 impressions in 1 sessions" in out and "arm myopic" in out


def test_limit_and_usage_errors(log_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--file", str(log_file), "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["log"]["transitions"] == 2
    assert main(["evaluate", "--file", str(log_file)]) == 1
    assert "line 6: not a valid transition" in capsys.readouterr().err
    assert main(["evaluate", "--file", str(log_file), "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--help"])
    assert info.value.code == 0 and "revenue is not derivable" in capsys.readouterr().out


# -- off-policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("explorer", [Explorer("epsilon", 0.3), Explorer("boltzmann", temperature=0.7),
                                      Explorer("greedy")])
def test_target_probabilities_are_the_agents_logged_propensities(explorer: Explorer) -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        scores = rng.normal(size=7)
        order, logged = explorer.slate(scores, 4, rng, None)
        open_ = np.ones(7, dtype=bool)
        for at, p in zip(order, logged):
            assert next_item_probs(scores, open_, explorer)[at] == pytest.approx(p)
            open_[at] = False
    assert next_item_probs(np.array([1.0, 1.0]), np.array([True, True]), Explorer("greedy")).tolist() == [1.0, 0.0]
    assert exploration.greedy(np.array([1.0, 1.0]), 1)[0].tolist() == [0], "ties go to the lower index in both"


SMALL = LearnerConfig(hash_buckets=256, context_buckets=16, embedding_dim=8, hidden_dim=8, history_length=4)
CANDIDATES = [f"sku-{i}" for i in range(8)]
CLICK = {item: 0.1 + 0.08 * i for i, item in enumerate(CANDIDATES)}  # position j multiplies by 0.8**j
STATES = [State(history=[Interaction(item_id=f"sku-{i}", event="click", ts=1.0)]) for i in range(4)] + [State()]


@pytest.fixture(scope="module", params=["slateq", "item"])
def model(request):
    """An untrained model of each objective; SlateQ's click head is pushed to vary between items
    so that its slates (built by assortment gains) differ from a ranking by score."""
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, objective=request.param)
    network = QNetwork(config)
    if network.click is not None:
        with torch.no_grad():
            for p in network.click.parameters():
                p.add_(torch.randn_like(p))
    value, headers = model_message(network, config, version=4, created_ts=1.0)
    return load_model(value, headers.to_headers())


def logged_traffic(model, explorer: Explorer, n: int, seed: int) -> list[LoggedImpression]:
    rng = np.random.default_rng(seed)
    asks = [Ask(STATES[rng.integers(len(STATES))], CANDIDATES, 3) for _ in range(n)]
    out = []
    for i, (ask, choice) in enumerate(zip(asks, DQNPolicy(model, explorer).rank(asks, rng))):
        positions = {j: LoggedPosition(float(c := rng.random() < CLICK[item] * 0.8 ** j), int(c), 0, p)
                     for j, (item, p) in enumerate(zip(choice.items, choice.propensities))}
        out.append(LoggedImpression(f"r{i}", f"u{i}", choice.policy, 4, float(i), choice.items, ask.state,
                                    positions=positions))
    return out


def test_the_logging_policy_evaluated_on_its_own_log_has_weights_of_one(model) -> None:
    explorer = Explorer("epsilon", 0.3)
    log = logged_traffic(model, explorer, 500, seed=1)
    result = evaluate_model(log, model, explorer, CANDIDATES)
    assert result["mean_weight"] == pytest.approx(1.0)
    assert result["ips"]["value"] == pytest.approx(result["logged_value"]["value"])
    assert result["ips"]["ess"] == pytest.approx(result["transitions"])
    assert result["snips"]["value"] == pytest.approx(result["logged_value"]["value"])


def test_a_greedy_target_is_estimated_from_epsilon_greedy_logs(model) -> None:
    log = logged_traffic(model, Explorer("epsilon", 0.5), 4000, seed=2)
    greedy = DQNPolicy(model, Explorer("greedy"))
    slates = {id(s): greedy.rank([Ask(s, CANDIDATES, 3)], np.random.default_rng(0))[0].items for s in STATES}
    truth = np.mean([sum(CLICK[item] * 0.8 ** j for j, item in enumerate(slates[id(imp.state)])) for imp in log])
    result = evaluate_model(log, model, Explorer("greedy"), CANDIDATES)
    assert result["impressions"] == 4000 and result["skipped"] == {}
    for name in ("ips", "snips", "dr"):
        e = result[name]
        assert e["low"] <= truth <= e["high"], (name, e, truth)
    assert result["dr"]["se"] < result["ips"]["se"]
    assert abs(result["logged_value"]["value"] - truth) > 0.05, "the target must differ from the logging policy"


def test_impressions_that_cannot_be_weighted_are_counted(model) -> None:
    log = logged_traffic(model, Explorer("epsilon", 0.3), 6, seed=3)
    log[0].positions.pop(2)
    log[1].positions[1] = log[1].positions[1]._replace(propensity=None)
    # The target sees the first five candidates; this impression showed one of the others.
    log[2].slate[-1] = next(c for c in CANDIDATES[5:] if c not in log[2].slate)
    result = evaluate_model(log, model, Explorer("epsilon", 0.3), CANDIDATES[:5])
    assert result["skipped"] == {"incomplete": 1, "no_propensity": 1} and result["impressions"] == 4
    assert any("not among the target's candidates" in n for n in result["notes"])
    assert any("1 impressions skipped: some shown items have no transition" in n for n in result["notes"])
