"""Settling a finished job's asyncio future: its result or its error, once (tick thread -> event loop).

The scheduler's tick thread collects a tick's finished futures and hands them to the event loop
in one ``call_soon_threadsafe(settle_all, batch)``; off the tick thread a future is settled at once
(:func:`settle_one`). A future already done (cancelled: timeout, client gone) is left as it is.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .jobs import JobResult


def settle_one(fut: asyncio.Future, result: JobResult | None, exc: BaseException | None) -> None:
    """Set ``exc`` (if given) or ``result`` on ``fut`` unless it is already done."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def settle_all(batch: list[tuple[asyncio.Future, JobResult | None, BaseException | None]]) -> None:
    """:func:`settle_one` of every ``(future, result, error)`` of a tick, in order."""
    for fut, result, exc in batch:
        settle_one(fut, result, exc)
