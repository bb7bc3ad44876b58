"""User state: owns each user's history of attributed interactions, kept in the histories table
(whose changelog is the compacted ``user-state`` topic), and the writes to publish.

Only attributed feedback reaches a history, so duplicates do not repeat an interaction. An
interaction the history already holds (the same item, kind and event time) is a replay, not a
new one: feedback whose history reached the broker before a crash, and its join record did
not, is read and attributed again (``streams.outbox`` says why that order). Writes are
coalesced per user until the flush takes them.
"""

from __future__ import annotations

import faust

from shelfq.contracts.events import Feedback, Interaction, UserState


class UserHistories:
    """The histories ``table``, each cut to its last ``history_length`` interactions."""

    def __init__(self, table: faust.Table, history_length: int) -> None:
        self.table = table
        self.history_length = history_length
        self._writes: dict[str, tuple[int, UserState]] = {}

    def attribute(self, partition: int, fb: Feedback) -> None:
        """Append the interaction to the user's history; its table write publishes user-state."""
        previous = self.table.data.get(fb.user_id)
        history = list(previous.history) if previous is not None else []
        if fb.item_id is not None:
            interaction = Interaction(item_id=fb.item_id, event=fb.event, ts=fb.ts)  # type: ignore[arg-type]
            if interaction in history:
                return
            history.append(interaction)
        state = UserState(user_id=fb.user_id, history=history[-self.history_length:], ts=fb.ts)
        self.table.data[fb.user_id] = state
        self._writes[fb.user_id] = (partition, state)

    def take_writes(self) -> dict[str, tuple[int, UserState]]:
        """The histories written since the last call, by user: ``(partition, state)``."""
        writes, self._writes = self._writes, {}
        return writes
