"""The agent's model watcher never dies: a loader failure of any kind is a rejected model, and a
failure of the watch itself (broker away, topic missing) is retried, so no agent serves a stale
model for ever."""

from __future__ import annotations

import threading

import pytest

import shelfq.agents.service as service
from shelfq.agents.service import ModelWatcher
from shelfq.contracts.errors import EventError
from shelfq.contracts.settings import Settings
from shelfq.learner.artifact import model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.network import QNetwork


class Message:
    def __init__(self, value: bytes, headers: list) -> None:
        self._value, self._headers = value, headers

    def key(self) -> bytes:
        return b"dqn"

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list:
        return self._headers

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


def _watcher() -> tuple[ModelWatcher, list, list]:
    loaded, rejected = [], []
    watcher = ModelWatcher(Settings.from_env(), ["dqn"], loaded.append, lambda *a: rejected.append(a))
    return watcher, loaded, rejected


def _message(version: int) -> Message:
    config = LearnerConfig(hash_buckets=64, context_buckets=8)
    value, headers = model_message(QNetwork(config), config, version=version, created_ts=1.0)
    return Message(value, headers.to_headers())


def test_a_loader_that_fails_unexpectedly_rejects_the_model_and_the_next_one_still_loads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    watcher, loaded, rejected = _watcher()
    real = service.load_model
    monkeypatch.setattr(service, "load_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    watcher.consider(_message(1))
    assert loaded == [] and len(rejected) == 1
    error, _value, policy, _partition, offset = rejected[0]
    assert isinstance(error, EventError) and "boom" in str(error) and policy == "dqn" and offset == 7
    monkeypatch.setattr(service, "load_model", real)
    watcher.consider(_message(2))
    assert [m.headers.version for m in loaded] == [2]


def test_a_failed_watch_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    watcher, _loaded, _rejected = _watcher()
    monkeypatch.setattr(service, "WATCH_RETRY_S", 0.01)
    calls = []
    again = threading.Event()

    def watch() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("broker away")
        again.set()
        watcher._halt.set()  # noqa: SLF001 - ends the thread's body, run here synchronously

    monkeypatch.setattr(watcher, "_watch", watch)
    watcher._run()  # noqa: SLF001 - the thread's body, so the retries are counted exactly
    assert again.is_set() and len(calls) == 3 and isinstance(watcher.error, ConnectionError)
