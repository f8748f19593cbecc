"""Waiting on a condition instead of sleeping a fixed time: tests wait for the event itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.02) -> bool:
    """Poll until condition() is true or timeout seconds pass; the condition's last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


async def wait_until_async(condition: Callable[[], object], timeout: float, what: str) -> None:
    """The same on an asyncio loop; an AssertionError naming ``what`` when it times out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
