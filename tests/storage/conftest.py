from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import reactor

from homeserver.storage.database import Database
from homeserver.storage.engines import create_engine
from homeserver.storage.migrations import prepare_database


@pytest.fixture
def db(database_config: dict[str, Any]) -> Iterator[Database]:
    """A migrated database on each engine."""
    database = Database(create_engine(database_config["name"], database_config["args"]), reactor)
    prepare_database(database, 0)
    yield database
    database.close()
