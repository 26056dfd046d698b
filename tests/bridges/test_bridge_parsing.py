"""Pure parts of the bridges: webhook payloads, mail parsing and building, names and JIDs."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appservices.common.names import escape_localpart, unescape_localpart
from appservices.email.mail import Attachment, outgoing_mail, parse_mail
from appservices.webhook.payload import PayloadError, parse_form, parse_json_body, parse_message
from appservices.xmpp.addresses import matrix_presence, matrix_user_jid, mxid_of_jid, xmpp_presence


def test_webhook_message_plain_html_and_form() -> None:
    plain = parse_message({"text": "disque plein"})
    assert plain.content() == {"msgtype": "m.text", "body": "disque plein"}
    html = parse_message({"text": "<p><b>alerte</b></p><p>niveau 2</p>", "format": "html", "msgtype": "notice"})
    assert html.content()["body"] == "alerte\nniveau 2" and html.content()["msgtype"] == "m.notice"
    assert html.content()["formatted_body"] == "<p><b>alerte</b></p><p>niveau 2</p>"
    assert parse_message(parse_form({"text": "x", "username": " CI "})).username == "CI"
    assert parse_message(parse_form({"payload": '{"text": "from payload"}'})).text == "from payload"


@pytest.mark.parametrize(
    ("raw", "errcode", "field"),
    [
        (b"{", "M_NOT_JSON", "JSON"),
        (b"[1]", "M_BAD_JSON", "object"),
        (b"{}", "M_MISSING_PARAM", "text"),
        (b'{"text": "  "}', "M_INVALID_PARAM", "text"),
        (b'{"text": "x", "format": "md"}', "M_INVALID_PARAM", "format"),
        (b'{"text": "x", "msgtype": "m.text"}', "M_INVALID_PARAM", "msgtype"),
        (b'{"text": "x", "username": 3}', "M_INVALID_PARAM", "username"),
        (b'{"text": "' + b"x" * 70_000 + b'"}', "M_TOO_LARGE", "text"),
    ],
)
def test_webhook_payload_errors(raw: bytes, errcode: str, field: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_message(parse_json_body(raw))
    assert caught.value.errcode == errcode and field in str(caught.value)


def test_mail_round_trip_with_attachments() -> None:
    outgoing = outgoing_mail(
        room_address="room-ops@salons.test",
        room_label="ops",
        sender_name="Anne",
        recipients=("a@x.test", "b@x.test"),
        text="Bien reçu",
        attachment=Attachment("rapport.txt", "text/plain", "é\n".encode()),
        domain="salons.test",
    )
    assert outgoing["Reply-To"] == "room-ops@salons.test" and outgoing["To"] == "a@x.test, b@x.test"
    parsed = parse_mail(outgoing.as_bytes(), "envelope@x.test")
    assert parsed.sender_address == "room-ops@salons.test" and parsed.sender_name == "Anne (Matrix)"
    assert parsed.subject == "[ops] Anne" and parsed.text == "Bien reçu"
    assert parsed.attachments == [Attachment("rapport.txt", "text/plain", "é\n".encode())]


def test_mail_html_only_and_missing_from() -> None:
    message = EmailMessage()
    message["Subject"] = "Alerte"
    message.set_content("<p>Serveur <b>arrêté</b></p>", subtype="html")
    parsed = parse_mail(message.as_bytes(), "Robot@Supervision.test")
    assert parsed.sender_address == "robot@supervision.test" and parsed.sender_name is None
    assert parsed.text == "Serveur arrêté" and parsed.html is not None
    assert parsed.sender_display == "robot@supervision.test"
    assert email.message_from_bytes(message.as_bytes(), policy=email.policy.default)["Subject"] == "Alerte"


@given(st.text(min_size=1, max_size=40))
def test_localpart_escaping_is_reversible_and_valid(text: str) -> None:
    escaped = escape_localpart(text)
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789._-/=" for c in escaped)
    assert unescape_localpart(escaped) == text


def test_jids_of_matrix_users() -> None:
    jid = matrix_user_jid("@anne:hs.example:8448", "matrix.xmpp.test")
    assert jid == "anne%hs.example=3a8448@matrix.xmpp.test"
    assert mxid_of_jid(jid.split("@")[0]) == "@anne:hs.example:8448"
    assert mxid_of_jid("bridge") is None
    assert matrix_user_jid("@a/b:x", "c") == "a=2fb%x@c" and mxid_of_jid("a=2fb%x") == "@a/b:x"


def test_presence_mapping() -> None:
    assert matrix_presence("", "") == "online" and matrix_presence("", "chat") == "online"
    assert matrix_presence("", "away") == "unavailable" and matrix_presence("", "dnd") == "unavailable"
    assert matrix_presence("unavailable", "") == "offline"
    assert xmpp_presence("online") == (None, None)
    assert xmpp_presence("unavailable") == (None, "away")
    assert xmpp_presence("offline") == ("unavailable", None)
