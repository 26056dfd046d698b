#!/usr/bin/env python3
"""A load generator for any Matrix homeserver on loopback.

    python tests/bench/loadgen.py --url http://127.0.0.1:8008 --shared-secret SECRET \\
        --users 40 --rooms 8 --messages 2000 --concurrency 16 [--pid SERVER_PID] [--json]

What it does, in order (see tests/bench/README.md for what each number means):

1. registers ``--users`` users with Synapse's shared-secret admin registration
   (``/_synapse/admin/v1/register``), under a prefix unique to this run;
2. creates ``--rooms`` public rooms and joins every user to ``--rooms-per-user`` of them;
3. starts one long-poll ``/sync`` loop per user, then sends ``--messages`` messages
   (``--concurrency`` senders at once), spread over users and their rooms, and times
   each one from the start of its ``PUT /send`` to the first ``/sync`` response of
   *another* member that carries it (matched by a marker in the body);
4. creates one more user, joined to ``--initial-sync-rooms`` rooms with a few messages
   each, and times its initial ``/sync`` (mean of ``--initial-sync-runs``);
5. throughout, samples the server process's RSS (``--pid``, from /proc) for the peak.

A metric that cannot be measured (an endpoint missing, every request failing) is
reported as n/a together with the HTTP errors that caused it; the run never crashes
on a server error.  Every request has a timeout and the whole run a hard one
(``--timeout``).  Only loopback URLs are accepted.

Needs only the standard library and aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import random
import secrets
import socket
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiohttp

CLIENT_V3 = "/_matrix/client/v3"
ADMIN_REGISTER = "/_synapse/admin/v1/register"
MESSAGE_EVENT = "m.room.message"
# The /sync filter of the syncing users: what a lean client asks for.
SYNC_FILTER: dict[str, Any] = {
    "room": {"timeline": {"limit": 100}, "state": {"lazy_load_members": True}},
    "presence": {"not_types": ["*"]},
}
MAX_RATE_LIMIT_RETRIES = 3
CREATE_ROOM_ATTEMPTS = 6


@dataclass(frozen=True)
class LoadConfig:
    """Everything one run is parametrised by (the CLI flags)."""

    url: str
    shared_secret: str
    users: int = 20
    rooms: int = 5
    rooms_per_user: int = 3
    messages: int = 500
    concurrency: int = 8
    initial_sync_rooms: int = 200
    initial_sync_messages: int = 3
    initial_sync_runs: int = 3
    pid: int | None = None
    timeout: float = 900.0
    request_timeout: float = 60.0
    sync_timeout_ms: int = 30_000
    drain_timeout: float = 20.0
    setup_concurrency: int = 8


# --------------------------------------------------------------------------- statistics


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation, like numpy's default; None if empty."""
    data = sorted(values)
    if not data:
        return None
    k = (len(data) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


# --------------------------------------------------------------------------- HTTP


class RequestFailed(Exception):
    """A request that did not end in a 2xx with a JSON body."""

    def __init__(self, label: str, status: int | str, detail: str) -> None:
        super().__init__(f"{label} -> {status}: {detail}")
        self.label, self.status, self.detail = label, status, detail


@dataclass
class ErrorLog:
    """Failed requests, grouped by phase, request shape and status, with one sample each."""

    groups: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def record(self, phase: str, failure: RequestFailed) -> None:
        key = (phase, failure.label, str(failure.status))
        group = self.groups.setdefault(
            key, {"phase": phase, "request": failure.label, "status": failure.status, "count": 0, "sample": ""}
        )
        group["count"] += 1
        if not group["sample"]:
            group["sample"] = failure.detail[:500]

    def as_list(self) -> list[dict[str, Any]]:
        return list(self.groups.values())

    def count(self, phase: str | None = None) -> int:
        return sum(g["count"] for g in self.groups.values() if phase is None or g["phase"] == phase)


class Client:
    """A thin JSON client over one aiohttp session; every call has a timeout."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession, request_timeout: float) -> None:
        self.base = base_url.rstrip("/")
        self.session = session
        self.request_timeout = request_timeout
        self.rate_limited = 0

    async def call(
        self,
        method: str,
        path: str,
        label: str,
        *,
        body: Any = None,
        token: str | None = None,
        query: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[Any, float, int]:
        """One request; returns (JSON body, perf_counter when the body was read, body size).

        Retries a 429 a few times after the server's ``retry_after_ms``; raises
        :class:`RequestFailed` for anything else that is not a 2xx JSON answer.
        """
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        client_timeout = aiohttp.ClientTimeout(total=timeout or self.request_timeout)
        for attempt in range(MAX_RATE_LIMIT_RETRIES + 1):
            try:
                async with self.session.request(
                    method, self.base + path, data=data, headers=headers, params=query, timeout=client_timeout
                ) as resp:
                    raw = await resp.read()
                    done = time.perf_counter()
                    status = resp.status
            except TimeoutError:
                raise RequestFailed(label, "timeout", f"no answer within {client_timeout.total}s") from None
            except aiohttp.ClientError as exc:
                raise RequestFailed(label, "connection", f"{type(exc).__name__}: {exc}") from None
            if status == 429 and attempt < MAX_RATE_LIMIT_RETRIES:
                self.rate_limited += 1
                retry_ms = _json_or_none(raw) or {}
                delay = retry_ms.get("retry_after_ms", 1000) if isinstance(retry_ms, dict) else 1000
                await asyncio.sleep(min(float(delay) / 1000.0, 5.0))
                continue
            parsed = _json_or_none(raw)
            if not 200 <= status < 300 or parsed is None:
                text = raw[:400].decode("utf-8", "replace")
                raise RequestFailed(label, status, text or "(empty body)")
            return parsed, done, len(raw)
        raise AssertionError("unreachable")


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def require_loopback(url: str) -> None:
    """Refuse anything but http(s) to a loopback address: this tool is a load generator."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"--url must be http(s)://HOST:PORT, got {url!r}")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise SystemExit(f"--url host {parts.hostname!r} does not resolve: {exc}") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise SystemExit(f"--url must point at a loopback address; {parts.hostname} is {info[4][0]}")


# --------------------------------------------------------------------------- the server process


class ProcessSampler:
    """Samples a local process's RSS (VmRSS) and CPU time from /proc while the run goes on."""

    def __init__(self, pid: int | None, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss_kb = 0
        self.first_rss_kb: int | None = None
        self.last_rss_kb: int | None = None
        self.problem: str | None = None if pid is not None else "no --pid given"

    def _status(self) -> dict[str, int]:
        out = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
        return out

    def sample(self) -> None:
        if self.pid is None or self.problem:
            return
        try:
            rss = self._status().get("VmRSS")
        except OSError as exc:
            self.problem = f"cannot read /proc/{self.pid}/status: {exc}"
            return
        if rss is None:
            self.problem = f"/proc/{self.pid}/status has no VmRSS"
            return
        if self.first_rss_kb is None:
            self.first_rss_kb = rss
        self.last_rss_kb = rss
        self.peak_rss_kb = max(self.peak_rss_kb, rss)

    def high_water_kb(self) -> int | None:
        """The kernel's own peak RSS of the process since it started (VmHWM)."""
        try:
            return self._status().get("VmHWM") if self.pid is not None else None
        except OSError:
            return None

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time of the process so far."""
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)


def machine_cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return sum(values) - idle, sum(values)


# --------------------------------------------------------------------------- the run


@dataclass
class User:
    user_id: str
    token: str
    index: int
    password: str = ""


@dataclass
class DeliveryTracker:
    """Send times and /sync arrival times of the benchmark's messages, keyed by sequence number."""

    marker: str
    sent_at: dict[int, float] = field(default_factory=dict)
    sent_ok: set[int] = field(default_factory=set)
    sender_of: dict[int, str] = field(default_factory=dict)
    expected_recipients: dict[int, int] = field(default_factory=dict)
    first_delivery: dict[int, float] = field(default_factory=dict)
    seen: set[tuple[int, int]] = field(default_factory=set)
    fanout_latencies: list[float] = field(default_factory=list)
    expected_total: int = 0
    delivered_total: int = 0
    all_delivered: asyncio.Event = field(default_factory=asyncio.Event)

    def body(self, seq: int) -> str:
        return f"{self.marker} {seq}"

    def message_ok(self, seq: int, recipients: int) -> None:
        self.sent_ok.add(seq)
        self.expected_recipients[seq] = recipients
        self.expected_total += recipients
        self._check_done()

    def observe(self, recipient: User, sync_body: Any, received_at: float) -> None:
        rooms = ((sync_body.get("rooms") or {}).get("join") or {}) if isinstance(sync_body, dict) else {}
        for room in rooms.values():
            for event in (room.get("timeline") or {}).get("events") or []:
                if event.get("type") != MESSAGE_EVENT or event.get("sender") == recipient.user_id:
                    continue
                parts = str((event.get("content") or {}).get("body", "")).split(" ")
                if len(parts) != 2 or parts[0] != self.marker or not parts[1].isdigit():
                    continue
                seq = int(parts[1])
                if seq not in self.sent_at or (seq, recipient.index) in self.seen:
                    continue
                self.seen.add((seq, recipient.index))
                latency = received_at - self.sent_at[seq]
                self.fanout_latencies.append(latency)
                self.delivered_total += 1
                if seq not in self.first_delivery:
                    self.first_delivery[seq] = latency
        self._check_done()

    def _check_done(self) -> None:
        if self.delivered_total >= self.expected_total and len(self.sent_ok) > 0:
            self.all_delivered.set()
        else:
            self.all_delivered.clear()


def log(message: str) -> None:
    print(f"[loadgen {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def gather_limited(concurrency: int, jobs: Iterable[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the jobs, at most ``concurrency`` at once; each result or the exception it raised."""
    iterator: Iterator[tuple[int, Callable[[], Awaitable[Any]]]] = enumerate(jobs)
    results: dict[int, Any] = {}

    async def worker() -> None:
        for index, job in iterator:
            try:
                results[index] = await job()
            except RequestFailed as exc:
                results[index] = exc

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return [results[i] for i in sorted(results)]


class LoadRun:
    """One benchmark run; fills ``self.results`` as it goes, so a timeout still reports."""

    def __init__(self, config: LoadConfig, client: Client) -> None:
        self.config = config
        self.client = client
        self.errors = ErrorLog()
        self.prefix = "bench" + secrets.token_hex(3)
        self.sampler = ProcessSampler(config.pid)
        self.phase = "start"
        self.metrics: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}
        self.phases: dict[str, float] = {}
        self.unavailable: dict[str, str] = {}
        self.results: dict[str, Any] = {
            "target": config.url,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": {k: v for k, v in asdict(config).items() if k != "shared_secret"},
            "run_prefix": self.prefix,
            "metrics": self.metrics,
            "counts": self.counts,
            "phase_seconds": self.phases,
            "unavailable": self.unavailable,
            "errors": [],
        }

    # ---------------------------------------------------------------- helpers

    def na(self, metric: str, reason: str) -> None:
        self.metrics.setdefault(metric, None)
        self.unavailable.setdefault(metric, reason)
        log(f"{metric}: n/a ({reason})")

    def _failed(self, result: Any) -> RequestFailed | None:
        if isinstance(result, RequestFailed):
            self.errors.record(self.phase, result)
            return result
        return None

    def _first_error(self, phase: str, prefer: str = "") -> str:
        """The first failed request of a phase (of the ``prefer`` kind, if there is one)."""
        groups = [g for g in self.errors.as_list() if g["phase"] == phase]
        groups.sort(key=lambda g: g["request"] != prefer)
        for group in groups:
            return f"{group['request']} -> HTTP {group['status']}: {group['sample'][:200]}"
        return "no successful request"

    def _timed(self, name: str, started: float) -> None:
        self.phases[name] = round(time.perf_counter() - started, 3)

    # ---------------------------------------------------------------- setup

    async def register(self, localpart: str) -> User:
        label_get, label_post = f"GET {ADMIN_REGISTER}", f"POST {ADMIN_REGISTER}"
        nonce_body, _, _ = await self.client.call("GET", ADMIN_REGISTER, label_get)
        nonce = str(nonce_body.get("nonce", ""))
        password = secrets.token_urlsafe(12)
        mac = hmac.new(self.config.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(), b"notadmin"]))
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": False, "mac": mac.hexdigest()}
        answer, _, _ = await self.client.call("POST", ADMIN_REGISTER, label_post, body=body)
        if not answer.get("access_token") or not answer.get("user_id"):
            raise RequestFailed(label_post, 200, f"no access_token/user_id in {str(answer)[:200]}")
        return User(answer["user_id"], answer["access_token"], -1, password)

    async def login(self, user: User) -> str:
        """A new access token (so a new device) for ``user``."""
        label = f"POST {CLIENT_V3}/login"
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": user.password,
        }
        answer, _, _ = await self.client.call("POST", f"{CLIENT_V3}/login", label, body=body)
        if not answer.get("access_token"):
            raise RequestFailed(label, 200, f"no access_token in {str(answer)[:200]}")
        return str(answer["access_token"])

    async def register_users(self, count: int) -> list[User]:
        self.phase = "register"
        started = time.perf_counter()
        results = await gather_limited(
            self.config.setup_concurrency,
            (partial(self.register, f"{self.prefix}u{i}") for i in range(count)),
        )
        users: list[User] = []
        for result in results:
            if not self._failed(result):
                result.index = len(users)
                users.append(result)
        self._timed("register", started)
        self.counts["users_registered"] = len(users)
        log(f"registered {len(users)}/{count} users in {self.phases['register']:.1f}s")
        return users

    async def create_room(self, creator: User, name: str) -> str:
        body = {"preset": "public_chat", "name": name, "visibility": "private"}
        for attempt in range(CREATE_ROOM_ATTEMPTS):
            try:
                answer, _, _ = await self.client.call(
                    "POST", f"{CLIENT_V3}/createRoom", "POST /createRoom", body=body, token=creator.token
                )
                return str(answer["room_id"])
            except RequestFailed as exc:
                # A server that derives room IDs from the create event alone can collide
                # on concurrent creations by one user: count it as an error, but retry so
                # that the rest of the run still measures something.
                if exc.status != 400 or "M_ROOM_IN_USE" not in exc.detail or attempt == CREATE_ROOM_ATTEMPTS - 1:
                    raise
                self.errors.record(self.phase, exc)
                await asyncio.sleep(random.uniform(0.002, 0.03))
        raise AssertionError("unreachable")

    async def join(self, user: User, room_id: str) -> str:
        await self.client.call(
            "POST", f"{CLIENT_V3}/join/{_quote(room_id)}", "POST /join/{room}", body={}, token=user.token
        )
        return room_id

    async def send(self, user: User, room_id: str, body: str, txn: str) -> float:
        _, done, _ = await self.client.call(
            "PUT",
            f"{CLIENT_V3}/rooms/{_quote(room_id)}/send/{MESSAGE_EVENT}/{txn}",
            f"PUT /rooms/{{room}}/send/{MESSAGE_EVENT}/{{txn}}",
            body={"msgtype": "m.text", "body": body},
            token=user.token,
        )
        return done

    async def build_rooms(
        self, users: list[User]
    ) -> tuple[list[str | None], dict[int, list[int]], dict[int, set[int]]]:
        """Rooms and memberships: user i is in rooms (i + j) % M for j < rooms_per_user."""
        n, m, r = len(users), self.config.rooms, min(self.config.rooms_per_user, self.config.rooms)
        user_rooms = {i: [(i + j) % m for j in range(r)] for i in range(n)}
        members: dict[int, set[int]] = {room: set() for room in range(m)}
        for i, rooms in user_rooms.items():
            for room in rooms:
                members[room].add(i)
        self.phase = "create_rooms"
        started = time.perf_counter()
        creators = {room: min(members[room]) if members[room] else 0 for room in range(m)}
        created = await gather_limited(
            self.config.setup_concurrency,
            (partial(self.create_room, users[creators[room]], f"bench room {room}") for room in range(m)),
        )
        room_ids: list[str | None] = [None if self._failed(c) else c for c in created]
        self._timed("create_rooms", started)
        self.counts["rooms_created"] = sum(1 for x in room_ids if x)
        log(f"created {self.counts['rooms_created']}/{m} rooms in {self.phases['create_rooms']:.1f}s")

        self.phase = "join"
        started = time.perf_counter()
        wanted = [
            (i, room) for i, rooms in user_rooms.items() for room in rooms if room_ids[room] and i != creators[room]
        ]
        joined = await gather_limited(
            self.config.setup_concurrency,
            (partial(self.join, users[i], str(room_ids[room])) for i, room in wanted),
        )
        for (i, room), result in zip(wanted, joined, strict=True):
            if self._failed(result):
                members[room].discard(i)
                user_rooms[i].remove(room)
        for room, room_id in enumerate(room_ids):
            if room_id is None:
                members[room] = set()
                for rooms in user_rooms.values():
                    if room in rooms:
                        rooms.remove(room)
        self._timed("join", started)
        self.counts["joins"] = sum(1 for j in joined if not isinstance(j, RequestFailed))
        log(f"{self.counts['joins']}/{len(wanted)} joins in {self.phases['join']:.1f}s")
        return room_ids, user_rooms, members

    # ---------------------------------------------------------------- /sync

    async def sync_filter(self, user: User) -> dict[str, str]:
        """The query parameter naming the syncing users' filter (uploaded, else inline)."""
        try:
            answer, _, _ = await self.client.call(
                "POST",
                f"{CLIENT_V3}/user/{_quote(user.user_id)}/filter",
                "POST /user/{user}/filter",
                body=SYNC_FILTER,
                token=user.token,
            )
            return {"filter": str(answer["filter_id"])}
        except (RequestFailed, KeyError) as exc:
            if isinstance(exc, RequestFailed):
                self.errors.record(self.phase, exc)
            return {"filter": json.dumps(SYNC_FILTER, separators=(",", ":"))}

    async def sync_loop(self, user: User, tracker: DeliveryTracker, ready: asyncio.Event, broken: list[User]) -> None:
        """Initial /sync, then long-poll forever (until cancelled), feeding the tracker."""
        query = await self.sync_filter(user)
        query["set_presence"] = "offline"
        query["timeout"] = "0"
        since: str | None = None
        failures = 0
        timeout = self.config.sync_timeout_ms / 1000.0 + 30.0
        try:
            while True:
                if since is not None:
                    query["since"] = since
                    query["timeout"] = str(self.config.sync_timeout_ms)
                try:
                    body, received, _ = await self.client.call(
                        "GET", f"{CLIENT_V3}/sync", "GET /sync", token=user.token, query=query, timeout=timeout
                    )
                except RequestFailed as exc:
                    self.errors.record(self.phase if since else "sync_initial", exc)
                    failures += 1
                    if since is None and failures >= 3:
                        broken.append(user)
                        return
                    await asyncio.sleep(min(0.2 * failures, 2.0))
                    continue
                failures = 0
                self.counts["sync_responses"] = self.counts.get("sync_responses", 0) + 1
                if since is not None:
                    tracker.observe(user, body, received)
                    limited = sum(
                        1
                        for room in ((body.get("rooms") or {}).get("join") or {}).values()
                        if (room.get("timeline") or {}).get("limited")
                    )
                    if limited:
                        self.counts["sync_limited_timelines"] = self.counts.get("sync_limited_timelines", 0) + limited
                next_batch = body.get("next_batch")
                if not isinstance(next_batch, str):
                    self.errors.record("sync", RequestFailed("GET /sync", 200, "no next_batch in the response"))
                    broken.append(user)
                    return
                since = next_batch
                if not ready.is_set():
                    ready.set()
        finally:
            if not ready.is_set():
                ready.set()

    # ---------------------------------------------------------------- messages

    async def message_phase(
        self,
        users: list[User],
        room_ids: list[str | None],
        user_rooms: dict[int, list[int]],
        members: dict[int, set[int]],
    ) -> None:
        config = self.config
        tracker = DeliveryTracker(marker=self.prefix)
        senders = [u for u in users if user_rooms[u.index]]
        if not senders:
            for metric in ("throughput_msg_s", "latency_p50_ms", "latency_p99_ms"):
                self.na(metric, f"no user is in a room ({self._first_error('create_rooms')})")
            return

        # One long-poll /sync loop per user; sending starts once all of them have synced once.
        self.phase = "sync_initial"
        started = time.perf_counter()
        broken: list[User] = []
        readies = [asyncio.Event() for _ in users]
        sync_tasks = [asyncio.create_task(self.sync_loop(u, tracker, readies[u.index], broken)) for u in users]
        try:
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), timeout=config.request_timeout * 3)
        except TimeoutError:
            log("not every user finished its first /sync in time; sending anyway")
        self._timed("sync_initial", started)
        syncing = {u.index for u in users} - {u.index for u in broken}
        self.counts["syncing_users"] = len(syncing)
        log(f"{len(syncing)}/{len(users)} users syncing (first /sync of all took {self.phases['sync_initial']:.1f}s)")

        self.phase = "send"
        send_rtts: list[float] = []
        sequence = iter(range(config.messages))
        first_start: list[float] = []
        last_ok: list[float] = []
        cpu_before = self.sampler.cpu_seconds()
        client_cpu_before = time.process_time()
        machine_before = machine_cpu_times()
        started = time.perf_counter()

        async def sender() -> None:
            for seq in sequence:
                user = senders[seq % len(senders)]
                rooms = user_rooms[user.index]
                room = rooms[(seq // len(senders)) % len(rooms)]
                tracker.sender_of[seq] = user.user_id
                begin = time.perf_counter()
                tracker.sent_at[seq] = begin
                if not first_start:
                    first_start.append(begin)
                try:
                    done = await self.send(user, str(room_ids[room]), tracker.body(seq), f"{self.prefix}-{seq}")
                except RequestFailed as exc:
                    self.errors.record("send", exc)
                    continue
                send_rtts.append(done - begin)
                last_ok[:] = [max(done, last_ok[0])] if last_ok else [done]
                recipients = len((members[room] - {user.index}) & syncing)
                tracker.message_ok(seq, recipients)

        await asyncio.gather(*(sender() for _ in range(config.concurrency)))
        send_wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu_before
        machine_after = machine_cpu_times()
        if machine_before and machine_after and machine_after[1] > machine_before[1]:
            busy = (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
            self.metrics["machine_cpu_util"] = round(busy, 2)
        self._timed("send", started)
        ok = len(tracker.sent_ok)
        self.counts["messages_sent"] = ok
        self.counts["messages_failed"] = config.messages - ok
        if ok and last_ok and last_ok[0] > first_start[0]:
            self.metrics["throughput_msg_s"] = round(ok / (last_ok[0] - first_start[0]), 1)
        else:
            self.na("throughput_msg_s", f"no message was sent ({self._first_error('send')})")
        self.metrics["send_rtt_p50_ms"] = _ms(percentile(send_rtts, 0.5))
        self.metrics["send_rtt_p99_ms"] = _ms(percentile(send_rtts, 0.99))
        self.metrics["client_cpu_util"] = round(client_cpu / send_wall, 2) if send_wall > 0 else None
        log(
            f"sent {ok}/{config.messages} messages in {send_wall:.1f}s "
            f"({self.metrics.get('throughput_msg_s')} msg/s); waiting for /sync to deliver them"
        )

        # Let /sync catch up with everything that was sent, within the drain timeout.
        self.phase = "drain"
        started = time.perf_counter()
        if tracker.expected_total:
            try:
                await asyncio.wait_for(tracker.all_delivered.wait(), timeout=config.drain_timeout)
            except TimeoutError:
                log(f"drain timeout: {tracker.delivered_total}/{tracker.expected_total} deliveries seen")
        cpu_after = self.sampler.cpu_seconds()
        self._timed("drain", started)
        for task in sync_tasks:
            task.cancel()
        await asyncio.gather(*sync_tasks, return_exceptions=True)

        if cpu_before is not None and cpu_after is not None and ok:
            self.metrics["server_cpu_ms_per_msg"] = round((cpu_after - cpu_before) * 1000.0 / ok, 2)
        expecting = [seq for seq in tracker.sent_ok if tracker.expected_recipients[seq] > 0]
        latencies = [tracker.first_delivery[seq] for seq in expecting if seq in tracker.first_delivery]
        self.counts["messages_delivered"] = len(latencies)
        self.counts["messages_never_delivered"] = len(expecting) - len(latencies)
        self.counts["deliveries"] = tracker.delivered_total
        self.counts["deliveries_expected"] = tracker.expected_total
        if latencies:
            self.metrics["latency_p50_ms"] = _ms(percentile(latencies, 0.5))
            self.metrics["latency_p99_ms"] = _ms(percentile(latencies, 0.99))
            self.metrics["fanout_latency_p50_ms"] = _ms(percentile(tracker.fanout_latencies, 0.5))
            self.metrics["fanout_latency_p99_ms"] = _ms(percentile(tracker.fanout_latencies, 0.99))
        else:
            why = (
                "/sync never delivered a benchmark message to another member"
                if syncing
                else f"no user could /sync ({self._first_error('sync_initial', prefer='GET /sync')})"
            )
            self.na("latency_p50_ms", why)
            self.na("latency_p99_ms", why)

    # ---------------------------------------------------------------- initial /sync

    async def initial_sync_phase(self) -> None:
        config = self.config
        if config.initial_sync_rooms <= 0:
            self.na("initial_sync_s", "--initial-sync-rooms 0")
            return
        self.phase = "initial_sync_setup"
        started = time.perf_counter()
        try:
            big = await self.register(f"{self.prefix}big")
        except RequestFailed as exc:
            self.errors.record(self.phase, exc)
            self.na("initial_sync_s", f"could not register its user: {exc}")
            return
        created = await gather_limited(
            config.setup_concurrency,
            (partial(self.create_room, big, f"sync room {i}") for i in range(config.initial_sync_rooms)),
        )
        room_ids = [c for c in created if not self._failed(c)]
        sends = await gather_limited(
            config.setup_concurrency,
            (
                partial(self.send, big, room, f"history {k}", f"{self.prefix}-h{k}-{n}")
                for n, room in enumerate(room_ids)
                for k in range(config.initial_sync_messages)
            ),
        )
        for result in sends:
            self._failed(result)
        self._timed("initial_sync_setup", started)
        self.counts["initial_sync_rooms"] = len(room_ids)
        log(f"user in {len(room_ids)} rooms set up in {self.phases['initial_sync_setup']:.1f}s; timing initial /sync")
        if not room_ids:
            self.na("initial_sync_s", f"no room could be created ({self._first_error(self.phase)})")
            return

        self.phase = "initial_sync"
        timings: list[float] = []
        token = big.token
        for _ in range(max(1, config.initial_sync_runs)):
            # Each run is a new device's first /sync (a login, not timed): a server's
            # response cache for the *same* request (Synapse keeps one per device and
            # request for 2 minutes) must not answer it; its data caches stay warm.
            try:
                token = await self.login(big)
            except RequestFailed as exc:
                self.errors.record(self.phase, exc)
            begin = time.perf_counter()
            try:
                body, done, size = await self.client.call(
                    "GET", f"{CLIENT_V3}/sync", "GET /sync (initial)", token=token, query={"timeout": "0"}
                )
            except RequestFailed as exc:
                self.errors.record(self.phase, exc)
                continue
            timings.append(done - begin)
            self.counts["initial_sync_bytes"] = size
            self.counts["initial_sync_rooms_seen"] = len(((body.get("rooms") or {}).get("join")) or {})
        if timings:
            # The last request once more, same device: what a response cache gives.
            begin = time.perf_counter()
            try:
                _, done, _ = await self.client.call(
                    "GET", f"{CLIENT_V3}/sync", "GET /sync (initial)", token=token, query={"timeout": "0"}
                )
                self.metrics["initial_sync_repeat_s"] = round(done - begin, 3)
            except RequestFailed as exc:
                self.errors.record(self.phase, exc)
            self.metrics["initial_sync_s"] = round(sum(timings) / len(timings), 3)
            self.metrics["initial_sync_first_s"] = round(timings[0], 3)
            if self.counts.get("initial_sync_rooms_seen", 0) < len(room_ids):
                log(f"initial /sync showed {self.counts['initial_sync_rooms_seen']} of {len(room_ids)} joined rooms")
        else:
            self.na("initial_sync_s", f"every initial /sync failed ({self._first_error(self.phase)})")

    # ---------------------------------------------------------------- the whole run

    async def run(self) -> None:
        started = time.perf_counter()
        users = await self.register_users(self.config.users)
        if len(users) < 2:
            reason = f"fewer than 2 users registered ({self._first_error('register')})"
            for metric in ("throughput_msg_s", "latency_p50_ms", "latency_p99_ms", "initial_sync_s"):
                self.na(metric, reason)
            return
        room_ids, user_rooms, members = await self.build_rooms(users)
        await self.message_phase(users, room_ids, user_rooms, members)
        await self.initial_sync_phase()
        self._timed("total", started)

    def finish(self) -> dict[str, Any]:
        """Fill in the memory numbers and the error list; return the results."""
        self.sampler.sample()
        if self.sampler.peak_rss_kb and not self.sampler.problem:
            hwm = self.sampler.high_water_kb()
            # The headline peak is the kernel's high-water mark (VmHWM), which a 100 ms
            # sampler can miss short spikes of; the sampled maximum is kept alongside.
            self.metrics["peak_rss_mb"] = round(max(self.sampler.peak_rss_kb, hwm or 0) / 1024.0, 1)
            self.metrics["sampled_peak_rss_mb"] = round(self.sampler.peak_rss_kb / 1024.0, 1)
            self.metrics["rss_start_mb"] = round((self.sampler.first_rss_kb or 0) / 1024.0, 1)
            self.metrics["rss_end_mb"] = round((self.sampler.last_rss_kb or 0) / 1024.0, 1)
            self.metrics["vm_hwm_mb"] = round(hwm / 1024.0, 1) if hwm else None
        else:
            self.na("peak_rss_mb", self.sampler.problem or "no sample")
        for metric in ("throughput_msg_s", "latency_p50_ms", "latency_p99_ms", "initial_sync_s"):
            if metric not in self.metrics:
                self.na(metric, "not reached")
        self.counts["rate_limited_retries"] = self.client.rate_limited
        self.results["errors"] = self.errors.as_list()
        self.results["error_count"] = self.errors.count()
        return self.results


async def run_load(config: LoadConfig) -> dict[str, Any]:
    """Run the whole benchmark against ``config.url``; never raises for server errors."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        load = LoadRun(config, Client(config.url, session, config.request_timeout))
        sampler_task = asyncio.create_task(load.sampler.run())
        try:
            await asyncio.wait_for(load.run(), timeout=config.timeout)
        except TimeoutError:
            load.errors.record(load.phase, RequestFailed("(whole run)", "timeout", f"hard timeout {config.timeout}s"))
            log(f"hard timeout of {config.timeout}s hit during phase {load.phase!r}")
        finally:
            sampler_task.cancel()
        return load.finish()


# --------------------------------------------------------------------------- output


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value}{unit}"


def format_report(results: dict[str, Any]) -> str:
    m, c = results["metrics"], results["counts"]
    p = results["parameters"]
    lines = [
        f"Load against {results['target']} ({p['users']} users, {p['rooms']} rooms, "
        f"{p['messages']} messages, concurrency {p['concurrency']})",
        f"  messages/s sent              {_fmt(m.get('throughput_msg_s'))}",
        f"  send->sync latency p50 / p99 {_fmt(m.get('latency_p50_ms'), ' ms')} / {_fmt(m.get('latency_p99_ms'), ' ms')}",
        f"  fan-out latency p50 / p99    {_fmt(m.get('fanout_latency_p50_ms'), ' ms')} / "
        f"{_fmt(m.get('fanout_latency_p99_ms'), ' ms')}",
        f"  PUT /send round trip p50/p99 {_fmt(m.get('send_rtt_p50_ms'), ' ms')} / {_fmt(m.get('send_rtt_p99_ms'), ' ms')}",
        f"  initial /sync, {c.get('initial_sync_rooms', p['initial_sync_rooms']):>4} rooms  "
        f"{_fmt(m.get('initial_sync_s'), ' s')} (first {_fmt(m.get('initial_sync_first_s'), ' s')})",
        f"  server peak RSS              {_fmt(m.get('peak_rss_mb'), ' MB')} (VmHWM {_fmt(m.get('vm_hwm_mb'), ' MB')})",
        f"  server CPU per message       {_fmt(m.get('server_cpu_ms_per_msg'), ' ms')}",
        f"  load generator CPU use       {_fmt(m.get('client_cpu_util'))} of a core "
        f"(whole machine {_fmt(m.get('machine_cpu_util'))} busy while sending)",
        f"  delivered / never delivered  {c.get('messages_delivered', 'n/a')} / {c.get('messages_never_delivered', 'n/a')}"
        f"  (deliveries {c.get('deliveries', 'n/a')}/{c.get('deliveries_expected', 'n/a')})",
    ]
    for metric, reason in results["unavailable"].items():
        lines.append(f"  n/a {metric}: {reason}")
    for group in results["errors"]:
        lines.append(
            f"  error x{group['count']} in {group['phase']}: {group['request']} -> {group['status']}: {group['sample'][:200]}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = LoadConfig(url="", shared_secret="")
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True, help="the homeserver's client API base URL (loopback only)")
    p.add_argument("--shared-secret", required=True, help="the server's registration_shared_secret")
    p.add_argument("--users", type=int, default=d.users, help="users that send and /sync (default %(default)s)")
    p.add_argument("--rooms", type=int, default=d.rooms, help="rooms they talk in (default %(default)s)")
    p.add_argument(
        "--rooms-per-user", type=int, default=d.rooms_per_user, help="rooms each user joins (default %(default)s)"
    )
    p.add_argument("--messages", type=int, default=d.messages, help="messages to send (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="concurrent senders (default %(default)s)")
    p.add_argument(
        "--initial-sync-rooms",
        type=int,
        default=d.initial_sync_rooms,
        help="rooms of the user whose initial /sync is timed; 0 skips it (default %(default)s)",
    )
    p.add_argument(
        "--initial-sync-messages",
        type=int,
        default=d.initial_sync_messages,
        help="messages in each of those rooms (default %(default)s)",
    )
    p.add_argument(
        "--initial-sync-runs",
        type=int,
        default=d.initial_sync_runs,
        help="initial /syncs to average (default %(default)s)",
    )
    p.add_argument(
        "--setup-concurrency",
        type=int,
        default=d.setup_concurrency,
        help="concurrent requests while registering, creating rooms, joining (default %(default)s)",
    )
    p.add_argument("--pid", type=int, default=None, help="the server's process ID, for RSS and CPU sampling")
    p.add_argument(
        "--timeout", type=float, default=d.timeout, help="hard limit on the whole run, s (default %(default)s)"
    )
    p.add_argument(
        "--request-timeout", type=float, default=d.request_timeout, help="per request, s (default %(default)s)"
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=d.drain_timeout,
        help="how long to wait for /sync to deliver the last messages, s (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_loopback(args.url)
    if args.users < 2 or args.rooms < 1 or args.messages < 1 or args.concurrency < 1:
        raise SystemExit("need --users >= 2, --rooms >= 1, --messages >= 1, --concurrency >= 1")
    options = {k: v for k, v in vars(args).items() if k != "json"}
    results = asyncio.run(run_load(LoadConfig(**options)))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
