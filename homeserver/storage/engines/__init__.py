"""Database engines: the small dialect differences between SQLite and PostgreSQL.

Everything above this package writes one portable SQL dialect with ``?`` placeholders.
"""

from homeserver.storage.engines.base import DatabaseEngine, IntegrityError, create_engine

__all__ = ["DatabaseEngine", "IntegrityError", "create_engine"]
