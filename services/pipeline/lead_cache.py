"""The leads this process wrote last, kept in memory with their row versions (migration 0015).

A lead transaction takes a lead's copy out of the cache when it loads the lead; the database
then sends the lead's full row only when its stored version is not the copy's (someone else
wrote it since). After the commit the transaction puts back what it wrote, with the versions
the database gave. A transaction that fails puts nothing back, so a copy changed by a batch
that rolled back is never used again. Bounded: the least recently written leads go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from scoring_service.state import LeadState


class LeadCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[int, LeadState]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, lead_ids: Iterable[str]) -> dict[str, tuple[int, LeadState]]:
        """Remove and return the cached (version, state) of these leads, where there is one."""
        taken = {}
        for lead_id in lead_ids:
            entry = self._entries.pop(lead_id, None)
            if entry is not None:
                taken[lead_id] = entry
        return taken

    def put(self, states: Mapping[str, LeadState], versions: Mapping[str, int]) -> None:
        """Keep the committed states of the leads written, at the versions stored."""
        if self.capacity <= 0:
            return
        for lead_id, version in versions.items():
            state = states.get(lead_id)
            if state is not None:
                self._entries[lead_id] = (version, state)
                self._entries.move_to_end(lead_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
