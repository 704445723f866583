"""The asyncio loop running in this thread, if any (the legacy buses work from either side)."""

from __future__ import annotations

import asyncio


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread; None outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
