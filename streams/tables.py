"""The worker's two Faust tables and how their values are stored: owns the codecs and the
join table's recovery hook.

The join's records live in a changelog-backed table written with the partition of the request
they belong to; user histories live in a second table whose changelog *is* the compacted
``user-state`` topic, so every write publishes the user's state. The codecs are ours, never
Faust's defaults (JSON, or pickle for arbitrary objects): records as msgpack arrays, compact and
fast; user-state as the public JSON contract, since that changelog is the topic consumers read.

Overriding ``Codec._dumps``/``_loads`` is how Faust's documentation says to write a codec, so
these are not among the private members ``streams.faust_internals`` names.
"""

from __future__ import annotations

from typing import Any, cast

import faust
import msgspec
from faust.serializers import codecs

from shelfq.contracts.events import UserState, decode, encode
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import USER_STATE
from shelfq.streams.join import Record


class _MsgpackRecordCodec(codecs.Codec):
    """Join records in the changelog: msgpack arrays, compact and fast; never pickle."""

    _encoder = msgspec.msgpack.Encoder()
    _decoder = msgspec.msgpack.Decoder(Record)

    def _dumps(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def _loads(self, s: bytes) -> Any:
        return self._decoder.decode(s)


class _UserStateCodec(codecs.Codec):
    """user-state values are the public JSON contract, since the changelog is that topic."""

    def _dumps(self, obj: Any) -> bytes:
        return encode(obj)

    def _loads(self, s: bytes) -> Any:
        return decode(s, UserState)


class _Utf8Codec(codecs.Codec):
    """Keys (request and user ids) as UTF-8 text."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode() if isinstance(obj, str) else obj

    def _loads(self, s: bytes) -> Any:
        return s.decode()


codecs.register("shelfq-utf8", _Utf8Codec())
#: How a join record is written to its changelog (the outbox writes them itself).
RECORD_CODEC = _MsgpackRecordCodec()
codecs.register("shelfq-join-record", RECORD_CODEC)
codecs.register("shelfq-user-state", _UserStateCodec())


class JoinTable(faust.Table):
    """The join's records; tells the worker when a rebalance's recovery is complete."""

    on_recovered: Any = None

    async def on_recovery_completed(self, active_tps: set, standby_tps: set) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        if self.on_recovered is not None:
            self.on_recovered({tp.partition for tp in active_tps})


def declare_tables(app: faust.App, settings: Settings) -> tuple[JoinTable, faust.Table]:
    """The join's records and the user histories, declared on ``app`` with our codecs."""
    records = JoinTable(app, name="join-records", default=None, beacon=app.tables.beacon, partitions=settings.partitions)
    # A changelog, declared as Faust declares its own (acks=False): only recovery reads it, and
    # no offset of it is ever committed. With acks on, Faust's stall detector took its assigned
    # partitions, which grow with every write but feed no stream, for stalled input and logged
    # an ERROR for each every 2.5 s once stall_timeout_s had passed.
    user_state_topic = app.topic(settings.topic(USER_STATE), key_serializer="shelfq-utf8",
                                 value_serializer="shelfq-user-state", partitions=settings.partitions,
                                 compacting=True, internal=False, acks=False)
    histories = cast(faust.Table, app.Table("user-history", default=None, partitions=settings.partitions,
                                            changelog_topic=user_state_topic))
    # Faust derives a table's serializers from its key/value types (JSON by default); ours are
    # codecs, set before the changelog topics are first built.
    for table, value_codec in ((records, "shelfq-join-record"), (histories, "shelfq-user-state")):
        table.key_serializer, table.value_serializer = "shelfq-utf8", value_codec
    app.tables.add(records)  # builds its changelog topic, now with the codecs above
    return records, histories
