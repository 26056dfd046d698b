"""Password hashing (bcrypt, off the reactor thread) and the password policy."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import bcrypt

from homeserver.core.errors import Codes, MatrixError

# bcrypt only looks at the first 72 bytes; we truncate explicitly (as bcrypt < 5 did
# implicitly) so hashes carried over from Synapse keep verifying.
_BCRYPT_MAX_BYTES = 72
MAX_PASSWORD_LENGTH = 512


class RunInThread(Protocol):
    def __call__(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...


class PolicySettings(Protocol):
    @property
    def enabled(self) -> bool: ...
    @property
    def minimum_length(self) -> int: ...
    @property
    def require_digit(self) -> bool: ...
    @property
    def require_symbol(self) -> bool: ...
    @property
    def require_lowercase(self) -> bool: ...
    @property
    def require_uppercase(self) -> bool: ...


class PasswordHasher:
    def __init__(self, *, rounds: int, pepper: str, run_in_thread: RunInThread) -> None:
        self._rounds = rounds
        self._pepper = pepper
        self._run_in_thread = run_in_thread

    def _prepare(self, password: str) -> bytes:
        return (password + self._pepper).encode("utf-8")[:_BCRYPT_MAX_BYTES]

    async def hash(self, password: str) -> str:
        def work() -> str:
            return bcrypt.hashpw(self._prepare(password), bcrypt.gensalt(self._rounds)).decode("ascii")

        return str(await self._run_in_thread(work))

    async def verify(self, password: str, stored_hash: str | None) -> bool:
        """Constant-time check; a missing hash never matches (but costs the same time)."""

        def work() -> bool:
            if not stored_hash:
                # Spend comparable time so a timing probe can't tell "no such user".
                bcrypt.hashpw(b"dummy", bcrypt.gensalt(self._rounds))
                return False
            try:
                return bcrypt.checkpw(self._prepare(password), stored_hash.encode("ascii"))
            except ValueError:
                return False

        return bool(await self._run_in_thread(work))


def check_password_policy(password: str, policy: PolicySettings) -> None:
    """Raise M_WEAK_PASSWORD naming the first rule the password breaks."""
    if len(password) > MAX_PASSWORD_LENGTH:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Password is longer than {MAX_PASSWORD_LENGTH} characters")
    if not policy.enabled:
        return
    if len(password) < policy.minimum_length:
        raise MatrixError(
            400, Codes.WEAK_PASSWORD, f"Password must be at least {policy.minimum_length} characters long"
        )
    if policy.require_digit and not re.search(r"\d", password):
        raise MatrixError(400, Codes.WEAK_PASSWORD, "Password must contain at least one digit")
    if policy.require_symbol and not re.search(r"[^\w\s]|_", password):
        raise MatrixError(400, Codes.WEAK_PASSWORD, "Password must contain at least one symbol")
    if policy.require_lowercase and not re.search(r"[a-z]", password):
        raise MatrixError(400, Codes.WEAK_PASSWORD, "Password must contain at least one lowercase letter")
    if policy.require_uppercase and not re.search(r"[A-Z]", password):
        raise MatrixError(400, Codes.WEAK_PASSWORD, "Password must contain at least one uppercase letter")
