"""Where the event stream last changed, per room and per user, for the recent past.

Every /sync asks "did anything happen in these rooms, or to this user's memberships,
between the client's token and now?".  Under load the answer is almost always "only in
one or two of them", and a query per question costs more than the rest of the sync.
:class:`StreamChanges` answers from memory: the event repository notes, on the reactor
thread and in the same step that moves the stream's current position, the position of
each room's last timeline event and of each membership change.

It knows nothing before its *floor*: the stream position when it started, raised as old
entries are evicted.  A question about a position below the floor gets ``None``
(unknown), and the caller reads the database as before.  Positions are noted in
increasing order (the repository writes the live stream under one lock).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

#: (kind, id): ("events", room): a timeline event; ("membership", user): that user's
#: membership; ("members", "*"): anyone's membership; ("presence", user).
Key = tuple[str, str]

#: Entities remembered (rooms, users); older ones are dropped and the floor rises.
DEFAULT_SIZE = 50_000


class StreamChanges:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = max(1, size)
        self._last: OrderedDict[Key, int] = OrderedDict()
        self._floor: int | None = None  # None: not started, every answer is "unknown"

    def start(self, position: int) -> None:
        """Begin answering for positions from ``position`` on (the stream's position when
        the repository loaded it: every later change will be noted)."""
        if self._floor is None:
            self._floor = position

    def note(self, entities: Iterable[Key], position: int) -> None:
        """Record that ``entities`` changed at stream ``position`` (after the commit)."""
        if self._floor is None:
            return
        for entity in entities:
            self._last[entity] = position
            self._last.move_to_end(entity)
        while len(self._last) > self._size:
            _, dropped = self._last.popitem(last=False)
            self._floor = max(self._floor, dropped)

    def changed(self, entities: Iterable[Key], after: int) -> dict[Key, int] | None:
        """The entities among ``entities`` that changed after ``after``, with the position
        of their last change; ``None`` if ``after`` is older than what is known."""
        if self._floor is None or after < self._floor:
            return None
        out: dict[Key, int] = {}
        for entity in entities:
            position = self._last.get(entity)
            if position is not None and position > after:
                out[entity] = position
        return out

    def changed_after(self, after: int) -> dict[Key, int] | None:
        """Every entity that changed after ``after``, with the position of its last change;
        ``None`` if ``after`` is older than what is known.  Costs only the entities found."""
        if self._floor is None or after < self._floor:
            return None
        out: dict[Key, int] = {}
        for entity in reversed(self._last):  # newest first: stop at the first older one
            position = self._last[entity]
            if position <= after:
                break
            out[entity] = position
        return out

    def changed_since(self, entity: Key, after: int) -> bool:
        """Whether ``entity`` may have changed after ``after`` (True when unknown)."""
        found = self.changed((entity,), after)
        return found is None or bool(found)
