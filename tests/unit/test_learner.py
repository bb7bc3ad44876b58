"""The learner without Kafka: it learns long-term value, each encoder trains, models and
checkpoints round-trip, and a bad model message is refused with a reason."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from shelfq.contracts.errors import ConfigError, EventError
from shelfq.contracts.events import Interaction, State
from shelfq.learner.artifact import load_model, model_message
from shelfq.learner.candidates import Catalog
from shelfq.learner.config import ENCODERS, LearnerConfig
from shelfq.learner.dqn import DQN, Deduper
from shelfq.learner.replay import ReplayBuffer
from shelfq.learner.synthetic import BAIT, BUILD, GEM, bait_or_build, bait_or_gem_slates, random_transitions

SMALL = dict(hash_buckets=256, context_buckets=16, embedding_dim=16, hidden_dim=16, history_length=4,
             batch_size=64, learning_starts=64, replay_capacity=4096, candidates=8, learning_rate=3e-3,
             target_tau=0.05, device="cpu")


def train(config: LearnerConfig, transitions, epochs: int) -> DQN:
    dqn = DQN(config)
    for t in transitions:
        dqn.add(t)
    for _ in range(epochs):
        dqn.train_step(dqn.sample())
    return dqn


START = State(history=[])
BUILT = State(history=[Interaction(item_id=BUILD, event="click", ts=1.0)])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_long_term_learner_builds_first_and_the_myopic_one_takes_the_bait(encoder: str) -> None:
    data = bait_or_build(2000, seed=1)
    longterm = train(LearnerConfig(gamma=0.9, encoder=encoder, objective="item", **SMALL), data, epochs=600)
    myopic = train(LearnerConfig(gamma=0.0, encoder=encoder, objective="item", **SMALL), data, epochs=600)
    items = [BAIT, BUILD]
    q_long, q_myopic = longterm.score(START, items), myopic.score(START, items)
    # At the start, only the long-term learner sees that building pays more (2.3 vs 1).
    assert q_long[1] > q_long[0], q_long
    assert q_myopic[0] > q_myopic[1], q_myopic
    # Once built, both buy (2 > 1): the orderings agree where the myopic view is right.
    assert np.argmax(longterm.score(BUILT, items)) == 1
    assert np.argmax(myopic.score(BUILT, items)) == 1
    # The values themselves approach the MDP's: Q*(start, build) = 0.5 + 0.9 * 2.
    assert abs(q_long[1] - 2.3) < 0.6 and abs(q_myopic[1] - 0.5) < 0.4


def test_same_seed_same_network_and_steps_are_deterministic() -> None:
    data = bait_or_build(300, seed=2)
    a = train(LearnerConfig(**SMALL), data, epochs=5)
    b = train(LearnerConfig(**SMALL), data, epochs=5)
    for (name, pa), pb in zip(a.online.state_dict().items(), b.online.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_repeated_transition_ids_are_stored_once_and_memory_is_bounded() -> None:
    dqn = DQN(LearnerConfig(**{**SMALL, "replay_capacity": 100, "dedupe_capacity": 50}))
    data = list(random_transitions(120, items=30, history=3, slate_size=3))
    assert sum(dqn.add(t) for t in data) == 120
    assert sum(dqn.add(t) for t in data[-10:]) == 0  # the last ones are remembered
    assert dqn.duplicates == 10 and len(dqn.replay) == 100 and len(dqn.dedupe.keys()) == 50
    assert dqn.add(data[0])  # forgotten beyond the window: documented, bounded memory


def test_deduper_keeps_the_newest_keys() -> None:
    d = Deduper(2)
    assert [d.first_time(k) for k in "abab"] == [True, True, False, False]
    d.first_time("c")
    assert d.keys() == ["b", "c"]


def test_prioritized_replay_samples_large_errors_more_often() -> None:
    buf = ReplayBuffer(capacity=100, history_length=SMALL["history_length"], prioritized=True, alpha=1.0, beta=1.0, seed=0)
    buf.add(DQN(LearnerConfig(**SMALL)).features.rows(bait_or_build(100)))
    buf.update_priorities(np.arange(100), np.r_[np.full(99, 0.01), 10.0])
    sample = buf.sample(2000)
    assert (sample.indices == 99).mean() > 0.8
    assert sample.weights[sample.indices == 99].max() < sample.weights[sample.indices != 99].min()


def test_catalog_candidates_are_distinct_popular_first_and_bounded() -> None:
    c = Catalog(seed=0, capacity=50)
    for i in range(80):
        c.observe([f"i{i}", f"i{i + 1}"], f"i{i}", reward=float(i == 70) * 10)
    assert len(c) == 50
    cands = c.candidates(10, popular_share=0.2)
    assert len(set(cands)) == 10 and cands[0] == "i70"
    c.remove("i70")
    assert "i70" not in c.candidates(50)


def test_model_message_round_trips_and_scores_the_same() -> None:
    config = LearnerConfig(**SMALL)
    dqn = train(config, bait_or_build(300), epochs=20)
    value, headers = model_message(dqn.online, config, version=5, created_ts=1.0)
    loaded = load_model(value, headers.to_headers(), policy="dqn")
    assert loaded.headers.version == 5 and loaded.config.network() == config.network()
    rows = torch.tensor([1, 2, 3])
    state = dqn.state_tensors([START])
    with torch.no_grad():
        dqn.online.eval()
        want = dqn.online.q_candidates(dqn.online.user(*state), rows)
        got = loaded.network.q_candidates(loaded.network.user(*state), rows)
    assert torch.allclose(want, got)


def _corrupt(value: bytes, headers: list) -> list[tuple[str, bytes, list]]:
    n = int.from_bytes(value[:8], "little")
    table = json.loads(value[8:8 + n])
    name = next(k for k in table if k != "__metadata__")
    table[name]["shape"] = [table[name]["shape"][0] + 1, *table[name]["shape"][1:]]
    table[name]["data_offsets"][1] += 0
    other = json.loads(dict(headers)["config"])
    other["hidden_dim"] = 7
    nan_value = bytearray(value)
    start = next(v["data_offsets"][0] for k, v in table.items() if k != "__metadata__" and v["dtype"] == "F32")
    nan_value[8 + n + start:8 + n + start + 4] = np.array([np.nan], np.float32).tobytes()  # in a float tensor
    return [
        ("truncated", value[: len(value) // 2], headers),
        ("not safetensors", b"\x80\x04pickle-ish bytes", headers),
        ("other network", value, [(k, json.dumps(other).encode() if k == "config" else v) for k, v in headers]),
        ("wrong policy", value, [(k, b"popularity" if k == "policy" else v) for k, v in headers]),
        ("no version", value, [(k, v) for k, v in headers if k != "version"]),
        ("NaN weights", bytes(nan_value), headers),
    ]


def test_loader_rejects_corrupt_or_mismatched_models_with_a_reason() -> None:
    config = LearnerConfig(**SMALL)
    value, headers = model_message(DQN(config).online, config, version=1, created_ts=1.0)
    for name, bad_value, bad_headers in _corrupt(value, headers.to_headers()):
        with pytest.raises(EventError) as info:
            load_model(bad_value, bad_headers, policy="dqn")
        assert info.value.kind in {"malformed", "invalid", "missing", "out_of_range", "non_finite"}, name
        assert str(info.value), name


def test_settings_refuse_impossible_values_and_warn_on_odd_ones() -> None:
    for bad in ({"gamma": 1.0}, {"batch_size": 0}, {"replay_capacity": 10, "batch_size": 64}, {"target_tau": 0},
                {"objective": "listwise"}, {"slate_size": 101}, {"prioritized": True}):
        with pytest.raises(ConfigError):
            LearnerConfig(**bad)
    with pytest.raises(ConfigError, match="SHELFQ_LEARNER_PRIORITIZED"):
        LearnerConfig.from_env({"SHELFQ_LEARNER_PRIORITIZED": "maybe"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LearnerConfig(learning_starts=10)
    assert caught and "learning_starts" in str(caught[0].message)


def test_checkpoint_files_hold_no_pickle(tmp_path: Path) -> None:
    from shelfq.learner.checkpoint import load_checkpoint, load_optimizer, optimizer_tensors, save_checkpoint

    dqn = train(LearnerConfig(**SMALL), bait_or_build(300), epochs=3)
    tensors, meta = optimizer_tensors(dqn.optimizer)
    save_checkpoint(tmp_path, {**tensors, **{f"online.{k}": v for k, v in dqn.online.state_dict().items()}},
                    dqn.replay.state_dict(), {"step": dqn.step, "optimizer": meta})
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.state["step"] == 3
    fresh = DQN(LearnerConfig(**SMALL))
    load_optimizer(fresh.optimizer, ck.tensors, ck.state["optimizer"])
    assert fresh.optimizer.state_dict()["state"].keys() == dqn.optimizer.state_dict()["state"].keys()
    for f in ck.path.iterdir():
        assert b"\x80\x04" not in f.read_bytes()[:2], f  # no pickle protocol header


def test_ids_never_trained_on_score_alike() -> None:
    dqn = train(LearnerConfig(**SMALL), bait_or_build(500), epochs=50)
    q = dqn.score(START, ["never-seen-1", "never-seen-2", BUILD])
    assert q[0] == pytest.approx(q[1])  # zero-initialised id rows: no id-specific guess
    assert q[2] != pytest.approx(q[0])


ENGAGED = State(history=[Interaction(item_id="gem", event="click", ts=1.0)])


def test_slateq_values_a_click_and_learns_the_choice_model() -> None:
    """Items compete for one click: long-term SlateQ shows the gem first, the myopic one the
    bait, and the click model recovers the logit attractions (not the per-item click odds)."""
    data = bait_or_gem_slates(3000, seed=3)
    config = {**SMALL, "slate_size": 2, "candidates": 2, "popular_share": 1.0}
    longterm = train(LearnerConfig(gamma=0.9, **config), data, epochs=800)
    myopic = train(LearnerConfig(gamma=0.0, **config), data, epochs=800)
    items = [BAIT, GEM]
    assert np.argmax(longterm.score(START, items)) == 1, longterm.score(START, items)
    assert np.argmax(myopic.score(START, items)) == 0, myopic.score(START, items)
    net = longterm.online.eval()
    with torch.no_grad():
        user = net.user(*longterm.state_tensors([START]))
        rows = longterm.item_rows(items)
        qbar = net.q_candidates(user, rows)[0]
        odds = torch.exp(net.click_logits(user, rows)[0] + net.position_logits(2).mean())
    # Given a click: bait ends the session (1), gem leads to a purchase (1 + 0.9 * 2.33 = 3.1).
    assert abs(float(qbar[0]) - 1.0) < 0.4 and abs(float(qbar[1]) - 3.1) < 0.8, qbar
    # Attractions 3 and 0.5 against 1 for no click; per-item click odds would say 2 and 0.125.
    assert 2.0 < float(odds[0]) < 4.5 and 0.3 < float(odds[1]) < 0.8, odds


def test_a_replay_checkpoint_from_before_slateq_restores_only_for_the_item_wise_learner() -> None:
    buf = ReplayBuffer(capacity=100, history_length=SMALL["history_length"], seed=0)
    buf.add(DQN(LearnerConfig(**SMALL)).features.rows(bait_or_gem_slates(20)))
    old = {k: v for k, v in buf.state_dict().items() if k not in ("clicks", "quiet", "slates")}
    fresh = ReplayBuffer(capacity=100, history_length=SMALL["history_length"], seed=0)
    with pytest.raises(ValueError, match="no clicks, quiet, slates columns .* objective=item"):
        fresh.load_state_dict(old)
    fresh.load_state_dict(old, clicks_required=False)
    assert len(fresh) == 40 and not fresh.arrays["clicks"].any()
    assert (fresh.arrays["rewards"] == buf.arrays["rewards"]).all()
