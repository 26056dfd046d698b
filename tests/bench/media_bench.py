#!/usr/bin/env python3
"""Media repository throughput against this homeserver and Synapse, side by side.

    .venv/bin/python tests/bench/media_bench.py [--quick] [--only ours|synapse]

Each server is started the way tests/bench/compare.py starts it (its own config tool, a
fresh PostgreSQL database on 127.0.0.1:5432, the same relaxed rate limits) plus
``dynamic_thumbnails: true`` for both, on loopback.  Then, through the authenticated
/_matrix/client/v1/media endpoints:

  upload        JPEG photos (2000x1500) uploaded, 4 at a time: both servers generate the
                five default thumbnails during the upload
  download      one 1 MiB file fetched by 32 concurrent clients
  thumbnail     a pre-generated 96x96 crop fetched by 32 concurrent clients
  generate      distinct dynamic thumbnail sizes of one photo, 4 at a time (each request
                decodes, resizes and encodes)

with throughput, latency p50/p99 and the server's peak RSS (VmRSS sampled every 50 ms)
per phase.  Prints the table with ratios ours/Synapse; JSON to tests/bench/_work/media.json.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import io
import json
import random
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
sys.path.insert(0, str(REPO))

from tests.bench.compare import COMMON_CONFIG, SYNAPSE_CONFIG, WORK_DIR  # noqa: E402
from tests.interop.harness import Postgres, RunningServer, start_our_homeserver  # noqa: E402
from tests.interop.synapse_server import start_synapse  # noqa: E402

MEDIA_CONFIG = {"dynamic_thumbnails": True, "max_upload_size": "50M"}
PROFILES = {
    "default": {"uploads": 40, "downloads": 2000, "thumbnails": 3000, "generated": 80, "concurrency": 32},
    "quick": {"uploads": 12, "downloads": 500, "thumbnails": 800, "generated": 24, "concurrency": 16},
}


def photo(width: int = 2000, height: int = 1500, seed: int = 1) -> bytes:
    """A photo-like JPEG: smooth gradients plus noise (so it compresses like a photo)."""
    from PIL import Image, ImageFilter

    rng = random.Random(seed)
    small = Image.frombytes(
        "RGB", (width // 20, height // 20), bytes(rng.randrange(256) for _ in range(width // 20 * (height // 20) * 3))
    )
    image = small.resize((width, height), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    noise = Image.effect_noise((width, height), 12).convert("RGB")
    image = Image.blend(image, noise, 0.15)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return out.getvalue()


def is_image(body: bytes) -> bool:
    return body[:2] == b"\xff\xd8" or body[:8] == b"\x89PNG\r\n\x1a\n"


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss_kb(self) -> int:
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._rss_kb())
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self.peak_kb = self._rss_kb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Client:
    """One keep-alive connection per worker thread."""

    def __init__(self, url: str, token: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.token = host, int(port), token
        self._local = threading.local()

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self._local.conn = None
            conn.close()
            raise


def login(server: RunningServer, localpart: str) -> str:
    server.register_user(localpart, "bench-password-123")
    host, port = server.client_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps(
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": "bench-password-123",
        }
    )
    conn.request("POST", "/_matrix/client/v3/login", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    if resp.status != 200:
        raise RuntimeError(f"login failed: {resp.status} {data}")
    return str(data["access_token"])


def run_phase(sampler_pid: int, jobs: list[Any], concurrency: int, work: Any) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(job: Any) -> None:
        start = time.perf_counter()
        try:
            problem = work(job)
        except Exception as exc:  # noqa: BLE001
            problem = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - start
        with lock:
            if problem:
                errors.append(problem)
            else:
                latencies.append(elapsed)

    with RssSampler(sampler_pid) as sampler:
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, jobs))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(jobs),
        "errors": len(errors),
        "error_samples": errors[:3],
        "per_second": round(len(latencies) / wall, 1) if wall else None,
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1)
        if latencies
        else None,
        "peak_rss_mb": round(sampler.peak_kb / 1024, 1),
        "wall_s": round(wall, 2),
    }


def bench_server(server: RunningServer, profile: dict[str, Any], photos: list[bytes]) -> dict[str, Any]:
    client = Client(server.client_url, login(server, "bencher"))
    pid = server.process.pid
    name = server.server_name
    results: dict[str, Any] = {}

    def upload(data: bytes) -> str | None:
        code, body = client.request("POST", "/_matrix/media/v3/upload?filename=photo.jpg", data, "image/jpeg")
        return None if code == 200 else f"{code} {body[:200]!r}"

    uploads = [photos[i % len(photos)] for i in range(profile["uploads"])]
    results["upload"] = run_phase(pid, uploads, 4, upload)

    code, body = client.request(
        "POST", "/_matrix/media/v3/upload?filename=blob.bin", random.randbytes(1 << 20), "application/octet-stream"
    )
    blob_id = json.loads(body)["content_uri"].rsplit("/", 1)[1]
    code, body = client.request("POST", "/_matrix/media/v3/upload?filename=photo.jpg", photos[0], "image/jpeg")
    photo_id = json.loads(body)["content_uri"].rsplit("/", 1)[1]

    def download(_: int) -> str | None:
        code, body = client.request("GET", f"/_matrix/client/v1/media/download/{name}/{blob_id}")
        return None if code == 200 and len(body) == 1 << 20 else f"{code} {len(body)}"

    results["download"] = run_phase(pid, list(range(profile["downloads"])), profile["concurrency"], download)

    def thumbnail(_: int) -> str | None:
        code, body = client.request(
            "GET", f"/_matrix/client/v1/media/thumbnail/{name}/{photo_id}?width=96&height=96&method=crop"
        )
        return None if code == 200 and body[:2] == b"\xff\xd8" else f"{code} {body[:100]!r}"

    results["thumbnail"] = run_phase(pid, list(range(profile["thumbnails"])), profile["concurrency"], thumbnail)

    sizes = [(100 + 7 * i, 80 + 5 * i, "crop" if i % 2 else "scale") for i in range(profile["generated"])]

    def generate(size: tuple[int, int, str]) -> str | None:
        w, h, method = size
        code, body = client.request(
            "GET", f"/_matrix/client/v1/media/thumbnail/{name}/{photo_id}?width={w}&height={h}&method={method}"
        )
        return None if code == 200 and is_image(body) else f"{code} {body[:100]!r}"

    results["generate"] = run_phase(pid, sizes, 4, generate)
    return results


def start(kind: str, pg: Postgres, data_dir: Path) -> RunningServer:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    database = pg.create_database()
    try:
        if kind == "ours":
            config = {**copy.deepcopy(COMMON_CONFIG), **MEDIA_CONFIG}
            return start_our_homeserver(
                data_dir,
                engine="postgres",
                database_url=pg.url(database),
                database=database,
                patch_config=lambda c: c.update(copy.deepcopy(config)),
            )
        extra = {**copy.deepcopy(SYNAPSE_CONFIG), **MEDIA_CONFIG}
        return start_synapse(data_dir, engine="postgres", postgres=pg, database=database, extra_config=extra)
    except BaseException:
        pg.drop_database(database)
        raise


ROWS = [
    ("upload+pre-thumbnail /s", "upload", "per_second", "higher"),
    ("upload p50 (ms)", "upload", "p50_ms", "lower"),
    ("download 1 MiB /s", "download", "per_second", "higher"),
    ("download p50 (ms)", "download", "p50_ms", "lower"),
    ("download p99 (ms)", "download", "p99_ms", "lower"),
    ("thumbnail fetch /s", "thumbnail", "per_second", "higher"),
    ("thumbnail p50 (ms)", "thumbnail", "p50_ms", "lower"),
    ("thumbnail p99 (ms)", "thumbnail", "p99_ms", "lower"),
    ("dynamic thumbnail gen /s", "generate", "per_second", "higher"),
    ("dynamic gen p50 (ms)", "generate", "p50_ms", "lower"),
    ("peak RSS upload (MB)", "upload", "peak_rss_mb", "lower"),
    ("peak RSS download (MB)", "download", "peak_rss_mb", "lower"),
    ("peak RSS thumbnail (MB)", "thumbnail", "peak_rss_mb", "lower"),
    ("peak RSS generate (MB)", "generate", "peak_rss_mb", "lower"),
]


def table(results: dict[str, Any]) -> str:
    lines = [f"{'metric':30} {'ours':>10} {'synapse':>10} {'ours/synapse':>13}"]
    for label, phase, key, better in ROWS:
        ours = results.get("ours", {}).get(phase, {}).get(key)
        syn = results.get("synapse", {}).get(phase, {}).get(key)
        ratio = (
            f"{ours / syn:.2f}x" if isinstance(ours, int | float) and isinstance(syn, int | float) and syn else "n/a"
        )
        lines.append(
            f"{label:30} {ours if ours is not None else 'n/a':>10} {syn if syn is not None else 'n/a':>10} {ratio:>9} ({better} is better)"
        )
    for kind, phases in results.items():
        for phase, values in phases.items():
            if isinstance(values, dict) and values.get("errors"):
                lines.append(f"!! {kind} {phase}: {values['errors']} errors, e.g. {values['error_samples']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("ours", "synapse"))
    args = parser.parse_args()
    profile = PROFILES["quick" if args.quick else "default"]
    pg = Postgres()
    if (reason := pg.unavailable_reason()) is not None:
        print(reason, file=sys.stderr)
        return 2
    photos = [photo(seed=i) for i in range(4)]
    print(f"photo sizes: {[len(p) // 1024 for p in photos]} KiB", file=sys.stderr)
    results: dict[str, Any] = {}
    for kind in ("ours", "synapse"):
        if args.only and kind != args.only:
            continue
        print(f"== {kind}: starting", file=sys.stderr, flush=True)
        server = start(kind, pg, WORK_DIR / f"media-{kind}")
        try:
            results[kind] = bench_server(server, profile, photos)
        finally:
            server.stop(timeout=20)
            if server.database:
                pg.drop_database(server.database)
        print(f"== {kind}: {json.dumps(results[kind])}", file=sys.stderr, flush=True)
    WORK_DIR.mkdir(exist_ok=True)
    (WORK_DIR / "media.json").write_text(json.dumps({"profile": profile, "results": results}, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
