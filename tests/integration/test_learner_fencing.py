"""One learner per policy: a second learner started for a policy fences the first, which
stops at its next publish with one clear error and exit status 1; the versions on ``models``
stay strictly increasing and every one of them loads."""

from __future__ import annotations

import re
import time
from pathlib import Path


from shelfq.contracts.settings import Settings
from shelfq.learner.artifact import load_model
from shelfq.learner.synthetic import bait_or_build
from tests.integration.test_learner import LearnerProcess, models, produce

TOOK_OVER = "another learner of policy 'dqn' took over"


def committed_models(settings: Settings) -> list:
    """The models topic's committed messages, in offset order (what an agent reads)."""
    return models(settings)


def published(log: Path) -> list[int]:
    return [int(v) for v in re.findall(r"published dqn version (\d+)", log.read_text())]


def test_a_second_learner_of_a_policy_fences_the_first(settings: Settings, tmp_path: Path) -> None:
    stream = iter(bait_or_build(6000, seed=5))
    produce(settings, [next(stream) for _ in range(300)])
    first = LearnerProcess(settings, tmp_path / "first-ckpt", tmp_path / "first.log")  # publishes every 4 steps
    second: LearnerProcess | None = None
    try:
        first.wait(lambda: first.metric("shelfq_learner_model_version") >= 1, "the first learner's first model", 90)
        second = LearnerProcess(settings, tmp_path / "second-ckpt", tmp_path / "second.log")
        # The first finds out at its next publish: keep transitions coming until it has stopped.
        deadline = time.monotonic() + 90
        while first.proc.poll() is None:
            assert time.monotonic() < deadline, f"the first learner was not fenced: {first.log.read_text()[-3000:]}"
            produce(settings, [next(stream) for _ in range(40)])
            time.sleep(0.5)
        assert first.proc.returncode == 1, first.log.read_text()[-3000:]
        before = published(first.log)
        second.wait(lambda: max(published(second.log), default=0) > max(before), "a model of the second learner", 60)
    finally:
        if second is not None:
            assert second.stop() == 0, second.log.read_text()[-3000:]
        first.stop()

    text = first.log.read_text()
    # One clear error, and none of librdkafka's fatal-error lines besides it.
    assert text.count(TOOK_OVER) == 1 and "shelfq: error: learner dqn: " + TOOK_OVER in text, text[-3000:]
    assert not re.search(r"^(ERROR|CRITICAL) ", text, re.MULTILINE), text[-3000:]
    after = published(second.log)
    assert before and after and min(after) > max(before)

    versions = [load_model(m.value(), m.headers(), policy="dqn").headers.version
                for m in committed_models(settings) if m.key() == b"dqn"]
    assert versions == sorted(set(versions)), f"versions repeat or go back: {versions}"
    assert versions == before + after  # what either learner said it published, nothing else
