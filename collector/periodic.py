"""Background work of a serving process: a function run in a worker thread every N seconds."""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)


def run_every(app: FastAPI, seconds: float, fn: Callable[[], object], what: str,
              at_stop: bool = False) -> None:
    """Run ``fn`` at the app's start and then every ``seconds`` until it stops (several jobs
    nest their lifespans). A failure is logged and the job runs again at its next turn.
    ``at_stop``: once more as the app stops cleanly (what its last turn has not seen yet)."""
    inner = app.router.lifespan_context

    async def loop() -> None:
        while True:
            try:
                await run_in_threadpool(fn)
            except Exception:
                log.exception("event=periodic_failed job=%s", what)
            await asyncio.sleep(seconds)

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> Any:
        task = asyncio.create_task(loop())
        try:
            async with inner(a) as state:
                yield state
        finally:
            task.cancel()
            if at_stop:
                try:
                    await run_in_threadpool(fn)
                except Exception:
                    log.exception("event=periodic_failed job=%s at=stop", what)

    app.router.lifespan_context = lifespan
