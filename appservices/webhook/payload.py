"""What an application may POST to /hooks/<id>, parsed into a Matrix message content.

JSON ``{"text": "...", "format": "plain"|"html", "username": "...", "msgtype": "text"|"notice"|"emote"}``
or the same fields as a form (urlencoded or multipart), or a form with a ``payload`` field
holding that JSON (what Slack-style senders do). Errors name the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appservices.common.text import html_to_text

MAX_TEXT = 60_000
MAX_USERNAME = 100
MSGTYPES = {"text": "m.text", "notice": "m.notice", "emote": "m.emote"}


class PayloadError(ValueError):
    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(message)
        self.errcode = errcode


@dataclass(frozen=True)
class WebhookMessage:
    text: str
    html: str | None
    username: str | None
    msgtype: str

    def content(self) -> dict[str, Any]:
        content: dict[str, Any] = {"msgtype": self.msgtype, "body": self.text}
        if self.html is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = self.html
        return content


def parse_json_body(raw: bytes) -> Mapping[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError("M_NOT_JSON", "body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise PayloadError("M_BAD_JSON", "body must be a JSON object")
    return data


def parse_form(form: Mapping[str, Any]) -> Mapping[str, Any]:
    if "payload" in form:
        value = form["payload"]
        if not isinstance(value, str):
            raise PayloadError("M_INVALID_PARAM", "payload: must be a JSON string")
        return parse_json_body(value.encode())
    return {key: value for key, value in form.items() if isinstance(value, str)}


def parse_message(data: Mapping[str, Any]) -> WebhookMessage:
    text = data.get("text")
    if text is None:
        raise PayloadError("M_MISSING_PARAM", "text: missing")
    if not isinstance(text, str) or not text.strip():
        raise PayloadError("M_INVALID_PARAM", "text: must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise PayloadError("M_TOO_LARGE", f"text: at most {MAX_TEXT} characters")
    fmt = data.get("format", "plain")
    if fmt not in ("plain", "html"):
        raise PayloadError("M_INVALID_PARAM", "format: must be 'plain' or 'html'")
    username = data.get("username")
    if username is not None and (not isinstance(username, str) or not 0 < len(username.strip()) <= MAX_USERNAME):
        raise PayloadError("M_INVALID_PARAM", f"username: must be a string of 1 to {MAX_USERNAME} characters")
    msgtype = data.get("msgtype", "text")
    if msgtype not in MSGTYPES:
        raise PayloadError("M_INVALID_PARAM", "msgtype: must be one of " + ", ".join(MSGTYPES))
    if fmt == "html":
        return WebhookMessage(
            text=html_to_text(text) or text,
            html=text,
            username=username and username.strip(),
            msgtype=MSGTYPES[msgtype],
        )
    return WebhookMessage(text=text, html=None, username=username and username.strip(), msgtype=MSGTYPES[msgtype])
