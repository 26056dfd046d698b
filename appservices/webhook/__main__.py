"""``homeserver-webhook-bridge -c webhook-bridge.yaml [-g registration.yaml]``."""

from __future__ import annotations

from appservices.common.core import run
from appservices.webhook.bridge import WebhookBridge
from appservices.webhook.config import parse


def main(argv: list[str] | None = None) -> None:
    run("Webhook bridge: applications POST messages into Matrix rooms", argv, parse, WebhookBridge)


if __name__ == "__main__":
    main()
