"""Room DAG builders for the state resolution tests, and a Synapse oracle.

A :class:`Room` builds events the way a server would: each event's auth events are
selected from the state before it (resolved at merges by *our* resolver), and an
event the auth rules refuse against that state is refused, so every DAG is one an
honest server could have produced.  Each event exists twice: as our
:class:`~homeserver.events.model.Event` and as a Synapse event with the same ID, so
the same DAG can be resolved by both implementations.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from synapse import event_auth as synapse_auth
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS as SYNAPSE_ROOM_VERSIONS
from synapse.events import make_event_from_dict
from synapse.state import v2 as synapse_v2
from synapse.storage.databases.main.event_federation import StateDifference
from twisted.internet import defer
from twisted.python.failure import Failure

from homeserver.events import auth as our_auth
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.state.auth_chain import InMemoryStateStore
from homeserver.state.interfaces import StateKey, StateMap
from homeserver.state.resolution import resolve_state

T = TypeVar("T")

ALICE = "@alice:a.example"
BOB = "@bob:b.example"
CAROL = "@carol:c.example"
DAVE = "@dave:a.example"
EVE = "@eve:e.example"
USERS = (ALICE, BOB, CAROL, DAVE, EVE)

CREATE, MEMBER, PL, JR, TOPIC = (
    "m.room.create",
    "m.room.member",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.topic",
)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never really waits (in-memory stores) to completion."""
    d = defer.ensureDeferred(coro)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "coroutine waited on something: not in-memory?"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]


class _Clock:
    """Synapse's state res only ever sleeps for 0 to yield to the reactor."""

    async def sleep(self, duration: Any) -> None:
        return None


class SynapseStore:
    """Synapse's ``StateResolutionStore`` over a dict, computed the naive way (and
    independently of ours): full auth chains as sets, subgraph by reachability."""

    def __init__(self, events: Mapping[str, Any]) -> None:
        self.events = events
        self._chains: dict[str, frozenset[str]] = {}

    def chain(self, event_id: str) -> frozenset[str]:
        """Strict auth chain of one event (its auth events, recursively)."""
        cached = self._chains.get(event_id)
        if cached is None:
            event = self.events.get(event_id)
            out: set[str] = set()
            if event is not None:
                for auth_id in event.auth_event_ids():
                    out.add(auth_id)
                    out |= self.chain(auth_id)
            cached = self._chains[event_id] = frozenset(out)
        return cached

    def get_events(self, event_ids: Iterable[str], allow_rejected: bool = False) -> Any:
        return defer.succeed({e: self.events[e] for e in event_ids if e in self.events})

    def get_auth_chain_difference(
        self,
        room_id: str,
        state_sets: list[set[str]],
        conflicted_state: set[str] | None = None,
        additional_backwards_reachable_conflicted_events: set[str] | None = None,
    ) -> Any:
        chains = [set(s).union(*(self.chain(e) for e in s)) for s in state_sets]
        difference = chains[0].union(*chains[1:]) - chains[0].intersection(*chains[1:])
        subgraph = None
        if conflicted_state is not None:
            below = set(conflicted_state).union(*(self.chain(c) for c in conflicted_state))
            subgraph = {e for e in below if e in conflicted_state or self.chain(e) & conflicted_state}
        return defer.succeed(StateDifference(auth_difference=difference, conflicted_subgraph=subgraph))


class Room:
    """A room DAG under construction; events are named for readable tests.

    ``auth`` picks the authorisation rules used both to refuse invalid events while
    building and by our resolver: "synapse" (Synapse's state-dependent rules, to test
    the algorithm in isolation) or "ours" (``homeserver.events.auth``).
    """

    def __init__(
        self,
        version: str,
        *,
        auth: str = "ours",
        creator: str = ALICE,
        additional_creators: Sequence[str] = (),
        create_content: Mapping[str, Any] | None = None,
    ) -> None:
        self.rv: RoomVersion = get_room_version(version)
        self.syn_rv = SYNAPSE_ROOM_VERSIONS[version]
        self.auth = auth
        self.ours: dict[str, Event] = {}
        self.syn: dict[str, Any] = {}
        self.ids: dict[str, str] = {}
        self.state_after: dict[str, dict[StateKey, str]] = {}
        self._ts = itertools.count(1000, 10)
        self.room_id = "!room:a.example"  # replaced by the create event's in v12
        content: dict[str, Any] = {"room_version": version}
        if not self.rv.implicit_room_creator:
            content["creator"] = creator
        if additional_creators:
            content["additional_creators"] = list(additional_creators)
        content.update(create_content or {})
        self.add("CREATE", CREATE, creator, content, state_key="", prev=[])
        if self.rv.room_id_from_create_event:
            self.room_id = "!" + self.ids["CREATE"][1:]

    # -- building ----------------------------------------------------------------------

    def id(self, name: str) -> str:
        return self.ids[name]

    def name_of(self, event_id: str) -> str:
        return {v: k for k, v in self.ids.items()}.get(event_id, event_id)

    def names(self, state: StateMap) -> dict[StateKey, str]:
        """A state map with event names instead of IDs, for readable assertions."""
        inverse = {v: k for k, v in self.ids.items()}
        return {k: inverse.get(v, v) for k, v in state.items()}

    def add(
        self,
        name: str,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        prev: Sequence[str],
        auth_names: Sequence[str] | None = None,
        ts: int | None = None,
        check: bool = True,
    ) -> str:
        """Add an event after the events named ``prev``; returns its ID.

        The state before it is the resolution of the states after ``prev``.  Its auth
        events are selected from that state unless ``auth_names`` gives them.  With
        ``check``, raise ``ValueError`` when the auth rules refuse it there.
        """
        assert name not in self.ids, name
        before = self.state_before(prev)
        prev_ids = [self.ids[p] for p in prev]
        d: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content),
            "prev_events": prev_ids,
            "depth": 1 + max((self.ours[p].depth for p in prev_ids), default=0),
            "origin_server_ts": next(self._ts) if ts is None else ts,
            "hashes": {"sha256": "aGFzaA"},
            "signatures": {},
        }
        if state_key is not None:
            d["state_key"] = state_key
        if not (event_type == CREATE and self.rv.room_id_from_create_event):
            d["room_id"] = self.room_id
        if auth_names is not None:
            d["auth_events"] = [self.ids[a] for a in auth_names]
        else:
            types = our_auth.auth_types_from_fields(self.rv, event_type, sender, state_key, content)
            d["auth_events"] = sorted(before[k] for k in types if k in before)
        syn_event = make_event_from_dict(dict(d), self.syn_rv)
        event = Event(d, self.rv, event_id=syn_event.event_id)
        self.ours[event.event_id] = event
        self.syn[event.event_id] = syn_event
        if check and not self.allowed(event, before):
            del self.ours[event.event_id], self.syn[event.event_id]
            raise ValueError(f"{name} is not allowed by the auth rules")
        self.ids[name] = event.event_id
        after = dict(before)
        if state_key is not None:
            after[(event_type, state_key)] = event.event_id
        self.state_after[name] = after
        return event.event_id

    def try_add(self, name: str, *args: Any, **kwargs: Any) -> bool:
        """:meth:`add` that returns False instead of raising when refused."""
        try:
            self.add(name, *args, **kwargs)
        except ValueError:
            return False
        return True

    def allowed(self, event: Event, state: StateMap) -> bool:
        """Whether the auth rules allow ``event`` against ``state`` (plus, in v12, the
        create event the room ID names)."""
        auth_state: dict[StateKey, Event] = {}
        for key in our_auth.auth_types_for_event(self.rv, event) | {("m.room.create", "")}:
            if key in state:
                auth_state[key] = self.ours[state[key]]
        if event.type != CREATE and ("m.room.create", "") not in auth_state:
            auth_state[("m.room.create", "")] = self.ours[self.ids["CREATE"]]
        try:
            self.auth_check(self.rv, event, auth_state)
        except Exception:
            return False
        return True

    # -- the auth rules under test -------------------------------------------------------

    def auth_check(self, rv: RoomVersion, event: Any, auth_events: Mapping[StateKey, Any]) -> None:
        if self.auth == "ours":
            our_auth.check_auth_rules(rv, event, auth_events)
        else:
            synapse_auth.check_state_dependent_auth_rules(
                self.syn[event.event_id], [self.syn[a.event_id] for a in auth_events.values()]
            )

    def auth_types(self, rv: RoomVersion, event: Any) -> Collection[StateKey]:
        if self.auth == "ours":
            return our_auth.auth_types_for_event(rv, event)
        return synapse_auth.auth_types_for_event(self.syn_rv, self.syn[event.event_id])

    # -- resolving -----------------------------------------------------------------------

    def state_before(self, prev: Sequence[str]) -> dict[StateKey, str]:
        if not prev:
            return {}
        if len(prev) == 1:
            return dict(self.state_after[prev[0]])
        return self.resolve([self.state_after[p] for p in prev])

    def resolve(self, state_sets: Sequence[StateMap], *, rejected: Collection[str] = ()) -> dict[StateKey, str]:
        """Resolve with our implementation."""
        store = InMemoryStateStore(self.ours, rejected=rejected)
        return run_sync(
            resolve_state(
                self.rv,
                self.room_id,
                state_sets,
                store,
                auth_check=self.auth_check,
                auth_types=self.auth_types,
            )
        )

    def resolve_with_synapse(self, state_sets: Sequence[StateMap]) -> dict[StateKey, str]:
        """Resolve with Synapse's implementation (the oracle)."""
        result = run_sync(
            synapse_v2.resolve_events_with_store(
                _Clock(),
                self.room_id,
                self.syn_rv,
                [dict(s) for s in state_sets],
                None,
                SynapseStore(self.syn),
            )
        )
        return dict(result)

    def resolve_names(self, *names: str) -> dict[StateKey, str]:
        """Resolve the states after the named events; returns event names."""
        return self.names(self.resolve([self.state_after[n] for n in names]))
