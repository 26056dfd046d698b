"""A Matrix homeserver built for government deployments."""

__version__ = "0.1.0"
