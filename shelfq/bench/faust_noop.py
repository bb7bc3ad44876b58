"""The ceiling Faust itself sets: a Faust agent that reads the join's three input topics the way
the streams worker does (take_events batches, uvloop) and does nothing with them.

``python -m shelfq.bench.faust_noop PREFIX COUNT`` prints ``events_per_s=N`` once it has read
COUNT events, then stops. ``shelfq bench join`` runs it on the same data as the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid

import faust

from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import FEEDBACK, IMPRESSIONS, SLATES
from shelfq.streams.app import FAUST_DATADIR


def main(prefix: str, count: int) -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    settings = Settings.from_env(topic_prefix=prefix)
    app = faust.App(f"{prefix}noop-{uuid.uuid4().hex[:6]}",
                    broker=[f"kafka://{s.strip()}" for s in settings.bootstrap.split(",")],
                    store="memory://", datadir=FAUST_DATADIR, web_enabled=False, topic_partitions=settings.partitions,
                    broker_max_poll_records=1000, stream_buffer_maxsize=4000, consumer_auto_offset_reset="earliest")
    source = app.topic(*(settings.topic(t) for t in (SLATES, IMPRESSIONS, FEEDBACK)),
                       key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "start": 0.0}

    @app.agent(source)
    async def noop(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(1000, within=0.005):  # type: ignore[attr-defined]  # Stream's, not StreamT's
            seen["start"] = seen["start"] or time.perf_counter()
            seen["n"] += len(batch)
            if seen["n"] >= count:
                rate = seen["n"] / (time.perf_counter() - seen["start"])
                out = sys.__stdout__
                assert out is not None  # None only in a process without one
                out.write(f"events_per_s={rate:.1f}\n")
                out.flush()
                os.kill(os.getpid(), signal.SIGTERM)
                return

    worker = faust.Worker(app, loglevel="warning", quiet=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
