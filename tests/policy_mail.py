"""A real SMTP server in-process (aiosmtpd, on its own thread) that keeps what it receives,
for the policy tests: they read the links and codes the homeserver e-mails."""

from __future__ import annotations

import email
import email.policy
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from twisted.internet import reactor, task


@dataclass
class Mailbox:
    host: str
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def config(self) -> dict[str, Any]:
        """The homeserver's ``email`` section for this server (plain SMTP on loopback)."""
        return {
            "smtp_host": self.host,
            "smtp_port": self.port,
            "enable_tls": False,
            "notif_from": "Tchap <noreply@test.local>",
            "app_name": "Tchap",
        }

    async def wait_for(self, to: str, count: int = 1, timeout: float = 10.0) -> EmailMessage:
        """The ``count``-th message to ``to`` (waiting on the reactor, never blocking it)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [m for m in self.messages if to.lower() in str(m["To"]).lower()]
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no mail #{count} for {to}; got {[str(m['To']) for m in self.messages]}")
            await task.deferLater(reactor, 0.05, lambda: None)

    def wait_sync(self, to: str, count: int = 1, timeout: float = 10.0) -> EmailMessage:
        """The same, blocking: for tests whose homeserver runs in another process."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [m for m in self.messages if to.lower() in str(m["To"]).lower()]
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no mail #{count} for {to}")
            time.sleep(0.05)


def body_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def link_in(message: EmailMessage) -> str:
    found = re.search(r"https?://\S+", body_of(message))
    assert found, body_of(message)
    return found.group(0)


def code_in(message: EmailMessage) -> str:
    found = re.search(r"code in your app: (\d{6})", body_of(message))
    assert found, body_of(message)
    return found.group(1)


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self._box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._box.lock:
            self._box.messages.append(message)
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox("127.0.0.1", _free_port())
    controller = Controller(_Handler(box), hostname=box.host, port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


__all__ = ["Mailbox", "body_of", "code_in", "link_in", "mailbox"]
