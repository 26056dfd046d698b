"""``homeserver-xmpp-bridge -c xmpp-bridge.yaml [-g registration.yaml]``."""

from __future__ import annotations

from appservices.common.core import run
from appservices.xmpp.bridge import XmppBridge
from appservices.xmpp.config import parse


def main(argv: list[str] | None = None) -> None:
    run("XMPP bridge: chats, MUC rooms and presence between XMPP and Matrix", argv, parse, XmppBridge)


if __name__ == "__main__":
    main()
