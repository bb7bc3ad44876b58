"""Benchmarks run end to end with a tiny budget and print their figures as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shelfq.contracts.settings import Settings


def test_bench_learner_prints_every_figure(base_settings: Settings) -> None:
    env = {**os.environ, "SHELFQ_LEARNER_HASH_BUCKETS": "1024", "SHELFQ_LEARNER_BATCH_SIZE": "64"}
    done = subprocess.run([sys.executable, "-m", "shelfq", "bench", "learner", "--transitions", "1000", "--json"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["transitions"] == 1000 and figures["batch_size"] == 64 and figures["device"] == "cpu"
    for key in ("transitions_per_s", "steps_per_s", "ceiling_transitions_per_s", "ratio"):
        assert figures[key] > 0, key
    assert figures["ratio"] == pytest.approx(figures["transitions_per_s"] / figures["ceiling_transitions_per_s"], abs=0.002)
