"""State resolution v2 (room versions 3-11) and v2.1 (room version 12): pure protocol.

Entry point: :func:`resolve_state`.  The algorithm (:mod:`.v2`) is synchronous and
works on events in memory; :mod:`.resolution` fetches them from a
:class:`StateResolutionStore` in a few batched calls first.  :mod:`.auth_chain`
has the auth difference, the v12 conflicted subgraph and an in-memory store.
"""

from homeserver.state.auth_chain import InMemoryStateStore
from homeserver.state.interfaces import StateEvent, StateKey, StateMap, StateResolutionStore
from homeserver.state.resolution import resolve_state

__all__ = [
    "InMemoryStateStore",
    "StateEvent",
    "StateKey",
    "StateMap",
    "StateResolutionStore",
    "resolve_state",
]
