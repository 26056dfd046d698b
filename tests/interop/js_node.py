"""Node and matrix-js-sdk: install js/ once, run its scripts, read their JSON."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.interop.harness import HarnessError

JS_DIR = Path(__file__).resolve().parent / "js"


def node_unavailable_reason() -> str | None:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    return None


def _install_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        path = JS_DIR / name
        digest.update(path.read_bytes() if path.exists() else b"-")
    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout
    digest.update(node_version.encode())
    return digest.hexdigest()


def ensure_node_modules() -> None:
    """``npm ci`` (or ``npm install`` without a lock file) unless already up to date."""
    stamp = JS_DIR / "node_modules" / ".interop-install-stamp"
    wanted = _install_digest()
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return
    has_lock = (JS_DIR / "package-lock.json").exists()
    argv = ["npm", "ci" if has_lock else "install", "--no-audit", "--no-fund"]
    try:
        done = subprocess.run(
            argv,
            check=False,
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{' '.join(argv)} timed out in {JS_DIR}") from exc
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed in {JS_DIR}:\n{done.stdout}\n{done.stderr}")
    stamp.write_text(wanted)


def run_node_script(script: str, args: list[str], *, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``node js/<script> args...``; return the JSON on its last ``RESULT `` line."""
    argv = ["node", str(JS_DIR / script), *args]
    done = subprocess.run(
        argv,
        check=False,
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    results = [line[len("RESULT ") :] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not results:
        raise HarnessError(
            f"node {script} printed no RESULT line (exit {done.returncode})\n"
            f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(results[-1])
    result["_exit_code"] = done.returncode
    result["_stderr_tail"] = done.stderr[-2000:]
    return result
