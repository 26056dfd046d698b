"""Webhook bridge: business applications POST messages into rooms (see README.md, "Bridges")."""
