"""At most INGEST_SLOTS heartbeat batches ingested at once in a worker process; later ones wait."""

import asyncio
import time
import weakref
from typing import Any

from starlette.concurrency import run_in_threadpool

from collector.ingest import ingest_lines

# Batches a worker process ingests at once; later ones wait, their bodies read. Parsing is Python
# under the GIL: in one process 2 batches at once cost ~8% more CPU a heartbeat than 1, 3 cost
# ~20% more (threads fighting for the GIL), so a machine's cores are better kept busy by worker
# processes (`serve --workers`, docs/collector.md); 2, not 1, so a lone worker still checks
# signatures on two cores (cryptography releases the GIL in Ed25519 verify).
INGEST_SLOTS = 2
_slots: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = (
    weakref.WeakKeyDictionary()
)


async def ingest_in_slot(engine: Any, lines: list[str]) -> list[dict[str, Any]]:
    """ingest_lines in a thread once one of the loop's INGEST_SLOTS is free. The slot is given
    back when the thread ends, not when the request does: a cancelled request (a server that
    cancels on disconnect, or a shutdown timeout) leaves its batch running, and giving the slot
    back then let a third batch start beside it. A semaphore belongs to one event loop."""
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(INGEST_SLOTS)
    await slots.acquire()
    try:
        job = asyncio.ensure_future(run_in_threadpool(ingest_lines, engine, lines, int(time.time())))
    except BaseException:
        slots.release()
        raise

    def done(task: "asyncio.Future[list[dict[str, Any]]]") -> None:
        slots.release()
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled request's failure is not "never retrieved"

    job.add_done_callback(done)
    return await asyncio.shield(job)
