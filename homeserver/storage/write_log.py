"""A log of recent writes, to tell whether something read at some point is still current.

Reads run in database threads while the reactor thread writes: an answer read before a
write may arrive after it.  Each write notes its keys with a new position; whoever read
at position ``p`` asks :meth:`WriteLog.changed_since` before trusting (or caching) what it
read.  The log is bounded: once older entries are dropped, every question about a
position before them answers "changed" (the safe answer).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable


class WriteLog:
    def __init__(self, size: int) -> None:
        self._size = size
        self._seqs: OrderedDict[Hashable, int] = OrderedDict()
        self._position = 0
        self._dropped_upto = 0

    @property
    def position(self) -> int:
        """The position of the last write (reads started now see everything up to it)."""
        return self._position

    def note(self, keys: Iterable[Hashable]) -> None:
        """Record a committed write of ``keys`` (call on the reactor thread, after commit)."""
        self._position += 1
        for key in keys:
            self._seqs[key] = self._position
            self._seqs.move_to_end(key)
        while len(self._seqs) > self._size:
            _, seq = self._seqs.popitem(last=False)
            self._dropped_upto = max(self._dropped_upto, seq)

    def changed_since(self, key: Hashable, position: int) -> bool:
        """Whether ``key`` may have been written after ``position``."""
        return position < self._dropped_upto or self._seqs.get(key, 0) > position
