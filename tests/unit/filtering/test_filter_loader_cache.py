"""FilterLoader keeps parsed filters by content: users with the same filter share one
parsed copy, and a bad filter is never cached (it fails the same way every time)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from homeserver.core.errors import MatrixError
from homeserver.services import sync_filter
from homeserver.services.sync_filter import FilterLoader


class StoredFilters:
    def __init__(self, filters: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.filters = filters
        self.reads = 0

    async def get_filter(self, requester_id: str, user_id: str, filter_id: str) -> dict[str, Any]:
        self.reads += 1
        return self.filters[(user_id, filter_id)]


@pytest_twisted.ensureDeferred
async def test_same_content_is_parsed_once_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    content = {"room": {"timeline": {"limit": 5}}, "presence": {"not_types": ["*"]}}
    same_reordered = {"presence": {"not_types": ["*"]}, "room": {"timeline": {"limit": 5}}}
    store = StoredFilters({("@a:x", "0"): content, ("@b:x", "3"): same_reordered, ("@c:x", "1"): {"room": {}}})
    loader = FilterLoader(store)  # type: ignore[arg-type]
    calls = []
    original = sync_filter.parse_filter
    monkeypatch.setattr(sync_filter, "parse_filter", lambda c: calls.append(c) or original(c))

    a = await loader.load("@a:x", "0")
    b = await loader.load("@b:x", "3")
    assert a is b and a.timeline_limit(10) == 5 and len(calls) == 1
    c = await loader.load("@c:x", "1")
    assert c is not a and c.timeline_limit(10) == 10
    inline = '{"room": {"timeline": {"limit": 2}}}'
    assert (await loader.load("@a:x", inline)) is (await loader.load("@z:x", inline))
    assert (await loader.load("@a:x", None)) is (await loader.load("@b:x", ""))
    assert len(calls) == 4
    assert store.reads == 3  # stored filters are still read (and checked) per user


@pytest_twisted.ensureDeferred
async def test_bad_filters_fail_every_time_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = FilterLoader(StoredFilters({}))  # type: ignore[arg-type]
    for raw in ('{"room": {"timeline": {"limit": "ten"}}}', "{not json"):
        for _ in range(2):
            with pytest.raises(MatrixError) as err:
                await loader.load("@a:x", raw)
            assert err.value.code == 400
    monkeypatch.setattr(sync_filter, "_PARSED_FILTERS", 3)
    for limit in range(1, 6):
        await loader.load("@a:x", f'{{"room": {{"timeline": {{"limit": {limit}}}}}}}')
    assert len(loader._parsed) == 3
