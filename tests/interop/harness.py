"""Real-process interop harness: start homeservers as their operators would.

Everything here talks to real processes over real loopback sockets:

* our homeserver, configured and started through its own CLI
  (``homeserver generate-config`` then ``homeserver run``);
* a real Synapse (see synapse_server.py);
* PostgreSQL on 127.0.0.1:5432, where each server gets a fresh database.

The pytest fixtures in ``conftest.py`` are thin wrappers over :class:`ServerPool`,
so a test (or a later federation test) can start as many servers as it needs and
have them stopped, and their clean shutdown checked, at teardown.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

INTEROP_DIR = Path(__file__).resolve().parent

STARTUP_TIMEOUT = float(os.environ.get("INTEROP_STARTUP_TIMEOUT", "30"))
SHUTDOWN_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0

# Which server the client-side interop tests talk to: "ours" (default) or "synapse"
# (a developer run that proves the tests themselves are right).
TARGETS = ("ours", "synapse")
ENGINES = ("sqlite", "postgres")


# Rate limits (Synapse's rc_* keys, which ours reads too) high enough that no test trips
# them: a module of tests logs in more often than Synapse's default login burst of 5.
NO_RATE_LIMIT = {"per_second": 1000, "burst_count": 1000}
TEST_RATE_LIMITS: dict[str, Any] = {
    "rc_message": NO_RATE_LIMIT,
    "rc_registration": NO_RATE_LIMIT,
    "rc_registration_token_validity": NO_RATE_LIMIT,
    "rc_login": {
        "address": NO_RATE_LIMIT,
        "account": NO_RATE_LIMIT,
        "failed_attempts": NO_RATE_LIMIT,
    },
    "rc_admin_redaction": NO_RATE_LIMIT,
    "rc_joins": {"local": NO_RATE_LIMIT, "remote": NO_RATE_LIMIT},
    "rc_joins_per_room": NO_RATE_LIMIT,
    "rc_invites": {
        "per_room": NO_RATE_LIMIT,
        "per_user": NO_RATE_LIMIT,
        "per_issuer": NO_RATE_LIMIT,
    },
    "rc_3pid_validation": NO_RATE_LIMIT,
    "rc_third_party_invite": NO_RATE_LIMIT,
    "rc_media_create": NO_RATE_LIMIT,
    "rc_presence": {"per_user": NO_RATE_LIMIT},
    "rc_delayed_event_mgmt": NO_RATE_LIMIT,
    "rc_reports": NO_RATE_LIMIT,
    "rc_room_creation": NO_RATE_LIMIT,
    "rc_user_directory": NO_RATE_LIMIT,
    "rc_federation": {
        "window_size": 1000,
        "sleep_limit": 1000,
        "sleep_delay": 0,
        "reject_limit": 1000,
        "concurrent": 100,
    },
}


# Password hashing at bcrypt's minimum cost (both servers read Synapse's key): every
# registration and password login hashes, 0.25 s of CPU each at the default 12 rounds, 1 ms
# at 4. What is tested (a password is checked, a wrong one refused) does not change.
TEST_SPEED_CONFIG: dict[str, Any] = {"bcrypt_rounds": 4}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge ``extra`` into ``base`` in place, recursing into dicts."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value


class HarnessError(Exception):
    """A server could not be configured, started or stopped; the message says why."""


def in_ci() -> bool:
    """CI=true (as .ci/run sets it): missing services fail instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def interop_target() -> str:
    target = os.environ.get("INTEROP_TARGET", "ours").strip().lower() or "ours"
    if target not in TARGETS:
        raise HarnessError(f"INTEROP_TARGET must be one of {TARGETS}, not {target!r}")
    return target


_HANDED_OUT: set[int] = set()


def _port_block() -> tuple[int, int] | None:
    """This process's own block of ports, outside the kernel's ephemeral range.

    Ports from that range (what ``bind(("", 0))`` picks) can be taken by any outgoing
    connection between the moment we choose one and the moment a server binds it. Below the
    range nothing is handed out implicitly; and under pytest-xdist each worker
    (PYTEST_XDIST_WORKER=gwN) gets a disjoint slice, so two workers never pick the same port.
    None when the ephemeral range leaves no room below it.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first, last = 10000, min(low, 32768) - 1
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (last - first + 1) // workers
    if size < 500:
        return None
    start = first + (index % workers) * size
    return start, start + size - 1


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, never one this test session handed out
    before: servers started later in a test can't collide with ports chosen earlier but not
    yet bound. Taken from this worker's block (see _port_block), from a random point on."""
    block = _port_block()
    if block is not None:
        first, last = block
        size = last - first + 1
        offset = random.randrange(size)
        for step in range(size):
            port = first + (offset + step) % size
            if port not in _HANDED_OUT and _bindable(host, port):
                _HANDED_OUT.add(port)
                return port
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise HarnessError("no fresh free port found")


def venv_script(name: str) -> str | None:
    """The console script ``name`` beside the running interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name  # not resolved: keep the venv's bin/
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def homeserver_cli() -> list[str]:
    script = venv_script("homeserver")
    return [script] if script else [sys.executable, "-m", "homeserver"]


def run_command(argv: list[str], *, timeout: float = CLI_TIMEOUT, what: str = "") -> str:
    """Run a command to completion; raise HarnessError with its output if it fails."""
    try:
        done = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(
            f"{what or argv[0]} timed out after {timeout}s: {argv}\n{exc.stdout!r}\n{exc.stderr!r}"
        ) from exc
    except FileNotFoundError as exc:
        raise HarnessError(f"{what or argv[0]}: command not found: {argv[0]}") from exc
    if done.returncode != 0:
        raise HarnessError(
            f"{what or argv[0]} exited with {done.returncode}: {argv}\n"
            f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
        )
    return done.stdout


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    timeout: float = 10.0,
    context: Any = None,
) -> tuple[int, Any]:
    """One JSON request; returns (status, parsed body or raw text). Never raises on HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log file at {path})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    """The PostgreSQL cluster on loopback; hands out fresh databases and drops them."""

    # The same environment variables as tests/conftest.py and libpq.
    host: str = os.environ.get("PGHOST", "127.0.0.1")
    port: int = int(os.environ.get("PGPORT", "5432"))
    user: str = os.environ.get("PGUSER", "postgres")
    password: str = os.environ.get("PGPASSWORD", "")
    prefix: str = field(default_factory=lambda: f"hs_interop_{secrets.token_hex(4)}")
    created: list[str] = field(default_factory=list)
    _numbers: Iterator[int] = field(default_factory=itertools.count, repr=False)  # names never reused
    _dropper: ThreadPoolExecutor | None = field(default=None, repr=False)
    _drops: list[Future[None]] = field(default_factory=list, repr=False)

    def _connect(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname="postgres",
            connect_timeout=3,
        )
        conn.autocommit = True
        return conn

    def unavailable_reason(self) -> str | None:
        """None when the cluster answers, else why not."""
        try:
            self._connect().close()
        except Exception as exc:  # noqa: BLE001 (any failure means "unreachable")
            return f"PostgreSQL at {self.user}@{self.host}:{self.port} is unreachable: {exc}".strip()
        return None

    def create_database(self) -> str:
        # C collation: Synapse insists on it, and it costs our server nothing.
        name = f"{self.prefix}_{next(self._numbers)}"
        conn = self._connect()
        try:
            conn.cursor().execute(
                f"CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            )
        finally:
            conn.close()
        self.created.append(name)
        return name

    def drop_database(self, name: str) -> None:
        conn = self._connect()
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            conn.close()
        if name in self.created:
            self.created.remove(name)

    def drop_database_soon(self, name: str) -> None:
        """Drop ``name`` in a background thread: DROP DATABASE waits for a checkpoint (1-2 s,
        more under load), which teardown need not wait for. ``drop_all`` waits for every
        such drop and raises the first failure."""
        if name in self.created:
            self.created.remove(name)
        if self._dropper is None:
            self._dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-drop")
        self._drops.append(self._dropper.submit(self.drop_database, name))

    def drop_all(self) -> None:
        for name in list(self.created):
            self.drop_database(name)
        drops, self._drops = self._drops, []
        if self._dropper is not None:
            self._dropper.shutdown(wait=True)
            self._dropper = None
        for drop in drops:
            drop.result()

    def url(self, name: str) -> str:
        secret = f":{self.password}" if self.password else ""
        return f"postgresql://{self.user}{secret}@{self.host}:{self.port}/{name}"


# --------------------------------------------------------------------------- servers


@dataclass
class RunningServer:
    """One homeserver process started by the harness."""

    kind: str  # "ours" or "synapse"
    engine: str  # "sqlite" or "postgres"
    server_name: str
    client_url: str  # plain HTTP on loopback, e.g. http://127.0.0.1:40123
    data_dir: Path
    config_path: Path
    log_path: Path
    registration_shared_secret: str
    process: subprocess.Popen[bytes]
    federation_url: str | None = None  # https://host:port when a TLS federation listener exists
    database: str | None = None  # the PostgreSQL database name, if any
    exit_code: int | None = None

    def __repr__(self) -> str:
        return f"<RunningServer {self.label}>"

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.engine} {self.server_name} ({self.client_url})"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def log_tail(self, lines: int = 80) -> str:
        return tail(self.log_path, lines)

    def is_running(self) -> bool:
        return self.process.poll() is None

    def register_user(self, localpart: str, password: str, *, admin: bool = False) -> str:
        """Create a user with the server's own operator tool; return the user ID.

        Ours: ``homeserver register-user -c FILE -u NAME -p PW [--admin]``.
        Synapse: ``register_new_matrix_user -c FILE ...`` (its operator tool).
        """
        if self.kind == "ours":
            argv = [
                *homeserver_cli(),
                "register-user",
                "-c",
                str(self.config_path),
                "-u",
                localpart,
                "-p",
                password,
            ]
            if admin:
                argv.append("--admin")
            run_command(argv, what="homeserver register-user")
        else:
            self.register_user_with_synapse_tool(localpart, password, admin=admin, use_config=True)
        return self.user_id(localpart)

    def register_user_with_synapse_tool(
        self,
        localpart: str,
        password: str,
        *,
        admin: bool = False,
        use_config: bool = False,
    ) -> str:
        """Synapse's ``register_new_matrix_user`` over HTTP with the shared secret (HMAC)."""
        script = venv_script("register_new_matrix_user")
        if script is None:
            raise HarnessError("register_new_matrix_user (from matrix-synapse) is not installed")
        secret = ["-c", str(self.config_path)] if use_config else ["-k", self.registration_shared_secret]
        argv = [
            script,
            "-u",
            localpart,
            "-p",
            password,
            "--admin" if admin else "--no-admin",
            *secret,
            self.client_url,
        ]
        run_command(argv, what="register_new_matrix_user")
        return self.user_id(localpart)

    def terminate(self) -> float | None:
        """Send SIGTERM unless the process has exited; return when (for ``stop(sigterm_at=)``)."""
        if self.exit_code is not None or self.process.poll() is not None:
            return None
        self.process.send_signal(signal.SIGTERM)
        return time.monotonic()

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT, *, sigterm_at: float | None = None) -> str | None:
        """SIGTERM (unless ``terminate()`` sent it at ``sigterm_at``), wait; return None after a
        clean exit (code 0 within ``timeout`` of the SIGTERM), else the problem."""
        if sigterm_at is None and (self.exit_code is not None or self.process.returncode is not None):
            code = self.process.returncode
            self.exit_code = code
            return None if code == 0 else f"{self.label} had already exited with code {code} before teardown"
        if sigterm_at is None:
            self.process.send_signal(signal.SIGTERM)
            sigterm_at = time.monotonic()
        started = sigterm_at
        try:
            code = self.process.wait(timeout=max(0.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.exit_code = self.process.returncode
            return f"{self.label} did not exit within {timeout:.0f}s of SIGTERM (killed)"
        self.exit_code = code
        if code != 0:
            return f"{self.label} exited with code {code} after SIGTERM (in {time.monotonic() - started:.1f}s)"
        return None


def wait_for_health(server: RunningServer, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll GET /health until it says 200 OK; fail fast if the process dies."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise HarnessError(
                f"{server.label} exited with code {server.process.returncode} while starting\n"
                f"--- log tail ({server.log_path}) ---\n{server.log_tail()}"
            )
        try:
            status, body = http_get(server.client_url + "/health", timeout=1.0)
            if status == 200:
                if body.strip() != b"OK":
                    raise HarnessError(f"{server.label}: GET /health gave 200 but body {body!r}, not b'OK'")
                return
            last = f"HTTP {status} {body[:200]!r}"
        except (OSError, urllib.error.URLError) as exc:
            last = repr(exc)
        time.sleep(0.1)
    server.process.kill()
    server.process.wait()
    raise HarnessError(
        f"{server.label} did not answer GET /health with 200 within {timeout:.0f}s (last: {last})\n"
        f"--- log tail ({server.log_path}) ---\n{server.log_tail()}"
    )


def spawn(argv: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 (the child keeps it; closed when we drop it)
    try:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(cwd),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        log.close()


def start_our_homeserver(
    data_dir: Path,
    *,
    engine: str = "sqlite",
    database_url: str | None = None,
    database: str | None = None,
    server_name: str | None = None,
    host: str = "127.0.0.1",
    client_port: int | None = None,
    federation_port: int | None = None,
    enable_registration: bool = False,
    generate_args: tuple[str, ...] = (),
    relax_rate_limits: bool = True,
    patch_config: Callable[[dict[str, Any]], None] | None = None,
) -> RunningServer:
    """Configure with ``homeserver generate-config`` and start ``homeserver run``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    client_port = client_port or free_port(host)
    federation_port = federation_port or free_port(host)
    server_name = server_name or f"{host}:{federation_port}"
    argv = [
        *homeserver_cli(),
        "generate-config",
        "--server-name",
        server_name,
        "--data-dir",
        str(data_dir),
        "--client-port",
        str(client_port),
        "--federation-port",
        str(federation_port),
    ]
    if engine == "postgres":
        if not database_url:
            raise HarnessError("engine 'postgres' needs a database_url")
        argv += ["--database-url", database_url]
    if host != "127.0.0.1":
        argv += ["--bind-address", host]
    if enable_registration:
        argv.append("--enable-registration")
    argv += list(generate_args)
    run_command(argv, what="homeserver generate-config")
    config_path = data_dir / "homeserver.yaml"
    if not config_path.exists():
        raise HarnessError(f"homeserver generate-config wrote no {config_path}")
    config = yaml.safe_load(config_path.read_text())
    deep_merge(config, TEST_SPEED_CONFIG)
    if relax_rate_limits:
        deep_merge(config, TEST_RATE_LIMITS)
    if patch_config is not None:
        patch_config(config)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    secret = config.get("registration_shared_secret")
    if not secret:
        raise HarnessError(f"{config_path} has no registration_shared_secret")
    log_path = data_dir / "server.log"
    server = RunningServer(
        kind="ours",
        engine=engine,
        server_name=server_name,
        client_url=f"http://{host}:{client_port}",
        data_dir=data_dir,
        config_path=config_path,
        log_path=log_path,
        registration_shared_secret=str(secret),
        process=spawn([*homeserver_cli(), "run", "-c", str(config_path)], log_path, data_dir),
        federation_url=f"https://{host}:{federation_port}",
        database=database,
    )
    wait_for_health(server)
    return server


# Rate limits high enough that no test trips them, low enough to stay valid config.


class ServerPool:
    """Starts servers on demand; ``close()`` stops them all and reports unclean exits.

    ``make_dir(name)`` returns a fresh directory (pytest's tmp_path_factory.mktemp).
    ``postgres()`` returns the cluster, or skips/fails the test when it is unreachable.
    """

    def __init__(self, make_dir: Callable[[str], Path], postgres: Callable[[], Postgres]) -> None:
        self._make_dir = make_dir
        self._postgres = postgres
        self.servers: list[RunningServer] = []

    @property
    def interop_servers(self) -> list[RunningServer]:
        return self.servers

    def start(self, kind: str = "ours", engine: str = "sqlite", **options: Any) -> RunningServer:
        if kind == "synapse":
            return self.start_synapse(engine=engine, **options)
        if kind == "ours":
            return self.start_homeserver(engine=engine, **options)
        raise HarnessError(f"unknown server kind {kind!r}")

    def start_homeserver(self, engine: str = "sqlite", **options: Any) -> RunningServer:
        data_dir = self._make_dir(f"ours-{engine}")
        if engine == "postgres":
            pg = self._postgres()
            name = pg.create_database()
            options.update(database_url=pg.url(name), database=name)
        server = self._started(lambda: start_our_homeserver(data_dir, engine=engine, **options), options)
        return server

    def start_synapse(self, engine: str = "sqlite", **options: Any) -> RunningServer:
        data_dir = self._make_dir(f"synapse-{engine}")
        if engine == "postgres":
            pg = self._postgres()
            options.update(postgres=pg, database=pg.create_database())
        from tests.interop.synapse_server import start_synapse

        return self._started(lambda: start_synapse(data_dir, engine=engine, **options), options)

    def _started(self, start: Callable[[], RunningServer], options: dict[str, Any]) -> RunningServer:
        try:
            server = start()
        except BaseException:
            if options.get("database"):
                self._postgres().drop_database(options["database"])
            raise
        self.servers.append(server)
        return server

    def close(self) -> list[str]:
        """Stop every server; return one line per unclean stop.

        SIGTERM goes to all of them at once (last started first), then each must exit 0
        within SHUTDOWN_TIMEOUT of its own SIGTERM: shutting down in parallel, not in turn.
        A server that had exited before teardown is reported as such.
        """
        problems = []
        stopping = list(reversed(self.servers))
        already = {id(server): server.process.poll() is not None for server in stopping}
        sent = {id(server): server.terminate() for server in stopping}
        for server in stopping:
            if already[id(server)]:
                problem = server.stop()
            else:
                problem = server.stop(sigterm_at=sent[id(server)])
            if problem:
                problems.append(f"{problem}\n--- log tail ({server.log_path}) ---\n{server.log_tail()}")
            if server.database:
                self._postgres().drop_database_soon(server.database)
        self.servers.clear()
        return problems
