"""State resolution benchmark: a big room, forked, resolved by us (and Synapse).

Builds a room with ``--state-events`` state entries (default 10,000: mostly joined
members, plus custom state), forks it into ``--state-sets`` branches (default 2)
that each change the same ``--conflicts`` keys (default 1,000: display names, custom
state, kicks and bans, plus a power levels change per branch), and resolves the
states at the branch tips with ``homeserver.state.resolve_state`` and our auth
rules.  Every event is valid where it was sent, so the resolver does the full work.

    .venv/bin/python tests/bench/state_res_bench.py --compare-synapse

prints wall times (best of ``--repeat``) and, with ``--compare-synapse``, Synapse's
time on the same input and the ratio; exits 1 if ours exceeds ``--max-seconds``.
Importable: :func:`build_room`, :func:`time_ours`, :func:`time_synapse`, :func:`main`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from homeserver.events.model import Event, make_event_id
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.state.auth_chain import InMemoryStateStore, auth_chain_difference, conflicted_subgraph
from homeserver.state.interfaces import StateKey
from homeserver.state.resolution import resolve_state

SERVER = "bench.example"
ADMIN = f"@admin:{SERVER}"
CUSTOM = "org.example.bench"


def user(i: int) -> str:
    return f"@user{i}:{SERVER}"


def moderator(i: int) -> str:
    return f"@mod{i}:{SERVER}"


@dataclass
class BenchRoom:
    """A built room: its events (ours, and their dicts) and the states to resolve."""

    room_version: RoomVersion
    room_id: str
    events: dict[str, Event] = field(default_factory=dict)
    state_sets: list[dict[StateKey, str]] = field(default_factory=list)
    conflicted_keys: int = 0


class _Builder:
    def __init__(self, room_version: RoomVersion) -> None:
        self.rv = room_version
        self.room = BenchRoom(room_version, room_id="!bench:" + SERVER)
        self.ts = 1_000_000

    def send(
        self,
        state: dict[StateKey, str],
        prev: str | None,
        event_type: str,
        sender: str,
        state_key: str,
        content: dict[str, Any],
    ) -> str:
        """Append a state event after ``prev`` with auth events from ``state``."""
        auth_keys: list[StateKey] = [("m.room.power_levels", ""), ("m.room.member", sender)]
        if not self.rv.room_id_from_create_event:
            auth_keys.append(("m.room.create", ""))
        if event_type == "m.room.member":
            auth_keys.append(("m.room.member", state_key))
            if content.get("membership") in ("join", "invite"):
                auth_keys.append(("m.room.join_rules", ""))
        self.ts += 1
        d: dict[str, Any] = {
            "type": event_type,
            "state_key": state_key,
            "sender": sender,
            "content": content,
            "prev_events": [prev] if prev else [],
            "auth_events": sorted({state[k] for k in auth_keys if k in state}) if event_type != "m.room.create" else [],
            "depth": self.ts - 1_000_000,
            "origin_server_ts": self.ts,
            "hashes": {"sha256": "aGFzaA"},
            "signatures": {},
        }
        if not (event_type == "m.room.create" and self.rv.room_id_from_create_event):
            d["room_id"] = self.room.room_id
        event = Event(d, self.rv, event_id=make_event_id(self.rv, d))
        if event_type == "m.room.create" and self.rv.room_id_from_create_event:
            self.room.room_id = event.room_id
        self.room.events[event.event_id] = event
        state[(event_type, state_key)] = event.event_id
        return event.event_id


def build_room(
    room_version: str = "12", state_events: int = 10_000, conflicts: int = 1_000, state_sets: int = 2
) -> BenchRoom:
    """Build the benchmark room; see the module docstring for its shape."""
    rv = get_room_version(room_version)
    b = _Builder(rv)
    state: dict[StateKey, str] = {}
    mods = [moderator(i) for i in range(10)]
    create_content: dict[str, Any] = {"room_version": room_version}
    if not rv.implicit_room_creator:
        create_content["creator"] = ADMIN
    last = b.send(state, None, "m.room.create", ADMIN, "", create_content)
    last = b.send(state, last, "m.room.member", ADMIN, ADMIN, {"membership": "join"})
    levels = {m: 50 for m in mods}
    if not rv.privileged_creators:
        levels[ADMIN] = 100
    last = b.send(state, last, "m.room.power_levels", ADMIN, "", {"users": levels})
    last = b.send(state, last, "m.room.join_rules", ADMIN, "", {"join_rule": "public"})
    for m in mods:
        last = b.send(state, last, "m.room.member", m, m, {"membership": "join"})

    # Mostly members (90%), the rest custom state set by the admin.
    members = max(conflicts, (state_events - len(state)) * 9 // 10)
    for i in range(members):
        last = b.send(state, last, "m.room.member", user(i), user(i), {"membership": "join"})
    custom = 0
    while len(state) < state_events:
        last = b.send(state, last, CUSTOM, ADMIN, str(custom), {"n": custom})
        custom += 1

    # The conflicted keys: 10% kicked or banned on branch 0 (power events) while they
    # change their display name elsewhere, 50% display names on every branch, the
    # rest custom state on every branch; plus a power levels change per branch.
    n_power = conflicts // 10
    n_names = conflicts // 2
    n_custom = min(conflicts - n_power - n_names - 1, custom)
    fork = last
    for branch in range(state_sets):
        branch_state = dict(state)
        last = fork
        new_levels = dict(levels)
        new_levels[moderator(branch % len(mods))] = 40 + branch
        last = b.send(branch_state, last, "m.room.power_levels", ADMIN, "", {"users": new_levels})
        for i in range(n_power):
            target = user(i)
            if branch == 0:
                membership = "ban" if i % 2 else "leave"
                last = b.send(branch_state, last, "m.room.member", mods[i % 5 + 5], target, {"membership": membership})
            else:
                content = {"membership": "join", "displayname": f"b{branch}"}
                last = b.send(branch_state, last, "m.room.member", target, target, content)
        for i in range(n_power, n_power + n_names):
            content = {"membership": "join", "displayname": f"b{branch}"}
            last = b.send(branch_state, last, "m.room.member", user(i), user(i), content)
        for j in range(n_custom):
            last = b.send(branch_state, last, CUSTOM, ADMIN, str(j), {"n": j, "branch": branch})
        b.room.state_sets.append(branch_state)
    b.room.conflicted_keys = 1 + n_power + n_names + n_custom
    return b.room


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine over in-memory stores (it never waits) to completion."""
    results: list[Any] = []
    defer.ensureDeferred(coro).addBoth(results.append)
    if not results:
        raise RuntimeError("the resolution waited on something")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


@dataclass
class Timings:
    """Wall-clock and CPU seconds of each run.  CPU time is steadier on a shared
    machine; the ratio against Synapse uses it."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (
            f"{name:8} wall best {min(self.wall) * 1000:6.1f} ms, median {statistics.median(self.wall) * 1000:6.1f} ms;"
            f" cpu best {min(self.cpu) * 1000:6.1f} ms"
        )


def _timed(timings: Timings, fn: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    timings.wall.append(time.perf_counter() - wall)
    timings.cpu.append(time.process_time() - cpu)
    return result


def ours_runner(room: BenchRoom) -> Callable[[], dict[StateKey, str]]:
    """One resolution with our implementation (a fresh store each time)."""

    def once() -> dict[StateKey, str]:
        store = InMemoryStateStore(room.events)
        return _run(resolve_state(room.room_version, room.room_id, room.state_sets, store))  # type: ignore[no-any-return]

    return once


def time_ours(room: BenchRoom, repeat: int = 3) -> tuple[Timings, dict[StateKey, str]]:
    """Resolve with our implementation ``repeat`` times."""
    timings, once = Timings(), ours_runner(room)
    result = None
    for _ in range(repeat):
        result = _timed(timings, once)
    assert result is not None
    return timings, result


class _SynapseStore:
    """Synapse's store interface over the same events; the auth difference and
    subgraph come from the same in-memory walks as ours (in production Synapse
    answers them from its chain cover index), so the comparison is of the
    resolution algorithm."""

    def __init__(self, events: dict[str, Any]) -> None:
        self.events = events

    def _auth_ids(self, event_id: str) -> Sequence[str]:
        event = self.events.get(event_id)
        return event.auth_event_ids() if event is not None else ()

    def get_events(self, event_ids: Any, allow_rejected: bool = False) -> Any:
        return defer.succeed({e: self.events[e] for e in event_ids if e in self.events})

    def get_auth_chain_difference(
        self, room_id: str, state_sets: list[set[str]], conflicted_state: Any = None, additional: Any = None
    ) -> Any:
        from synapse.storage.databases.main.event_federation import StateDifference

        difference = auth_chain_difference(state_sets, self._auth_ids)
        subgraph = None if conflicted_state is None else conflicted_subgraph(conflicted_state, self._auth_ids)
        return defer.succeed(StateDifference(auth_difference=difference, conflicted_subgraph=subgraph))


def synapse_runner(room: BenchRoom) -> Callable[[], dict[StateKey, str]]:
    """One resolution of the same input with Synapse's ``resolve_events_with_store``."""
    import synapse.event_auth  # noqa: F401  (imported first: breaks an import cycle in synapse.state)
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
    from synapse.events import make_event_from_dict
    from synapse.state import v2

    rv = KNOWN_ROOM_VERSIONS[room.room_version.identifier]
    events = {e: make_event_from_dict(dict(ev.dict), rv) for e, ev in room.events.items()}
    assert all(events[e].event_id == e for e in events), "event IDs differ from Synapse's"

    class Clock:
        async def sleep(self, duration: Any) -> None:
            return None

    def once() -> dict[StateKey, str]:
        coro = v2.resolve_events_with_store(Clock(), room.room_id, rv, room.state_sets, None, _SynapseStore(events))
        return dict(_run(coro))

    return once


def time_synapse(room: BenchRoom, repeat: int = 3) -> tuple[Timings, dict[StateKey, str]]:
    """Resolve the same input with Synapse ``repeat`` times."""
    timings, once = Timings(), synapse_runner(room)
    result = None
    for _ in range(repeat):
        result = _timed(timings, once)
    assert result is not None
    return timings, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--room-version", default="12", help="room version (default 12; 3-11 use v2)")
    parser.add_argument("--state-events", type=int, default=10_000)
    parser.add_argument("--conflicts", type=int, default=1_000)
    parser.add_argument("--state-sets", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    parser.add_argument("--max-seconds", type=float, default=1.0, help="budget for our best run")
    parser.add_argument("--compare-synapse", action="store_true", help="also time Synapse on the same input")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one of our runs")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    room = build_room(args.room_version, args.state_events, args.conflicts, args.state_sets)
    print(
        f"room v{args.room_version}: {len(room.events)} events, {len(room.state_sets[0])} state entries, "
        f"{room.conflicted_keys} conflicted keys across {args.state_sets} state sets "
        f"(built in {time.perf_counter() - start:.1f}s)"
    )

    ours_once = ours_runner(room)
    synapse_once = synapse_runner(room) if args.compare_synapse else None
    ours_t, synapse_t = Timings(), Timings()
    ours = theirs = None
    # Alternate the two so that load on a shared machine hits both alike.
    for _ in range(args.repeat):
        ours = _timed(ours_t, ours_once)
        if synapse_once is not None:
            theirs = _timed(synapse_t, synapse_once)
    print(ours_t.line("ours"))
    best = min(ours_t.wall)

    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(ours_once)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)

    if synapse_once is not None:
        print(synapse_t.line("synapse"))
        print(
            f"ratio ours/synapse: cpu {min(ours_t.cpu) / min(synapse_t.cpu):.2f}, wall {best / min(synapse_t.wall):.2f}"
        )
        if theirs != ours:
            print("MISMATCH: the resolved states differ")
            return 2

    if best > args.max_seconds:
        print(f"FAIL: {best:.3f}s exceeds the budget of {args.max_seconds}s")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
