"""Pure safety rules: the IP policy, served headers, store keys, Open Graph parsing."""

from __future__ import annotations

import pytest

from homeserver.api.media.responses import content_disposition, served_content_type
from homeserver.config.federation import DEFAULT_IP_RANGE_BLACKLIST
from homeserver.media.preview import parse_html
from homeserver.media.safe_http import IPPolicy
from homeserver.media.storage import LocalDiskBackend, local_content_key, remote_content_key


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "2002:7f00:0001::",  # 6to4 of 127.0.0.1
        "fe80::1%eth0",
        "not an address",
    ],
)
def test_default_policy_blocks_private_addresses(address: str) -> None:
    assert not IPPolicy(DEFAULT_IP_RANGE_BLACKLIST).allows(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_default_policy_allows_public_addresses(address: str) -> None:
    assert IPPolicy(DEFAULT_IP_RANGE_BLACKLIST).allows(address)


def test_whitelist_punches_holes_except_the_unspecified_addresses() -> None:
    policy = IPPolicy(DEFAULT_IP_RANGE_BLACKLIST, ["127.0.0.1", "10.0.0.0/8"])
    assert policy.allows("127.0.0.1") and policy.allows("::ffff:127.0.0.1") and policy.allows("10.2.3.4")
    assert not policy.allows("127.0.0.2") and not policy.allows("::1")
    everything = IPPolicy(DEFAULT_IP_RANGE_BLACKLIST, ["0.0.0.0/0", "::/0"])
    assert everything.allows("127.0.0.2")
    assert not everything.allows("0.0.0.0") and not everything.allows("::")


@pytest.mark.parametrize(
    ("stored", "served", "inline"),
    [
        ("image/png", "image/png", True),
        ("IMAGE/PNG", "IMAGE/PNG", True),
        ("text/plain", "text/plain; charset=UTF-8", True),
        ("text/plain; charset=latin-1", "text/plain; charset=latin-1", True),
        ("application/pdf", "application/pdf", False),
        ("text/html", "application/octet-stream", False),
        ("text/html; charset=utf-8", "application/octet-stream", False),
        ("image/svg+xml", "application/octet-stream", False),
        ("application/javascript", "application/octet-stream", False),
        ("text/xml", "application/octet-stream", False),
        ("multipart/x-mixed-replace; boundary=x", "application/octet-stream", False),
        ("garbage", "application/octet-stream", False),
        ("image/png\r\nSet-Cookie: a=b", "application/octet-stream", False),
    ],
)
def test_served_content_type(stored: str, served: str, inline: bool) -> None:
    assert served_content_type(stored) == (served, inline)


def test_content_disposition_rfc6266() -> None:
    assert content_disposition(True, None) == "inline"
    assert content_disposition(False, "report.pdf") == "attachment; filename=report.pdf"
    assert content_disposition(False, "my report.pdf") == "attachment; filename*=utf-8''my%20report.pdf"
    assert content_disposition(True, "été.png") == "inline; filename*=utf-8''%C3%A9t%C3%A9.png"
    assert content_disposition(False, '../a"b;c') == "attachment; filename*=utf-8''..%2Fa%22b%3Bc"


def test_store_keys_and_traversal(tmp_path: object) -> None:
    backend = LocalDiskBackend(str(tmp_path), run_in_thread=lambda fn, *a: fn(*a))
    assert local_content_key("abcdefghijklmnopqrstuvwx") == "local_content/ab/cd/efghijklmnopqrstuvwx"
    assert backend.path_for(local_content_key("abcdefghij")).startswith(str(tmp_path))
    for bad_id in ("../../etc/passwd", "..", "a/b", "abc", "x" * 300, "abcdé"):
        with pytest.raises(ValueError):
            local_content_key(bad_id)
    for bad_server in ("..", ".", "a/b", ""):
        with pytest.raises(ValueError):
            remote_content_key(bad_server, "abcdefghij")
    for bad_key in ("../x", "/etc/passwd", "a/../../b", "a//b", "a\\b", "a\0b", ""):
        with pytest.raises(ValueError):
            backend.path_for(bad_key)


def test_parse_html_open_graph_and_fallbacks() -> None:
    page = b"""<html><head><meta charset="iso-8859-1"><title> Caf\xe9
      page </title><meta name="description" content="About it">
      <meta property="og:image" content="/i.png"><meta property="og:type" content="website">
      </head><body><script>var x = "<title>no</title>";</script></body></html>"""
    og = parse_html(page, "text/html")
    assert og == {"og:title": "Café page", "og:description": "About it", "og:image": "/i.png", "og:type": "website"}
    og = parse_html(
        b'<meta property="og:title" content="From OG"><title>From title</title>', "text/html; charset=utf-8"
    )
    assert og == {"og:title": "From OG"}
    assert parse_html(b"\xff\xfe<<<not html", None) == {}
    many = b"".join(b'<meta property="og:k%d" content="%s">' % (i, b"v" * 5000) for i in range(200))
    og = parse_html(many, "text/html")
    assert len(og) == 50 and all(len(v) == 1000 for v in og.values())
