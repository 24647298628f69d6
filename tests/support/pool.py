"""Looking into a SharedPool from a test through its public face only."""

from __future__ import annotations

from gateway.driver import SharedPool


def in_use(pool: SharedPool, key: str) -> bool:
    """Whether some user holds a share of line ``key``: acquiring it then finds theirs, not a new one."""
    fresh = object()
    found = pool.acquire(key, lambda: fresh)
    pool.release(key)
    return found is not fresh
