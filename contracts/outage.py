"""Riding out a broker outage: how long this process has been without the broker, what it
says about it, and when it gives up (``Settings.broker_outage_s``, ``SHELFQ_BROKER_OUTAGE_S``).

The clients reconnect on their own; what stops a component is a blocking call that fails or
times out meanwhile (a flush, a commit, a metadata request). Such calls go through
``BrokerWatch.wait_out``, which repeats them with backoff until they succeed, and the
component's loop calls ``check()``, which, while the broker is away, asks it (``probe``) with
backoff whether it is back. One WARNING when the broker goes away, one INFO when it is back;
past the bound ``BrokerUnreachable``, with one clear ERROR for the caller to print.

>>> now = [0.0]
>>> up = [False]
>>> def probe():
...     if not up[0]:
...         raise ConnectionError("refused")
>>> watch = BrokerWatch("agent", "127.0.0.1:9092", 60.0, probe, clock=lambda: now[0], sleep=lambda s: None)
>>> watch.lost("all brokers down"); watch.check(); watch.down
True
>>> now[0] = 30.0; up[0] = True; watch.check(); watch.down
False
>>> up[0] = False; now[0] = 100.0; watch.lost("gone again"); watch.check()
>>> now[0] = 161.0; watch.check()
Traceback (most recent call last):
...
shelfq.contracts.outage.BrokerUnreachable: agent: the broker at 127.0.0.1:9092 was unreachable for 61 s (more than SHELFQ_BROKER_OUTAGE_S = 60 s; last: refused); start it (`shelfq broker start`, or check the cluster and the SHELFQ_KAFKA_* settings), then start the agent again: nothing uncommitted is lost
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException

from shelfq.contracts.errors import ShelfqError

log = logging.getLogger("shelfq.outage")
T = TypeVar("T")
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # then every 8 s: little CPU, a quick resume

#: Errors by which a client says the broker (or its group coordinator) is away for now.
TRANSIENT_CODES = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._WAIT_COORD,
    KafkaError._RESOLVE, KafkaError._MSG_TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NETWORK_EXCEPTION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError._STATE, KafkaError.BROKER_NOT_AVAILABLE,
})


class BrokerUnreachable(ShelfqError):
    """The broker stayed away for longer than ``broker_outage_s``."""


class Unacknowledged(ShelfqError):
    """Messages are still queued unacknowledged (the client goes on sending them)."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker is away for now (worth waiting for), not that a request
    was wrong."""
    if isinstance(exc, Unacknowledged):
        return True
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err = exc.args[0]
        return not err.fatal() and (err.retriable() or err.code() in TRANSIENT_CODES)
    return False


class BrokerWatch:
    """One process's view of whether it can reach the broker (thread-safe)."""

    def __init__(self, component: str, bootstrap: str, bound_s: float, probe: Callable[[], Any], *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = time.sleep) -> None:
        self.component, self.bootstrap, self.bound_s, self.probe = component, bootstrap, bound_s, probe
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._suspect_since: float | None = None  # a client reported trouble; not yet confirmed
        self._down_since: float | None = None  # confirmed: a probe or a retried call failed
        self._next_probe = 0.0
        self._attempt = 0
        self._last = ""

    @property
    def down(self) -> bool:
        """The broker is away (a probe or a retried call failed, and none succeeded since)."""
        return self._down_since is not None

    @property
    def settled(self) -> bool:
        """Nothing to look into: no client reported trouble since the broker last answered."""
        return self._suspect_since is None and self._down_since is None

    def lost(self, reason: str) -> None:
        """A client reported the broker away (an ``error_cb``, a failed call). Confirmed, and
        said, only once a probe fails too: a client also reports a connection the broker
        closed while idle."""
        with self._lock:
            self._last = reason
            if self._suspect_since is None and self._down_since is None:
                self._suspect_since = self._clock()
                self._next_probe = 0.0

    def on_client_error(self, err: KafkaError) -> None:
        """An ``error_cb`` for confluent-kafka clients."""
        if err.fatal():
            return  # raised where it happens; nothing to wait out
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self.lost(err.str())

    def check(self) -> None:
        """Call often; cheap unless the broker is away: then probe it with backoff, say when it
        is back, and raise ``BrokerUnreachable`` once it was away for longer than the bound."""
        if self.settled:
            return
        now = self._clock()
        if now < self._next_probe:
            return
        try:
            self.probe()
        except Exception as exc:  # noqa: BLE001 - any failure to reach it counts
            failure: BaseException | None = exc
        else:
            failure = None
        if failure is None:
            self.restored()
        else:
            self._failed(failure, now)

    def restored(self) -> None:
        """The broker answered: say so if it was away."""
        with self._lock:
            since, self._down_since, self._suspect_since, self._attempt = self._down_since, None, None, 0
        if since is not None:
            log.info("%s: the broker at %s is back after %.0f s; carrying on", self.component, self.bootstrap,
                     self._clock() - since)

    def wait_out(self, call: Callable[[], T], what: str, stop: threading.Event | None = None) -> T:
        """``call()``, repeated with backoff while it fails because the broker is away, for up to
        the bound. Other errors are raised at once; so is the last one when ``stop`` is set."""
        failed = False
        while True:
            began = self._clock()
            try:
                result = call()
            except Exception as exc:
                if not is_transient(exc) or (stop is not None and stop.is_set()):
                    raise
                failed = True
                now = self._clock()
                with self._lock:
                    if self._suspect_since is None and self._down_since is None:
                        self._suspect_since = began  # the call waited for the broker all along
                self._failed(exc, now, what)
                self._sleep(max(0.0, self._next_probe - self._clock()))
                continue
            if failed:  # it needed the broker and got it (a call that never failed may not have)
                self.restored()
            return result

    def _failed(self, exc: BaseException, now: float, what: str = "") -> None:
        with self._lock:
            self._last = _describe(exc)
            down_since = self._down_since
            first = down_since is None
            if down_since is None:
                down_since = self._down_since = self._suspect_since if self._suspect_since is not None else now
            self._next_probe = now + BACKOFF_S[min(self._attempt, len(BACKOFF_S) - 1)]
            self._attempt += 1
            away = now - down_since
        if away > self.bound_s:
            raise BrokerUnreachable(
                f"{self.component}: the broker at {self.bootstrap} was unreachable for {away:.0f} s (more than "
                f"SHELFQ_BROKER_OUTAGE_S = {self.bound_s:g} s; last: {self._last}); start it (`shelfq broker start`, "
                f"or check the cluster and the SHELFQ_KAFKA_* settings), then start the {self.component} again: "
                "nothing uncommitted is lost")
        if first:
            log.warning("%s: the broker at %s is unreachable (%s%s); retrying for up to %g s (SHELFQ_BROKER_OUTAGE_S)",
                        self.component, self.bootstrap, f"{what}: " if what else "", self._last, self.bound_s)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return str(exc) or type(exc).__name__


class ConnectionNoise(logging.Filter):
    """Client libraries log every failed connection attempt at ERROR while a broker is down:
    librdkafka's ``FAIL`` about 20 a second per client, aiokafka several kinds per request.
    The ``BrokerWatch`` says it once; these become WARNINGs, one a minute per filter at most,
    and each tells the process's watch (``install``) that the broker may be away."""

    def __init__(self, *fragments: str, every_s: float = 60.0) -> None:
        super().__init__()
        self.fragments, self.every_s, self._next = fragments, every_s, 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if not any(f in message for f in self.fragments):
            return True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        if _current is not None:
            _current.lost(message)
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every_s
        return True


#: librdkafka's connection failures (its FAIL facility).
LIBRDKAFKA_NOISE = ("Connect to ipv", "Connection refused", "Disconnected")

_current: BrokerWatch | None = None


def install(watch: BrokerWatch) -> BrokerWatch:
    """Make ``watch`` the one this process's clients report to (``report_client_error``)."""
    global _current
    _current = watch
    return watch


def report_client_error(err: KafkaError) -> None:
    """The ``error_cb`` of every confluent-kafka client of the components."""
    if _current is not None:
        _current.on_client_error(err)
