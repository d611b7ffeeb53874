"""Password hashing with argon2id (argon2-cffi), run in a thread: it is slow on purpose."""

from __future__ import annotations

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["PasswordService"]


class PasswordService:
    def __init__(
        self, *, time_cost: int = 2, memory_cost: int = 19_456, parallelism: int = 1
    ) -> None:
        # OWASP's argon2id minimum: m=19 MiB, t=2, p=1.
        self._ph = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism
        )
        self._limiter = trio.CapacityLimiter(2)
        self._dummy = self._ph.hash("parley-timing-equaliser")

    def hash_sync(self, password: str) -> str:
        return self._ph.hash(password)

    def verify_sync(self, hashed: str | None, password: str) -> bool:
        try:
            return self._ph.verify(hashed or self._dummy, password) and hashed is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self.hash_sync, password, limiter=self._limiter)

    async def verify(self, hashed: str | None, password: str) -> bool:
        """Constant work whether or not the user exists (a dummy hash stands in)."""
        return await trio.to_thread.run_sync(
            self.verify_sync, hashed, password, limiter=self._limiter
        )
