"""m.room.server_acl matching (spec: client-server API, "Server Access Control Lists")."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.federation.acl import server_matches_acl, strip_port

SPEC_EXAMPLE = {"allow": ["*"], "allow_ip_literals": False, "deny": ["*.evil.com", "evil.com"]}


@pytest.mark.parametrize(
    ("server", "allowed"),
    [
        ("good.example", True),
        ("good.example:8448", True),
        ("evil.com", False),
        ("evil.com:443", False),
        ("sub.evil.com", False),
        ("EVIL.COM", False),
        ("notevil.com", True),
        ("1.2.3.4", False),
        ("1.2.3.4:8448", False),
        ("[::1]", False),
        ("[::1]:8448", False),
    ],
)
def test_spec_example(server: str, allowed: bool) -> None:
    assert server_matches_acl(SPEC_EXAMPLE, server) is allowed


def test_missing_allow_refuses_everyone() -> None:
    assert not server_matches_acl({}, "a.example")
    assert not server_matches_acl({"deny": []}, "a.example")


def test_ip_literals_are_allowed_by_default() -> None:
    assert server_matches_acl({"allow": ["*"]}, "10.0.0.1:8448")
    assert server_matches_acl({"allow": ["*"]}, "[2001:db8::1]")
    # a non-boolean allow_ip_literals is ignored (default true)
    assert server_matches_acl({"allow": ["*"], "allow_ip_literals": "no"}, "10.0.0.1")


def test_deny_wins_over_allow() -> None:
    assert not server_matches_acl({"allow": ["*.example"], "deny": ["bad.example"]}, "bad.example")
    assert server_matches_acl({"allow": ["*.example"], "deny": ["bad.example"]}, "good.example")


@pytest.mark.parametrize(
    ("pattern", "server", "matches"),
    [
        ("?.example", "a.example", True),
        ("?.example", "ab.example", False),
        ("*.example", "example", False),
        ("a.b", "axb", False),  # '.' is literal, not a regex wildcard
        ("a[b]c", "a[b]c", True),
        ("*", "anything.at.all", True),
        ("m*x", "matrix", True),
    ],
)
def test_globs(pattern: str, server: str, matches: bool) -> None:
    assert server_matches_acl({"allow": [pattern]}, server) is matches


@pytest.mark.parametrize("bad", [None, "*", {"*": True}, 3])
def test_malformed_lists_are_ignored(bad: Any) -> None:
    assert not server_matches_acl({"allow": bad}, "a.example")
    assert server_matches_acl({"allow": ["*"], "deny": bad}, "a.example")
    assert server_matches_acl({"allow": [3, None, "a.example"]}, "a.example")


def test_strip_port() -> None:
    assert strip_port("a.example:8448") == "a.example"
    assert strip_port("a.example") == "a.example"
    assert strip_port("[::1]:8448") == "[::1]"
    assert strip_port("[::1]") == "[::1]"
    assert strip_port("1.2.3.4:80") == "1.2.3.4"
