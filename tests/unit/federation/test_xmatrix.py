"""X-Matrix: building, parsing (the spec's formats and RFC 9110 leniency), checking signatures."""

from __future__ import annotations

import pytest
import signedjson.sign
from hypothesis import given
from hypothesis import strategies as st

from homeserver.events.signing import SignatureError, generate_signing_key, get_verify_key, verify_json
from homeserver.federation.xmatrix import (
    XMatrixCredentials,
    XMatrixError,
    format_x_matrix,
    is_x_matrix,
    parse_x_matrix,
    request_json,
    request_to_verify,
    sign_request,
)

KEY = generate_signing_key("key1")
VERIFY = get_verify_key(KEY)


def test_sign_request_round_trips_and_verifies() -> None:
    header = sign_request(
        KEY,
        origin="origin.hs.example.com",
        destination="destination.hs.example.com",
        method="POST",
        uri="/_matrix/federation/v1/send/txn1?x=1",
        content={"pdus": [], "edus": []},
    )
    assert header.startswith('X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com"')
    assert ", " not in header  # no whitespace around commas, for old servers
    creds = parse_x_matrix(header)
    assert (creds.origin, creds.destination, creds.key_id) == (
        "origin.hs.example.com",
        "destination.hs.example.com",
        "ed25519:key1",
    )
    origin, signed = request_to_verify(
        [creds],
        method="POST",
        uri="/_matrix/federation/v1/send/txn1?x=1",
        destination="destination.hs.example.com",
        content={"pdus": [], "edus": []},
    )
    assert origin == "origin.hs.example.com"
    verify_json(signed, origin, VERIFY)
    # signedjson (what Synapse uses) agrees.
    signedjson.sign.verify_signed_json(signed, origin, VERIFY)


@pytest.mark.parametrize(
    ("method", "uri", "content"),
    [
        ("PUT", "/_matrix/federation/v1/send/txn1", {"pdus": [], "edus": []}),  # another method
        ("POST", "/_matrix/federation/v1/send/txn2", {"pdus": [], "edus": []}),  # another URI
        ("POST", "/_matrix/federation/v1/send/txn1", {"pdus": [{}], "edus": []}),  # another body
        ("POST", "/_matrix/federation/v1/send/txn1", None),  # the body dropped
    ],
)
def test_signature_covers_method_uri_and_content(method: str, uri: str, content: object) -> None:
    header = sign_request(
        KEY,
        origin="a.example",
        destination="b.example",
        method="POST",
        uri="/_matrix/federation/v1/send/txn1",
        content={"pdus": [], "edus": []},
    )
    _, signed = request_to_verify(
        [parse_x_matrix(header)], method=method, uri=uri, destination="b.example", content=content
    )
    with pytest.raises(SignatureError):
        verify_json(signed, "a.example", VERIFY)


def test_signature_covers_destination() -> None:
    header = sign_request(KEY, origin="a.example", destination="b.example", method="GET", uri="/x")
    # A header without destination (old servers) is checked against our name: a request
    # signed for b.example does not verify at c.example.
    creds = parse_x_matrix(header)
    stripped = XMatrixCredentials(creds.origin, creds.key_id, creds.signature, None)
    _, signed = request_to_verify([stripped], method="GET", uri="/x", destination="c.example", content=None)
    with pytest.raises(SignatureError):
        verify_json(signed, "a.example", VERIFY)


# The spec's examples and the variations RFC 9110 allows.
@pytest.mark.parametrize(
    "header",
    [
        'X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF"',
        "X-Matrix origin=origin.hs.example.com,destination=destination.hs.example.com,key=ed25519:key1,sig=ABCDEF",
        'X-Matrix   origin="origin.hs.example.com" , destination="destination.hs.example.com",\tkey="ed25519:key1" ,sig="ABCDEF"',
        'X-Matrix Origin="origin.hs.example.com",DESTINATION="destination.hs.example.com",Key="ed25519:key1",SIG="ABCDEF"',
        'x-matrix sig="ABCDEF",key="ed25519:key1",destination="destination.hs.example.com",origin="origin.hs.example.com"',
        'X-Matrix origin="origin\\.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABC\\DEF"',
        'X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF",future="x, y"',
        # Synapse's own order: destination last
        'X-Matrix origin="origin.hs.example.com",key="ed25519:key1",sig="ABCDEF",destination="destination.hs.example.com"',
    ],
)
def test_parse_spec_formats(header: str) -> None:
    creds = parse_x_matrix(header.encode())
    assert creds == XMatrixCredentials(
        origin="origin.hs.example.com",
        key_id="ed25519:key1",
        signature="ABCDEF",
        destination="destination.hs.example.com",
    )


def test_parse_without_destination_and_with_port_unquoted() -> None:
    creds = parse_x_matrix("X-Matrix origin=example.com:8448,key=ed25519:a_b,sig=c2ln")
    assert creds == XMatrixCredentials("example.com:8448", "ed25519:a_b", "c2ln", None)
    assert parse_x_matrix('X-Matrix origin="[::1]:8448",key="ed25519:k",sig="s"').origin == "[::1]:8448"


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("Bearer abc", "not an X-Matrix header"),
        ("X-Matrix", "not an X-Matrix header"),
        ('X-Matrixorigin="a"', "not an X-Matrix header"),
        ('X-Matrix key="ed25519:k",sig="s"', "missing 'origin'"),
        ('X-Matrix origin="a.example",sig="s"', "missing 'key'"),
        ('X-Matrix origin="a.example",key="ed25519:k"', "missing 'sig'"),
        ('X-Matrix origin="a.example",key="ed25519:k",sig=""', "missing 'sig'"),
        ('X-Matrix origin="a.example",origin="b.example",key="ed25519:k",sig="s"', "given twice"),
        ('X-Matrix origin="a.example,key="ed25519:k",sig="s"', "expected ','"),
        ('X-Matrix origin="a.example",key="ed25519:k",sig="s', "unterminated"),
        ('X-Matrix origin="a example",key="ed25519:k",sig="s"', "not a valid server name"),
        ('X-Matrix origin="a.example",destination="b/c",key="ed25519:k",sig="s"', "not a valid server name"),
        ('X-Matrix origin="a.example",key="k",sig="s"', "not a key ID"),
        ('X-Matrix origin="a.example",key="ed25519:k",sig', "expected '='"),
        ('X-Matrix origin="a.example",,key="ed25519:k",sig="s"', "parameter name"),
        ('X-Matrix origin=,key="ed25519:k",sig="s"', "empty value"),
    ],
)
def test_parse_errors(header: str, problem: str) -> None:
    with pytest.raises(XMatrixError, match=problem):
        parse_x_matrix(header)


def test_parse_rejects_non_utf8() -> None:
    with pytest.raises(XMatrixError, match="UTF-8"):
        parse_x_matrix(b'X-Matrix origin="\xff",key="ed25519:k",sig="s"')


def test_is_x_matrix() -> None:
    assert is_x_matrix(b"X-Matrix origin=a")
    assert is_x_matrix("x-matrix origin=a")
    assert not is_x_matrix(b"Bearer xyz")
    assert not is_x_matrix(b"X-Matrixy a")


def test_request_to_verify_collects_several_headers_and_checks_them() -> None:
    one = XMatrixCredentials("a.example", "ed25519:1", "s1", "b.example")
    two = XMatrixCredentials("a.example", "ed25519:2", "s2", None)
    origin, signed = request_to_verify([one, two], method="GET", uri="/x", destination="b.example", content=None)
    assert origin == "a.example"
    assert signed == {
        "method": "GET",
        "uri": "/x",
        "origin": "a.example",
        "destination": "b.example",
        "signatures": {"a.example": {"ed25519:1": "s1", "ed25519:2": "s2"}},
    }
    with pytest.raises(XMatrixError, match="several origins"):
        request_to_verify(
            [one, XMatrixCredentials("c.example", "ed25519:1", "s", None)],
            method="GET",
            uri="/x",
            destination="b.example",
            content=None,
        )
    with pytest.raises(XMatrixError, match="not this server"):
        request_to_verify([one], method="GET", uri="/x", destination="other.example", content=None)
    with pytest.raises(XMatrixError):
        request_to_verify([], method="GET", uri="/x", destination="b.example", content=None)


def test_request_json_omits_absent_content_but_keeps_empty_object() -> None:
    assert "content" not in request_json(method="GET", uri="/", origin="a", destination="b")
    assert request_json(method="PUT", uri="/", origin="a", destination="b", content={})["content"] == {}


def test_synapse_parses_our_header_and_we_parse_synapses() -> None:
    from synapse.federation.transport.server._base import _parse_auth_header

    ours = sign_request(KEY, origin="a.example:8448", destination="b.example", method="GET", uri="/x")
    assert _parse_auth_header(ours.encode()) == (
        "a.example:8448",
        "ed25519:key1",
        parse_x_matrix(ours).signature,
        "b.example",
    )
    theirs = 'X-Matrix origin="{}",key="{}",sig="{}",destination="{}"'.format(
        "a.example", "ed25519:k", "c2ln", "b.example"
    )
    assert parse_x_matrix(theirs) == XMatrixCredentials("a.example", "ed25519:k", "c2ln", "b.example")


_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=30)


@given(sig=_value)
def test_format_then_parse_is_identity_for_any_printable_signature(sig: str) -> None:
    creds = XMatrixCredentials("a.example", "ed25519:k", sig, "b.example")
    assert parse_x_matrix(format_x_matrix(creds)) == creds
