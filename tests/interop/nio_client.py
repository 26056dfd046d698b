"""matrix-nio, as a real client would use it, plus a record of what went over the wire.

Assertion messages quote the last request and response, so a failure against our
server says exactly what the client sent and what it got back.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from nio import AsyncClient, AsyncClientConfig, ErrorResponse


def _loggable(data: Any) -> Any:
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8", "replace")
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            return data[:500]
    return None if data is None else repr(data)[:500]


class RecordingClient(AsyncClient):  # type: ignore[misc]
    """An AsyncClient that fails fast (no retries) and remembers each exchange."""

    def __init__(self, homeserver: str, user: str = "", **kwargs: Any) -> None:
        config = AsyncClientConfig(
            max_limit_exceeded=0,  # a 429 is a finding, not something to sleep through
            max_timeouts=0,
            request_timeout=20,
            encryption_enabled=False,
            store_sync_tokens=False,
        )
        super().__init__(homeserver, user, config=config, **kwargs)
        self.exchanges: list[dict[str, Any]] = []

    async def send(self, method: str, path: str, data: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.exchanges.append({"request": f"{method} {path}", "request_body": _loggable(data)})
        return await super().send(method, path, data, *args, **kwargs)

    async def parse_body(self, transport_response: Any) -> dict[Any, Any]:
        body: dict[Any, Any] = await super().parse_body(transport_response)
        if self.exchanges:
            # A copy: nio's parsers pop keys out of the body they are given.
            self.exchanges[-1].update(status=transport_response.status, response_body=copy.deepcopy(body))
        return body

    @property
    def last_status(self) -> int | None:
        return self.exchanges[-1].get("status") if self.exchanges else None

    def explain(self, response: Any = None) -> str:
        """The response object and the last exchange, for an assertion message."""
        got = str(response) if isinstance(response, ErrorResponse) else type(response).__name__
        last = json.dumps(self.exchanges[-1], indent=1, default=str) if self.exchanges else "(no request sent)"
        return f"\nclient got: {got}\nlast exchange with {self.homeserver}:\n{last}"
