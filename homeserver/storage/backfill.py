"""Where a room's history has holes: its backward extremities.

A backward extremity is a prev_event that some event of the room's graph (a timeline or
hidden event) cites but that we never received as part of the graph: history from before
our server joined, or a gap left after an outage.  It may be missing entirely or known
only as an outlier (an auth event or a state event that a join brought).  Backfill asks
other servers for the events behind these.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database, Transaction
from homeserver.storage.events import OUTLIER


@dataclass(frozen=True, slots=True)
class BackwardExtremity:
    """A missing prev event, and the newest stored event that cites it."""

    event_id: str
    child_id: str
    child_depth: int


class BackfillStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def backward_extremities(
        self, room_id: str, *, min_depth: int | None, max_depth: int
    ) -> list[BackwardExtremity]:
        """The backward extremities of ``room_id`` cited by events whose depth lies between
        ``min_depth`` (None: no lower bound) and ``max_depth``, both included, the ones
        cited deepest (newest) first.

        One indexed range scan of the room's events in those depths, so callers bound
        the range by what they are about to read.
        """

        def txn_fn(txn: Transaction) -> list[BackwardExtremity]:
            lower = "" if min_depth is None else " AND e.depth >= ?"
            rows = txn.select_all(
                "SELECT g.prev_event_id, e.event_id, e.depth FROM events AS e"
                " JOIN event_edges AS g ON g.event_id = e.event_id"
                f" WHERE e.room_id = ? AND e.outlier <> ? AND e.depth <= ?{lower}"
                " AND NOT EXISTS (SELECT 1 FROM events AS p WHERE p.event_id = g.prev_event_id AND p.outlier <> ?)",
                (room_id, OUTLIER, max_depth, *(() if min_depth is None else (min_depth,)), OUTLIER),
            )
            newest: dict[str, BackwardExtremity] = {}
            for prev_id, child_id, depth in rows:
                found = BackwardExtremity(str(prev_id), str(child_id), int(depth))
                known = newest.get(found.event_id)
                if known is None or (found.child_depth, found.child_id) > (known.child_depth, known.child_id):
                    newest[found.event_id] = found
            return sorted(newest.values(), key=lambda x: (-x.child_depth, x.event_id))

        return await self._db.run_interaction("backward_extremities", txn_fn)
