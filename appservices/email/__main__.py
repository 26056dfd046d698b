"""``homeserver-email-bridge -c email-bridge.yaml [-g registration.yaml]``."""

from __future__ import annotations

from appservices.common.core import run
from appservices.email.bridge import EmailBridge
from appservices.email.config import parse


def main(argv: list[str] | None = None) -> None:
    run("E-mail bridge: mail into Matrix rooms, and the rooms' messages out as mail", argv, parse, EmailBridge)


if __name__ == "__main__":
    main()
