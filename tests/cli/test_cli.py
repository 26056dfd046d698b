"""The command line: generate-config, check-config and register-user as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homeserver", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_generate_check_and_register(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generated = run_cli("generate-config", "--server-name", "ministere.test", "--data-dir", str(data), "--client-port", "18123")
    assert generated.returncode == 0, generated.stderr
    config = data / "homeserver.yaml"
    parsed = yaml.safe_load(config.read_text())
    assert parsed["server_name"] == "ministere.test"
    assert len(parsed["registration_shared_secret"]) >= 32
    assert (data / "ministere.test.signing.key").read_text().startswith("ed25519 a_")

    again = run_cli("generate-config", "--server-name", "ministere.test", "--data-dir", str(data))
    assert again.returncode == 1 and "exist" in again.stderr

    checked = run_cli("check-config", "-c", str(config))
    assert checked.returncode == 0, checked.stderr

    created = run_cli("register-user", "-c", str(config), "-u", "alice", "-p", "a long password", "--admin")
    assert created.returncode == 0, created.stderr
    assert "@alice:ministere.test" in created.stdout
    duplicate = run_cli("register-user", "-c", str(config), "-u", "alice", "-p", "another password")
    assert duplicate.returncode == 1 and "M_USER_IN_USE" in duplicate.stderr
    invalid = run_cli("register-user", "-c", str(config), "-u", "Not Valid", "-p", "pw")
    assert invalid.returncode == 1 and "M_INVALID_USERNAME" in invalid.stderr


def test_broken_config_is_reported_by_key_path(tmp_path: Path) -> None:
    """Bad input tried: a port that is not a number, a missing server_name, broken YAML."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("server_name: test\nlisteners:\n  - port: abc\n    type: http\n")
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 1
    assert "listeners[0].port" in result.stderr

    missing = tmp_path / "missing.yaml"
    missing.write_text("listeners: []\n")
    result = run_cli("check-config", "-c", str(missing))
    assert result.returncode == 1 and "server_name" in result.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("server_name: test\nlisteners: [\n")
    result = run_cli("check-config", "-c", str(broken))
    assert result.returncode == 1 and "line" in result.stderr

    result = run_cli("run", "-c", str(bad))
    assert result.returncode == 1 and "listeners[0].port" in result.stderr
