"""Sync tokens: one position per stream, serialised as ``s<events>_<account_data>_...``."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from homeserver.core.errors import Codes, MatrixError


@dataclass(frozen=True, slots=True)
class StreamToken:
    """Where a client is in each stream.  Compared per component."""

    events: int = 0
    account_data: int = 0
    receipts: int = 0
    typing: int = 0
    to_device: int = 0
    device_lists: int = 0
    presence: int = 0

    def to_string(self) -> str:
        return "s" + "_".join(str(getattr(self, f.name)) for f in fields(self))

    @classmethod
    def parse(cls, token: str, param: str = "since") -> StreamToken:
        """Parse a token; a token from a future version with more streams keeps the known ones."""
        try:
            if not token.startswith("s"):
                raise ValueError
            parts = [int(p) for p in token[1:].split("_")]
            if not parts or any(p < 0 or p > 2**62 for p in parts):  # positions are SQL BIGINTs
                raise ValueError
        except ValueError:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid {param} token: {token!r}") from None
        names = [f.name for f in fields(cls)]
        return cls(**dict(zip(names, parts, strict=False)))

    def max(self, other: StreamToken) -> StreamToken:
        return StreamToken(*(max(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))

    def is_after(self, other: StreamToken) -> bool:
        """True if any stream is further along than in ``other``."""
        return any(getattr(self, f.name) > getattr(other, f.name) for f in fields(self))

    def advance(self, stream: str, position: int) -> StreamToken:
        return replace(self, **{stream: max(getattr(self, stream), position)})
